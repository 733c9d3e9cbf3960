"""One model-agnostic training loop for every Task: one process or DDP, accumulation, AMP, resume, green accounting.

A Task is an ``nn.Module`` whose ``forward(batch: dict)`` returns ``(losses, metrics)``: ``losses``
maps names ending in ``_loss`` to scalar tensors (the total loss is their sum) and ``metrics`` maps
names to floats to log. :func:`train` runs ``cfg.steps`` optimizer steps of ``cfg.grad_accum``
micro-batches each, pulling batches from a :class:`StatefulIterator` (:class:`RepeatingLoader`).

What one step does (and why):

1. ``grad_accum`` forward/backward passes on ``loss / grad_accum``; under DDP the gradient all-reduce
   is skipped (``no_sync``) on all but the last one, so accumulation costs one all-reduce per step.
   With mean-reduced losses, accumulating k batches of B equals one batch of kB.
2. Gradient clipping (``clip_grad``; 1.0 as in the official pre-training) and a **non-finite guard**:
   if the loss or the gradient norm is NaN/inf on any rank, the optimizer step is skipped and counted;
   ``max_bad_steps`` consecutive bad steps raise ``FloatingPointError``. (With fp16 loss scaling an
   inf gradient under a finite loss is the scaler's normal overflow: skipped, not counted as bad.)
3. ``optimizer.step()``, then every sub-module's ``clamp_temperature_()`` (X-VLM clamps the ITC
   temperature to [0.001, 0.5] after each update), then ``scheduler.step()``. Like the official loop
   the scheduler also advances on a skipped step, so the lr of step t never depends on skips.
4. Logging every ``log_every`` steps (rank-averaged), a checkpoint every ``ckpt_every`` steps and at
   the end (rank 0 writes; every rank's RNG state and data position are gathered into it), and
   ``eval_fn(step)`` every ``eval_every`` steps and at the end. Evaluation runs with the RNG state
   saved and restored, so it never changes the training stream: a run with evaluation and one
   resumed from a checkpoint reproduce the uninterrupted losses exactly.

``run_dir=None`` runs in memory (no metrics, no checkpoints) and ``seed=None`` leaves the RNGs as the
caller set them: that is how short fine-tunes (text classification, QA, Theseus, PET) use this loop.

Energy (codecarbon, rank 0, whole machine), parameters and the measured FLOPs of one training step
(``FlopCounterMode`` around the first micro-batch's forward *and* backward) go into the summary.
"""

from __future__ import annotations

import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from grainvl.bench.energy import EnergyReport, EnergyTracker, count_parameters, hardware_tags
from grainvl.config import to_dict
from grainvl.data.iterators import StatefulIterator
from grainvl.errors import DataError
from grainvl.models.layers import set_fast_cpu_dropout
from grainvl.train.checkpoint import (
    capture_rng_state,
    find_checkpoint,
    load_checkpoint,
    remove_stale_temp_dirs,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from grainvl.train.logging import MetricsLogger
from grainvl.utils.distributed import DistEnv, all_reduce_mean, barrier
from grainvl.utils.memory import set_heap_reuse

AMP_MODES = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Loop settings. Steps count optimizer updates; each takes ``grad_accum`` micro-batches."""

    steps: int = 1000
    grad_accum: int = 1
    clip_grad: float = 1.0
    """Max global gradient norm; 0 turns clipping off (the norm is still computed for the guard)."""
    log_every: int = 10
    ckpt_every: int = 0
    """Checkpoint period in steps; 0 = only the final checkpoint (when ``save_final``)."""
    keep_ckpts: int = 3
    seed: int | None = 42
    """A fresh run seeds python/numpy/torch with ``seed + rank``; a resumed run restores the saved states.
    None leaves the RNGs as the caller set them (an in-memory fine-tune seeded before building its head)."""
    amp: str = "none"
    """``none`` | ``bf16`` | ``fp16`` autocast, CUDA only (CPU warns and runs fp32)."""
    eval_every: int = 0
    run_dir: str | None = "runs/train"
    """Where metrics, TensorBoard events and checkpoints go; None writes nothing (short in-memory fine-tunes)."""
    max_bad_steps: int = 10
    find_unused_parameters: bool = True
    """DDP option; True because not every head receives a gradient every step."""
    save_final: bool = True
    track_energy: bool = True
    country_iso_code: str = "FRA"
    count_flops: bool = True
    progress: bool = True
    tensorboard: bool = True
    fast_dropout: bool = False
    """CPU dropout masks from 16-bit lanes of 64-bit random draws (:func:`grainvl.models.layers.dropout`): the
    demo's pre-training step 1.07x faster (bench_pretrain.py). The masks are other draws than torch's
    ``bernoulli_`` (same distribution), so losses under a seed differ from the official code's; off by default."""
    reuse_heap: bool = True
    """Large CPU blocks come from glibc's heap and freed memory is kept for the next step
    (:func:`grainvl.utils.memory.set_heap_reuse`) instead of being mapped and zero-filled again by the kernel
    each time: exact (only where memory comes from changes), faster at the same peak RSS (bench_pretrain.py).
    For the run only; no effect outside glibc."""

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.steps < 1 or self.grad_accum < 1:
            raise ValueError(f"steps and grad_accum must be >= 1, got {self.steps} and {self.grad_accum}")
        if self.max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {self.max_bad_steps}")


@dataclass
class TrainSummary:
    """What a :func:`train` call did. ``steps`` is the last completed step; ``steps_run`` those of this call."""

    steps: int
    steps_run: int
    wall_s: float
    samples: int
    """Samples consumed by all ranks during this call."""
    final_losses: dict[str, float]
    """Rank-averaged losses of the last step (mean over its micro-batches)."""
    skipped_steps: int
    """Optimizer steps skipped for non-finite loss/gradients over the whole run (resumes included)."""
    energy: EnergyReport | None
    params: int
    trainable_params: int
    flops_per_step: float | None = None
    """Measured training FLOPs (forward + backward) of one optimizer step over all ranks."""
    total_flops: float | None = None
    last_checkpoint: str | None = None
    eval_results: dict[str, float] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    """:func:`~grainvl.bench.energy.hardware_tags` of this process (CPU, GPU, torch, precision, commit)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- helpers
def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else []
    for value in values:
        if isinstance(value, (torch.Tensor, dict, list, tuple)):
            return _batch_size(value)
    return 1


def _autocast(amp: str, device: torch.device) -> AbstractContextManager[Any]:
    if amp == "none":
        return nullcontext()
    if device.type != "cuda":
        warnings.warn(f"amp={amp!r} is used on CUDA only; running fp32 on {device}", stacklevel=3)
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    terms = [value for key, value in losses.items() if key.endswith("_loss")]
    if not terms:
        raise ValueError(f"the task returned no loss: keys {sorted(losses)} (loss keys must end in '_loss')")
    return torch.stack([t.float() for t in terms]).sum()


def _clamp_temperatures(model: nn.Module) -> None:
    """Call ``clamp_temperature_()`` on every sub-module that has it (the official post-step clamp)."""
    for module in model.modules():
        hook = getattr(module, "clamp_temperature_", None)
        if callable(hook):
            hook()


def _gather(obj: Any, world_size: int) -> list[Any]:
    """Every rank's ``obj`` in rank order (a collective: call on all ranks)."""
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _broadcast_from_main(obj: Any, world_size: int) -> Any:
    """Rank 0's ``obj`` on every rank (a collective: call on all ranks)."""
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _mean_over_ranks(values: dict[str, float], world_size: int) -> dict[str, float]:
    """Per-key mean over the ranks that report the key (tasks may log a key on some batches only)."""
    gathered = _gather(values, world_size)
    keys = sorted({k for d in gathered for k in d})
    return {k: sum(d[k] for d in gathered if k in d) / sum(k in d for d in gathered) for k in keys}


@contextmanager
def _rng_preserved() -> Iterator[None]:
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch at once: the loop's fresh runs and the in-memory fine-tunes share it."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class _RunState:
    step: int = 0
    skipped: int = 0
    consecutive_bad: int = 0
    samples: int = 0
    window: dict[str, float] = field(default_factory=dict)
    window_counts: dict[str, int] = field(default_factory=dict)  # steps that reported each key
    window_steps: int = 0
    window_samples: int = 0
    window_start: float = 0.0
    last_losses: dict[str, float] = field(default_factory=dict)
    last_lr: float = 0.0
    flops_per_micro: float | None = None
    eval_results: dict[str, float] = field(default_factory=dict)
    last_checkpoint: str | None = None


def train(
    task: nn.Module,
    data: StatefulIterator,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    cfg: TrainConfig,
    env: DistEnv,
    eval_fn: Callable[[int], dict[str, float] | None] | None = None,
    on_step: Callable[[int, dict[str, float], dict[str, float]], None] | None = None,
    resume: str | Path | None = None,
) -> TrainSummary:
    """Train ``task`` for ``cfg.steps`` optimizer steps (see the module docstring); returns a summary.

    ``optimizer``/``scheduler`` must be built on ``task``'s parameters (before this call).
    ``resume`` (a checkpoint folder or a run folder) restores model, optimizer, scheduler, GradScaler,
    every rank's RNG and data position, and the step counter, and continues from there; a run folder
    whose newest checkpoint is damaged resumes from its newest intact one (one line on stderr), and
    ``cfg.run_dir``'s metrics lines after the resumed step are dropped (the interrupted run wrote them).
    ``on_step(step, losses, metrics)`` runs on every rank after each step with this rank's values
    (``losses["loss"]`` is the step's total loss), e.g. to record a loss curve or snapshot parameters.
    With ``cfg.run_dir=None`` nothing is written: no metrics, no checkpoints.
    """
    main = env.rank == 0
    task.to(env.device)
    task.train()
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" and env.device.type == "cuda" else None
    state = _RunState()
    if main and cfg.run_dir is not None:
        remove_stale_temp_dirs(cfg.run_dir)  # temp folders of a save that was killed (e.g. out of memory)
    if resume is not None:
        _resume(resume, task, optimizer, scheduler, data, scaler, env, state)
    elif cfg.seed is not None:
        seed_everything(cfg.seed + env.rank)
    model: nn.Module = task
    if env.world_size > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        model = DistributedDataParallel(task, device_ids=device_ids, find_unused_parameters=cfg.find_unused_parameters)
    start_step = state.step
    logger = MetricsLogger(
        cfg.run_dir or ".",
        enabled=main and cfg.run_dir is not None,
        total_steps=cfg.steps,
        initial_step=start_step,
        rewind_to=start_step if resume is not None else None,
        tensorboard=cfg.tensorboard,
        progress=cfg.progress,
    )
    tracker = EnergyTracker(country_iso_code=cfg.country_iso_code) if cfg.track_energy and main else None
    t0 = state.window_start = time.perf_counter()
    if tracker is not None:
        with _rng_preserved():  # whatever the tracker does, the training RNG stream stays put
            tracker.start()
    previous_dropout = set_fast_cpu_dropout(cfg.fast_dropout)  # for this run only: restored below
    previous_heap = set_heap_reuse(cfg.reuse_heap)  # likewise
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            losses, metrics = _train_step(model, data, optimizer, scaler, cfg, env, state)
            state.last_lr = optimizer.param_groups[0]["lr"]  # the lr this step used
            if scheduler is not None:
                scheduler.step()
            state.step = step
            if on_step is not None:
                on_step(step, losses, metrics)
            logger.advance(step)
            _accumulate_window(state, losses, metrics)
            if step % cfg.log_every == 0 or step == cfg.steps:
                _log_window(logger, state, env)
            if _checkpoint_due(cfg, step):
                _checkpoint(task, optimizer, scheduler, data, scaler, cfg, env, state)
            if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                _evaluate(eval_fn, task, logger, state)
    finally:
        set_fast_cpu_dropout(previous_dropout)
        set_heap_reuse(previous_heap)
        energy = tracker.stop() if tracker is not None else None
        if energy is not None:
            logger.log(state.step, {f"energy/{k}": v for k, v in energy.to_dict().items()})
            logger.write(f"energy: {energy.energy_kWh:.3g} kWh, {energy.co2_g:.3g} g CO2-eq ({energy.method})")
        logger.close()
    final_losses = _mean_over_ranks(state.last_losses, env.world_size)
    barrier()
    steps_run = state.step - start_step
    flops_step = state.flops_per_micro * cfg.grad_accum * env.world_size if state.flops_per_micro else None
    summary = TrainSummary(
        steps=state.step,
        steps_run=steps_run,
        wall_s=time.perf_counter() - t0,
        samples=state.samples * env.world_size,
        final_losses=final_losses,
        skipped_steps=state.skipped,
        energy=energy,
        params=count_parameters(task),
        trainable_params=count_parameters(task, trainable_only=True),
        flops_per_step=flops_step,
        total_flops=flops_step * steps_run if flops_step else None,
        last_checkpoint=state.last_checkpoint,
        eval_results=state.eval_results,
        hardware=hardware_tags(precision=cfg.amp if cfg.amp != "none" and env.device.type == "cuda" else "fp32"),
    )
    return summary


def _train_step(
    model: nn.Module,
    data: StatefulIterator,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    cfg: TrainConfig,
    env: DistEnv,
    state: _RunState,
) -> tuple[dict[str, float], dict[str, float]]:
    """One optimizer step over ``grad_accum`` micro-batches; returns this rank's mean losses and metrics."""
    optimizer.zero_grad(set_to_none=True)
    loss_sums: dict[str, torch.Tensor] = {}
    metric_sums: dict[str, float] = {}
    for micro in range(cfg.grad_accum):
        batch = _to_device(next(data), env.device)
        state.samples += _batch_size(batch)
        last = micro == cfg.grad_accum - 1
        sync = nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()
        counter = FlopCounterMode(display=False) if cfg.count_flops and state.flops_per_micro is None else None
        with sync, counter if counter is not None else nullcontext():
            with _autocast(cfg.amp, env.device):
                losses, metrics = model(batch)
            total = _total_loss(losses)
            scaled = total / cfg.grad_accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if counter is not None:
            state.flops_per_micro = float(counter.get_total_flops())
        for key, value in {"loss": total, **losses}.items():
            loss_sums[key] = loss_sums.get(key, 0.0) + value.detach().float() / cfg.grad_accum
        for key, value in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + float(value) / cfg.grad_accum
    _optimizer_step(model, optimizer, scaler, cfg, env, state, loss_sums["loss"])
    keys = list(loss_sums)
    values = torch.stack([loss_sums[k] for k in keys]).tolist()  # one device sync for all losses
    state.last_losses = dict(zip(keys, values))
    return state.last_losses, metric_sums


def _optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    cfg: TrainConfig,
    env: DistEnv,
    state: _RunState,
    loss: torch.Tensor,
) -> None:
    """Clip, check finiteness on every rank, then step (or skip and count), then clamp temperatures."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if cfg.clip_grad > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # Gradients are already all-reduced (identical on every rank); the loss is local, so share its flag.
    flags = torch.stack([(~torch.isfinite(t)).float().to(env.device) for t in (loss, grad_norm)])
    if env.world_size > 1:
        flags = all_reduce_mean(flags)
    loss_bad, grad_bad = (bool(f > 0) for f in flags.tolist())
    if loss_bad or grad_bad:
        state.skipped += 1
        # Under fp16 loss scaling an inf gradient with a finite loss is a normal overflow.
        state.consecutive_bad += 1 if loss_bad or scaler is None else 0
        optimizer.zero_grad(set_to_none=True)
        if state.consecutive_bad >= cfg.max_bad_steps:
            raise FloatingPointError(
                f"{state.consecutive_bad} consecutive steps with a non-finite loss or gradient "
                f"(last at step {state.step + 1}); lower the lr or check the data"
            )
    else:
        state.consecutive_bad = 0
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
        _clamp_temperatures(unwrap_model(model))
    if scaler is not None:
        scaler.update()


def _checkpoint_due(cfg: TrainConfig, step: int) -> bool:
    return bool(cfg.ckpt_every and step % cfg.ckpt_every == 0) or (cfg.save_final and step == cfg.steps)


def _accumulate_window(state: _RunState, losses: dict[str, float], metrics: dict[str, float]) -> None:
    for key, value in {**losses, **metrics}.items():
        state.window[key] = state.window.get(key, 0.0) + value
        state.window_counts[key] = state.window_counts.get(key, 0) + 1
    state.window_steps += 1


def _log_window(logger: MetricsLogger, state: _RunState, env: DistEnv) -> None:
    """Log the window's mean losses/metrics (averaged over ranks), lr and throughput; reset the window."""
    # Per key: a task whose batches alternate in kind (CCLM) reports each loss on some steps only.
    means = {k: v / state.window_counts[k] for k, v in state.window.items()}
    means = _mean_over_ranks(means, env.world_size)
    now = time.perf_counter()
    elapsed = max(now - state.window_start, 1e-9)
    window_samples = (state.samples - state.window_samples) * env.world_size
    record = {
        **means,
        "lr": state.last_lr,
        "samples_per_s": window_samples / elapsed,
        "step_time_s": elapsed / state.window_steps,
        "skipped_steps": state.skipped,
    }
    logger.log(state.step, record)
    state.window, state.window_counts, state.window_steps = {}, {}, 0
    state.window_samples, state.window_start = state.samples, now


def _checkpoint(
    task: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    data: StatefulIterator,
    scaler: torch.amp.GradScaler | None,
    cfg: TrainConfig,
    env: DistEnv,
    state: _RunState,
) -> None:
    """Gather every rank's RNG and data position; rank 0 writes the checkpoint; all ranks wait for it."""
    if cfg.run_dir is None:
        return  # an in-memory run: nowhere to write
    rng_states = _gather(capture_rng_state(), env.world_size)
    data_states = _gather(data.state_dict(), env.world_size)
    if env.rank == 0:
        extra = {
            "data": data_states,
            "skipped_steps": state.skipped,
            "world_size": env.world_size,
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "train_config": to_dict(cfg),
        }
        folder = save_checkpoint(
            cfg.run_dir, state.step, task, optimizer, scheduler, extra, rng_states=rng_states, keep=cfg.keep_ckpts
        )
        state.last_checkpoint = str(folder)
    barrier()


def _resume(
    resume: str | Path,
    task: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    data: StatefulIterator,
    scaler: torch.amp.GradScaler | None,
    env: DistEnv,
    state: _RunState,
) -> None:
    folder = _choose_checkpoint(resume, env)
    extra = load_checkpoint(folder, task, optimizer, scheduler, rank=env.rank, verify=False)
    saved_world = extra.get("world_size", 1)
    if saved_world != env.world_size:
        raise ValueError(
            f"{extra['checkpoint']}: written by {saved_world} process(es), resuming with {env.world_size}; "
            "the data position and RNG streams are per rank, so resume with the same number of processes"
        )
    data.load_state_dict(extra["data"][env.rank])
    if scaler is not None and extra.get("grad_scaler"):
        scaler.load_state_dict(extra["grad_scaler"])
    state.step = int(extra["step"])
    state.skipped = int(extra.get("skipped_steps", 0))
    state.last_checkpoint = extra["checkpoint"]


def _choose_checkpoint(resume: str | Path, env: DistEnv) -> Path:
    """Rank 0 verifies and picks the checkpoint (announcing a fallback); every rank gets the same folder or error.

    Rank 0 alone, then a broadcast: hashing a multi-GB checkpoint on every rank multiplies the reads,
    and ranks verifying on their own could disagree (a file changing under them, a lagging network file
    system), then resume different weights without noticing. An error is re-raised on every rank, so
    no rank waits for a broadcast that never comes.
    """
    outcome = ("", "", "")  # (kind, folder or error path/message, DataError reason)
    failure: Exception | None = None
    if env.rank == 0:
        try:
            choice = find_checkpoint(resume)
        except DataError as error:
            failure, outcome = error, ("data_error", error.path, error.reason)
        except FileNotFoundError as error:
            failure, outcome = error, ("not_found", str(error), "")
        else:
            notice = choice.notice()
            if notice is not None:
                print(notice, file=sys.stderr, flush=True)
            outcome = ("folder", str(choice.folder), "")
    kind, where, reason = _broadcast_from_main(outcome, env.world_size)
    if failure is not None:
        raise failure
    if kind == "data_error":
        raise DataError(where, None, reason)
    if kind == "not_found":
        raise FileNotFoundError(where)
    return Path(where)


def _evaluate(
    eval_fn: Callable[[int], dict[str, float] | None], task: nn.Module, logger: MetricsLogger, state: _RunState
) -> None:
    """Run ``eval_fn(step)`` in eval mode without touching the training RNG stream; log its results."""
    modes = {module: module.training for module in task.modules()}
    with _rng_preserved():
        task.eval()
        try:
            results = eval_fn(state.step) or {}
        finally:
            for module, training in modes.items():  # not task.train(): a frozen teacher stays in eval mode
                module.training = training
    state.eval_results = {k: float(v) for k, v in results.items()}
    if state.eval_results:
        logger.log(state.step, {f"eval/{k}": v for k, v in state.eval_results.items()})

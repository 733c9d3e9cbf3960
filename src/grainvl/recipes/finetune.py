"""Fine-tune and evaluate any registered downstream task; reload a fine-tuned run exactly.

``finetune(cfg)`` builds the task module around a model (a registered name, a
``save_pretrained`` folder, a pre-training run folder or another fine-tuned run), trains it with
:func:`grainvl.train.loop.train` (one process or torchrun DDP; checkpoints, resume, FLOPs), saves
``out/model`` + ``out/head.safetensors`` + ``out/task.json``, evaluates the ID (``test``) and OOD
(``test_ood``) splits, and appends one ``results.jsonl`` line per metric in the long schema with the
run's cost: parameters, inference GFLOPs per sample, and the energy/CO₂ of the whole run (training
*and* evaluation, one tracker around both). ``summary.json`` has the rest (wall time, training FLOPs).

Fine-tuning follows the official recipe (xvlm.md §4.1): AdamW (0.9, 0.98), weight decay 0.01 except
biases/norms, ``lr_mult`` = 2 for parameters the checkpoint did not provide, linear warm-up then
linear decay, and no gradient clipping (``train.clip_grad = 0``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grainvl.bench.energy import EnergyTracker, count_parameters, flops_per_sample
from grainvl.compress.quantize import quantize_dynamic_int8, read_quantize_flag, write_quantize_flag
from grainvl.models.factory import default_label, get_tokenizer, load_model, resolve_model
from grainvl.recipes.scaffold import Run, cost_columns, metric_rows, run_recipe
from grainvl.tasks.base import TASK_FILE, DataOptions, DownstreamTask, TaskModule, resolve_split, split_tag
from grainvl.tasks.registry import get_task
from grainvl.train.loop import TrainConfig, train
from grainvl.train.optim import OptimConfig, SchedConfig, build_optimizer, build_scheduler
from grainvl.utils.fileio import atomic_write_text

MODEL_DIR = "model"


@dataclass
class FinetuneConfig:
    """One fine-tuning run. YAML files in ``configs/finetune/`` are serialised instances."""

    task: str = "retrieval"
    model: str = "xvlm-tiny"
    """Registered architecture, a ``save_pretrained`` folder, or a run folder holding ``model/``."""
    world: str = "runs/world"
    label: str = ""
    """Model name in results.jsonl; empty: the model argument (folder name for folders)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Task options (e.g. retrieval ``k_test``, ``score``); see each task's ``default_options``."""
    data: DataOptions = field(default_factory=DataOptions)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-5))
    sched: SchedConfig = field(default_factory=lambda: SchedConfig(kind="linear", warmup_steps=0.1))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100, clip_grad=0.0, log_every=10))
    eval_splits: tuple[str, ...] = ("test", "test_ood")
    torch_threads: int = 0
    grad_checkpointing: bool = False


# ---------------------------------------------------------------------------------------------- model loading
def _optimizer(module: TaskModule, cfg: OptimConfig, pretrained: bool) -> torch.optim.Optimizer:
    """X²-VLM groups; ``lr_mult`` for the task head and, on an un-pretrained model, its new parts too."""

    heads = sorted({name.split(".")[0] + "." for name, _ in module.named_parameters() if not name.startswith("model.")})
    fresh = [] if pretrained else [f"model.{p}" for p in module.model.newly_initialised()]
    overrides = {k if k.startswith("model.") else f"model.{k}": v for k, v in cfg.lr_overrides.items()}
    return build_optimizer(module, dataclasses.replace(cfg, lr_mult_params=heads + fresh, lr_overrides=overrides))


def model_label(cfg: FinetuneConfig) -> str:
    if cfg.label:
        return cfg.label
    return default_label(cfg.model)


# ---------------------------------------------------------------------------------------------- run
def finetune(cfg: FinetuneConfig, resume: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.task``, save, evaluate ``cfg.eval_splits``; returns the summary.

    The summary comes from rank 0 (``{}`` on other ranks). ``resume``: a run or checkpoint folder to continue.
    """
    return run_recipe(cfg.train.run_dir, lambda run: _run(cfg, run, resume), cfg.torch_threads)


def _run(cfg: FinetuneConfig, run: Run, resume: str | Path | None) -> dict[str, Any]:
    env, world, run_dir = run.env, Path(cfg.world), run.dir
    if not world.is_dir():
        raise FileNotFoundError(f"world folder not found: {world} (make one with `grainvl world --out {world}`)")
    splits = [resolve_split(s) for s in cfg.eval_splits]
    task = get_task(cfg.task, **cfg.options).with_data(cfg.data)
    torch.manual_seed(cfg.train.seed)  # identical head initialisation on every rank
    source = resolve_model(cfg.model)
    model, tokenizer, pretrained = load_model(source), get_tokenizer(source), source.pretrained
    # int8 models fine-tune in fp32, then re-quantise (post-training); read_quantize_flag validates the flag.
    quantize_spec = read_quantize_flag(source.folder) if source.quantize is not None and source.folder else None
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    module = task.build(model, world, tokenizer)
    stream = task.train_stream(module, tokenizer, world, cfg.data, env.rank, env.world_size)
    optimizer = _optimizer(module, cfg.optim, pretrained)
    scheduler = build_scheduler(optimizer, dataclasses.replace(cfg.sched, total_steps=cfg.train.steps))
    run.write_config(cfg)
    tracker = EnergyTracker(country_iso_code=cfg.train.country_iso_code) if cfg.train.track_energy else None
    tracker = tracker if env.rank == 0 else None
    if tracker is not None:
        tracker.start()
    t0 = time.perf_counter()
    evaluations: dict[str, dict[str, float]] = {}
    eval_s: dict[str, float] = {}
    try:
        # The run's tracker spans training and evaluation, so the loop's own tracker stays off.
        loop_cfg = dataclasses.replace(cfg.train, track_energy=False)
        summary = train(module, stream, optimizer, scheduler, loop_cfg, env, resume=resume)
        train_s = time.perf_counter() - t0
        if env.rank == 0:
            save_finetuned(task, module, tokenizer, run_dir, world, quantize_spec)
        if quantize_spec is not None:  # evaluate what was saved: the int8 model (CPU)
            module = quantize_dynamic_int8(module, skip=tuple(quantize_spec.get("skip", ())))
        for split in splits:
            start = time.perf_counter()
            evaluations[split] = task.evaluate(module, tokenizer, world, split, out_dir=run_dir / "predictions")
            eval_s[split] = time.perf_counter() - start
    finally:
        energy = tracker.stop() if tracker is not None else None
    if env.rank != 0:
        return {}
    cost = _run_cost(task, module, tokenizer, world, summary, energy, time.perf_counter() - t0, train_s, eval_s)
    hardware, gflops = summary.hardware, cost["gflops_per_sample"]
    costs = cost_columns(params=cost["params"], seed=cfg.train.seed, hardware=hardware, gflops=gflops, energy=energy)
    dataset = "world" if (world / "manifest.json").exists() else str(cfg.world)
    for split, metrics in evaluations.items():
        run.append(
            metric_rows(
                metrics, model=model_label(cfg), task=task.name, dataset=dataset, split=split_tag(split), costs=costs
            )
        )
    report = {"task": task.name, "model": model_label(cfg), "evaluations": evaluations, "cost": cost,
              "train": summary.to_dict(), "run_dir": str(run_dir)}  # fmt: skip
    run.write_summary(report)
    return report


def _run_cost(
    task: DownstreamTask,
    module: TaskModule,
    tokenizer: Any,
    world: Path,
    summary: Any,
    energy: Any,
    wall_s: float,
    train_s: float,
    eval_s: dict[str, float],
) -> dict[str, Any]:
    """Parameters, inference GFLOPs per sample (one measured batch of 2), wall, training FLOPs, energy."""

    call = task.latency_call(module, tokenizer, world, batch_size=2)
    return {
        "params": count_parameters(module),
        "gflops_per_sample": flops_per_sample(call, batch_size=2) / 1e9,
        "train_tflops": (summary.total_flops or 0.0) / 1e12,
        "steps": summary.steps_run,
        "train_samples": summary.samples,
        "wall_s": wall_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "energy_kWh": energy.energy_kWh if energy else None,
        "co2_g": energy.co2_g if energy else None,
        "energy_method": energy.method if energy else "not tracked",
    }


# ---------------------------------------------------------------------------------------------- save / load
def save_finetuned(
    task: DownstreamTask,
    module: TaskModule,
    tokenizer: Any,
    run_dir: Path,
    world: Path,
    quantize_spec: dict[str, Any] | None = None,
) -> None:
    """``run_dir/model`` (XVLM + tokenizer), ``run_dir/head.safetensors`` and ``run_dir/task.json``; with
    ``quantize_spec`` (the source's ``quantize.json``) the run's model folder is flagged int8 too."""
    module.model.save_pretrained(run_dir / MODEL_DIR, tokenizer=tokenizer)
    if quantize_spec is not None:  # fine-tuned in fp32 from a quantised source: the run stays int8 at load
        write_quantize_flag(run_dir / MODEL_DIR, skip=tuple(quantize_spec.get("skip", ())))
    task.save_head(module, run_dir)
    meta = json.loads((run_dir / TASK_FILE).read_text(encoding="utf-8"))
    meta["world"] = str(world)  # heads sized from the world's files (answer lists) rebuild from it
    atomic_write_text(run_dir / TASK_FILE, json.dumps(meta, indent=2))


def load_finetuned(run_dir: str | Path, world: str | Path | None = None) -> tuple[DownstreamTask, nn.Module, Any]:
    """``(task, module, tokenizer)`` of a fine-tuned run folder, weights restored exactly, in eval mode."""

    run_dir = Path(run_dir)
    meta_path = run_dir / TASK_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {TASK_FILE} (not a fine-tuned run; see `grainvl finetune --help`)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    task = get_task(meta["task"], **meta.get("options", {})).with_data(DataOptions(**meta.get("data", {})))

    source = resolve_model(run_dir / MODEL_DIR)
    model, tokenizer = load_model(source), get_tokenizer(source)
    module = task.build(model, Path(world if world is not None else meta.get("world", ".")), tokenizer)
    task.load_head(module, run_dir)
    module.eval()
    spec = read_quantize_flag(run_dir / MODEL_DIR)
    if spec is not None:  # post-training dynamic int8 of the whole fine-tuned module (backbone + head), CPU
        module = quantize_dynamic_int8(module, skip=tuple(spec.get("skip", ())))
    return task, module, tokenizer


@dataclass
class EvalConfig:
    """``grainvl eval``: a fine-tuned run evaluated on one split of a world."""

    task: str
    """The task the run was fine-tuned on (checked against ``RUN/task.json``)."""
    model: str
    """The fine-tuned run folder (``RUN`` of ``grainvl finetune``)."""
    world: str
    split: str = "id"
    """``id`` (test), ``ood`` (test_ood) or a split name such as ``val``."""
    out: str | None = None
    """Folder for the predictions and ``metrics.json``; None: print the metrics only."""


def evaluate_run(run_dir: str | Path, world: str | Path, split: str, out_dir: Path | None = None) -> dict[str, float]:
    """Metrics of a fine-tuned run on a world split (``id``/``ood`` or a split name)."""
    task, module, tokenizer = load_finetuned(run_dir, world)
    return task.evaluate(module, tokenizer, Path(world), resolve_split(split), out_dir=out_dir)


# ---------------------------------------------------------------------------------------------- report
def format_report(report: dict[str, Any]) -> str:
    """End-of-run table: every metric per split, then the run's cost."""
    lines = [f"{report['task']} fine-tuned from {report['model']}:"]
    for split, metrics in report["evaluations"].items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        lines.append(f"  {split_tag(split):>4} ({split}): {shown}")
    c = report["cost"]
    energy = "not tracked" if c["energy_kWh"] is None else f"{c['energy_kWh']:.3g} kWh, {c['co2_g']:.3g} g CO2-eq"
    lines.append(
        f"run: {c['steps']} steps, {c['train_samples']} samples, wall {c['wall_s']:.1f} s "
        f"(train {c['train_s']:.1f} s, eval {sum(c['eval_s'].values()):.1f} s), {c['params'] / 1e6:.2f}M params, "
        f"{c['gflops_per_sample']:.3g} GFLOPs/sample inference, {c['train_tflops']:.3g} TFLOPs training, "
        f"energy {energy} ({c['energy_method']})"
    )
    lines.append(f"saved to {report['run_dir']} (model/, head.safetensors, task.json, results.jsonl)")
    return "\n".join(lines)

"""One environment-detection path for ``python``, ``torchrun`` and SLURM, and gathers that keep gradients.

Launchers
---------
:func:`detect_env` reads, in this order:

* **torchrun** (or any ``env://`` launcher): ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
* **SLURM** (``srun python -m grainvl ...``, one task per GPU/CPU worker): ``SLURM_PROCID``,
  ``SLURM_NTASKS`` and ``SLURM_LOCALID``. The rendezvous address is ``MASTER_ADDR``/``MASTER_PORT`` when
  set, otherwise the first host of the step's node list and a port derived from the job id, so that
  every task computes the same pair without talking to the others. Inside an ``sbatch`` script launch
  the workers with ``srun`` (or ``torchrun``): a bare ``python`` there still sees the job's
  ``SLURM_NTASKS`` and would wait for tasks that never start;
* otherwise a **single process**.

:func:`init_distributed` creates a process group only when ``world_size > 1`` (gloo on CPU, NCCL on
CUDA). A single process never creates one, and every helper here (:func:`get_rank`, :func:`barrier`,
:func:`all_gather_with_grad`, ...) works without a group, so the same training code runs everywhere.

Gathering with gradient (why the backward sums over ranks)
-----------------------------------------------------------
Global contrastive losses (ITC) let each rank compute the *same* loss ``L(z)`` over the features of
the whole global batch ``z = [z_0; ...; z_{W-1}]`` (``z_r`` computed on rank ``r``). The gradient we
want is that of the single-process loss on the concatenated batch::

    dL/dθ = Σ_r (∂L/∂z_r)(∂z_r/∂θ)

Rank ``r`` can only back-propagate through its own ``z_r``, and DDP then *averages* parameter
gradients over the ``W`` ranks. If the gather's backward returns only the local slice
``∂L/∂z_r`` (the official X-VLM/X²-VLM ``AllGather``), DDP yields ``(1/W) Σ_r (∂L/∂z_r)(∂z_r/∂θ)``,
i.e. the encoders' ITC gradient is **W times too small** (the temperature's gradient, which every
rank computes in full, is right). :func:`all_gather_with_grad` instead all-reduces (sums) the
incoming gradient over ranks before slicing, giving rank ``r`` the value ``W · ∂L/∂z_r``; after
DDP's average the result is exactly ``dL/dθ``. The same rule is right whenever rank ``r`` computes
its own loss ``L_r`` from gathered features: the sum gives ``∂(Σ_r L_r)/∂z_r`` and DDP's average
gives the gradient of ``mean_r L_r``. ``tests/test_distributed.py`` checks both factors with two
gloo processes. This is a deliberate deviation from the official code, which therefore trained
its encoders with an ITC weight of effectively ``1/W`` relative to the other losses.

Unequal per-rank batch sizes (for example the last batch of an epoch) are supported: sizes are
exchanged first, every rank pads to the largest, and the padding is dropped after the gather.

Means over items whose number differs per rank
----------------------------------------------
A loss that is a mean over a *varying* number of items (MLM over masked tokens, TACO over anchors,
box losses over region boxes) is, per rank, ``m_r = s_r / n_r``. DDP's average of gradients then
gives the gradient of ``(1/W) Σ_r s_r / n_r``, not of the single-process mean ``Σ_r s_r / N`` over
the global batch (``N = Σ_r n_r``): ranks with few items weigh too much. :func:`to_global_mean`
all-reduces the count (no gradient flows through it) and returns ``m_r · n_r · W / N``, whose
rank average is exactly ``Σ_r s_r / N``; so DDP's averaged gradient, and the rank-averaged value the
training loop logs, are those of the global mean. With one process it returns ``m_r`` itself.

Workers die with their launcher
-------------------------------
torchrun starts its workers in their own sessions, so ``kill -9`` on the launcher used to leave them
running (holding GPUs, or waiting in a collective). Under torchrun, :func:`init_distributed` calls
:func:`exit_with_parent`: on Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, elsewhere a watchdog thread
that polls the parent's pid every second.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

DEFAULT_PORT = 29500
_CPU = torch.device("cpu")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The parent at import: the launcher, unless it died even before this (then nothing can tell).
_PARENT_AT_IMPORT = os.getppid()
_parent_watch_armed = False


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    ``device`` is ``cuda:<local_rank>`` when CUDA is used, else ``cpu``; ``backend`` is ``nccl`` or
    ``gloo`` accordingly. ``master_addr``/``master_port`` are only filled when they had to be derived
    (SLURM without ``MASTER_ADDR``) or were given; ``launcher`` is ``"torchrun"``, ``"slurm"`` or
    ``"none"``.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = "gloo"
    device: torch.device = _CPU
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "none"

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


# ---------------------------------------------------------------------------------------------
# Detection


def detect_env(environ: Mapping[str, str] | None = None, use_cuda: bool | None = None) -> DistEnv:
    """Rank, local rank and world size from torchrun or SLURM variables, else a single process.

    ``environ`` defaults to ``os.environ``; ``use_cuda`` defaults to ``torch.cuda.is_available()``.
    Raises ValueError naming the variable when a value is not an integer or is out of range, and when
    a multi-task SLURM step gives no way to find the rendezvous host.
    """
    env = os.environ if environ is None else environ
    cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    master_port = _int_var(env, "MASTER_PORT") if port is not None else None
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun"
        rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
        local_rank = _int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        launcher = "slurm"
        rank, world = _int_var(env, "SLURM_PROCID"), _int_var(env, "SLURM_NTASKS")
        local_rank = _int_var(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        if world > 1 and addr is None:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if not nodelist:
                raise ValueError("SLURM job with several tasks but neither MASTER_ADDR nor SLURM_NODELIST is set")
            addr = first_slurm_host(nodelist)
        if world > 1 and master_port is None:
            # Same on every task of the job, and different jobs on one node rarely collide.
            job_id = env.get("SLURM_JOB_ID", "")
            master_port = 15000 + int(job_id) % 20000 if job_id.isdigit() else DEFAULT_PORT
    else:
        return DistEnv(device=torch.device("cuda", 0) if cuda else torch.device("cpu"), backend=_backend(cuda))
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world} ({launcher})")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside [0, {world}) ({launcher})")
    if local_rank < 0:
        raise ValueError(f"local rank must be >= 0, got {local_rank} ({launcher})")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistEnv(rank, local_rank, world, _backend(cuda), device, addr, master_port, launcher)


def _backend(cuda: bool) -> str:
    return "nccl" if cuda else "gloo"


def _int_var(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[003-005,9],cpu1"`` → ``"gpu003"``.

    Handles the compressed ``prefix[ranges]suffix`` form, keeping zero padding; several bracket
    groups (``"r[1-2]n[3-4]"``) take the first value of each.
    """
    first = _split_top_level(nodelist.strip())[0]
    if not first:
        raise ValueError(f"cannot read a host from SLURM node list {nodelist!r}")
    # Each bracket group contributes the first value of its first range ("003-005" → "003").
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], first)


def _split_top_level(nodelist: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, current = [], 0, []
    for ch in nodelist:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


# ---------------------------------------------------------------------------------------------
# Process group


def init_distributed(env: DistEnv | None = None, timeout: timedelta = timedelta(minutes=30)) -> DistEnv:
    """Create the process group for a multi-process job; do nothing else for one process.

    torchrun's rendezvous store is reused through ``env://`` whenever ``MASTER_ADDR``/``MASTER_PORT``
    are in the environment; SLURM jobs without them use ``tcp://`` to the derived host and port.
    Returns the (possibly detected) environment.
    """
    env = detect_env() if env is None else env
    if env.launcher == "torchrun" and started_by_torchelastic():
        exit_with_parent()
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if not env.is_distributed:
        return env  # one process: no process group, ever
    if _group_active():
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise RuntimeError(
                f"a process group already exists with rank {dist.get_rank()}/{dist.get_world_size()}, "
                f"expected {env.rank}/{env.world_size}"
            )
        return env
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        init_method = "env://"
    elif env.master_addr is not None and env.master_port is not None:
        init_method = f"tcp://{env.master_addr}:{env.master_port}"
    else:
        raise ValueError("multi-process job without MASTER_ADDR/MASTER_PORT and no address to derive them from")
    dist.init_process_group(
        env.backend, init_method=init_method, rank=env.rank, world_size=env.world_size, timeout=timeout
    )
    return env


def started_by_torchelastic(environ: Mapping[str, str] | None = None) -> bool:
    """True in a worker that torchrun's elastic agent started (its parent is then the launcher)."""
    return "TORCHELASTIC_RUN_ID" in (os.environ if environ is None else environ)


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Arrange for this process to get SIGTERM when its parent (the torchrun launcher) dies.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` through libc; elsewhere, or if that call fails, a
    daemon thread that polls ``os.getppid()`` every ``poll_s`` seconds. A parent that died before the
    signal was armed is caught by comparing ``os.getppid()`` with the parent recorded at import (an
    orphan has been re-parented to init or a subreaper). Idempotent.
    """
    global _parent_watch_armed
    if _parent_watch_armed:
        return
    _parent_watch_armed = True
    parent = _PARENT_AT_IMPORT
    if not (sys.platform.startswith("linux") and _set_parent_death_signal(signal.SIGTERM)):
        threading.Thread(target=_watch_parent, args=(parent, poll_s), name="grainvl-parent-watch", daemon=True).start()
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher is already gone: nothing else would signal us


def _set_parent_death_signal(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)``; False when libc or the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the symbols already loaded: libc's among them
        return libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), ctypes.c_ulong(0), ctypes.c_ulong(0), 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGTERM)


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if _group_active() else 0


def get_world_size() -> int:
    """Number of processes; 1 without a process group."""
    return dist.get_world_size() if _group_active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that logs and writes checkpoints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if not _group_active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group if one exists."""
    if _group_active():
        dist.destroy_process_group()


def run_in_process_group(body: Callable[[DistEnv], T], torch_threads: int = 0) -> T:
    """Set the thread count (> 0), join the process group torchrun/SLURM describe (none for one
    process), run ``body(env)`` and always tear the group down: the entry of every training command."""
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    env = init_distributed(detect_env())
    try:
        return body(env)
    finally:
        cleanup()


# ---------------------------------------------------------------------------------------------
# Collectives


def _gather_sizes(batch: int, device: torch.device) -> list[int]:
    """Every rank's leading dimension, in rank order."""
    local = torch.tensor([batch], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All-gather ``x`` (B_r, ...) from every rank into (Σ B_r, ...), padding to the largest B_r."""
    largest = max(sizes)
    padded = x.contiguous()
    if x.shape[0] < largest:
        padded = torch.cat([padded, padded.new_zeros((largest - x.shape[0], *x.shape[1:]))])
    chunks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    return torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's tensor. Backward: sum the gradient over ranks, keep our slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sizes = _gather_sizes(x.shape[0], x.device)
        rank = dist.get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Sum over ranks (see the module docstring): rank r's features influence the loss computed on
        # every rank, so their gradient is the sum of what every rank back-propagates into its slice.
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Gather ``x`` (B, ...) from every rank into (Σ_r B_r, ...) in rank order, differentiably.

    The backward gives each rank the gradient of its own slice summed over ranks, so that DDP's
    averaging yields exactly the gradient of the single-process loss on the concatenated batch (see
    the module docstring). Identity without a process group or with one rank. Per-rank batch sizes
    may differ.
    """
    if get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Gather ``x`` (B, ...) from every rank into (Σ_r B_r, ...) without autograd (labels, ids, metrics)."""
    if get_world_size() == 1:
        return x
    return _gather_padded(x, _gather_sizes(x.shape[0], x.device))


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a floating tensor over ranks (a new tensor); a copy of ``x`` without a process group."""
    if not x.is_floating_point():
        raise TypeError(f"all_reduce_mean needs a floating tensor, got {x.dtype}")
    out = x.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= get_world_size()
    return out


@torch.no_grad()
def all_reduce_sum_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a new tensor, outside autograd); a detached copy without a process group."""
    out = x.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def global_mean_share(
    local_mean: torch.Tensor, local_count: torch.Tensor, global_count: torch.Tensor, world_size: int
) -> torch.Tensor:
    """``local_mean · n_r · W / N``: rank r's share of the mean over all ranks' items (see the module docstring).

    ``local_count`` ``n_r`` and ``global_count`` ``N = Σ_r n_r`` carry no gradient; ``N = 0`` (no item
    anywhere, so every ``local_mean`` is 0) gives 0 rather than NaN.
    """
    weight = local_count.double() * world_size / global_count.double().clamp(min=1)  # float64: counts stay exact
    return local_mean * weight.float()  # at least fp32: a bf16 weight would be off by up to 0.4%


def to_global_mean(local_mean: torch.Tensor, local_count: torch.Tensor | int) -> torch.Tensor:
    """This rank's mean over its ``local_count`` items → its share of the mean over every rank's items.

    Under DDP (gradients averaged over W ranks) the averaged gradient, and the rank average of the
    returned value, are those of the global-batch mean ``Σ_r s_r / Σ_r n_r``. Returns ``local_mean``
    itself (bit for bit) without a process group. A collective: every rank must call it, also with
    ``local_count = 0``.
    """
    world_size = get_world_size()
    if world_size == 1:
        return local_mean
    count = torch.as_tensor(local_count, device=local_mean.device).reshape(()).long()
    return global_mean_share(local_mean, count, all_reduce_sum_no_grad(count), world_size)

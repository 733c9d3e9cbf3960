"""Atomic, resumable checkpoints: weights as safetensors, everything else as a ``weights_only`` torch file.

Layout of a run folder::

    run_dir/checkpoints/step_00000500/model.safetensors   # the model's state dict (tied tensors once)
    run_dir/checkpoints/step_00000500/state.pt            # optimizer, scheduler, RNG states, step, extra
    run_dir/checkpoints/latest                            # text: "step_00000500"

A checkpoint folder is written under a hidden temporary name and renamed into place, and ``latest``
is replaced atomically, so a crash leaves either the previous or the new checkpoint, never half of
one. ``state.pt`` holds only tensors and plain containers (RNG states are converted) so that it loads
with ``torch.load(..., weights_only=True)``.

Tied weights: safetensors refuses tensors that share memory. :func:`save_model_safetensors` stores
each shared tensor once and records the other names in the file's metadata (``grainvl.aliases``);
:func:`load_model_safetensors` puts the aliases back, so ``model.load_state_dict`` sees every key.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from grainvl.utils.fileio import atomic_write_text, load_model_safetensors, save_model_safetensors

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
LATEST_FILE = "latest"
STATE_FORMAT = 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP/FSDP-style wrapper (anything with ``.module``), else ``model`` itself."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


# ---------------------------------------------------------------------------------------------- safetensors
# ---------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as tensors and plain containers (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest step first (temporary folders are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_", 1)[1]))


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    extra_state: dict[str, Any] | None = None,
    *,
    rng_states: list[dict[str, Any]] | None = None,
    keep: int | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step_{step:08d}/`` atomically, point ``latest`` at it, keep the last ``keep``.

    ``extra_state`` (data position, counters, config, ...) must hold only tensors and plain Python
    containers/scalars. ``rng_states`` is one :func:`capture_rng_state` per rank (the loop gathers
    them so every rank resumes its own dropout stream); None stores this process's state. Call it on
    one rank only. Returns the checkpoint folder.
    """
    final = checkpoint_dir(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp_{final.name}_"))
    try:
        save_model_safetensors(tmp / MODEL_FILE, unwrap_model(model).state_dict(), metadata={"step": str(step)})
        state = {
            "format": STATE_FORMAT,
            "step": int(step),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_states if rng_states is not None else [capture_rng_state()],
            "extra": extra_state or {},
        }
        torch.save(state, tmp / STATE_FILE)
        if final.exists():  # the same step saved again (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    atomic_write_text(root / LATEST_FILE, final.name + "\n")
    if keep is not None and keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path_or_run_dir: str | Path) -> Path:
    """A checkpoint folder from itself, a ``checkpoints`` folder, or a run folder (through ``latest``)."""
    path = Path(path_or_run_dir)
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = root / LATEST_FILE
        if latest.is_file():
            target = root / latest.read_text(encoding="utf-8").strip()
            if (target / STATE_FILE).is_file():
                return target
            raise FileNotFoundError(f"{latest}: points at {target.name}, which is missing or incomplete")
    raise FileNotFoundError(f"{path}: not a checkpoint folder and no checkpoints/latest inside")


def load_checkpoint(
    path_or_run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    restore_rng: bool = True,
    rank: int = 0,
    strict: bool = True,
) -> dict[str, Any]:
    """Restore model (and optimizer, scheduler, this rank's RNG) from a checkpoint; return its extra state.

    The returned dict is the ``extra_state`` given to :func:`save_checkpoint` plus ``step``,
    ``checkpoint`` (the folder) and ``num_rng_states``. When the checkpoint holds fewer RNG states
    than ``rank + 1`` (resuming on more processes), this rank takes state ``rank % n``.
    """
    folder = resolve_checkpoint(path_or_run_dir)
    target = unwrap_model(model)
    device = next((p.device for p in target.parameters()), torch.device("cpu"))
    target.load_state_dict(load_model_safetensors(folder / MODEL_FILE, device=device), strict=strict)
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    if optimizer is not None:
        if state["optimizer"] is None:
            raise ValueError(f"{folder}: checkpoint has no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        if state["scheduler"] is None:
            raise ValueError(f"{folder}: checkpoint has no scheduler state")
        scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    if restore_rng and rng:
        restore_rng_state(rng[rank % len(rng)])
    extra = dict(state["extra"])
    extra.update(step=state["step"], checkpoint=str(folder), num_rng_states=len(rng))
    return extra

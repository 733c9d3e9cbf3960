"""Atomic, resumable checkpoints: weights as safetensors, everything else as a ``weights_only`` torch file.

Layout of a run folder::

    run_dir/checkpoints/step_00000500/model.safetensors   # the model's state dict (tied tensors once)
    run_dir/checkpoints/step_00000500/state.pt            # optimizer, scheduler, RNG states, step, extra
    run_dir/checkpoints/step_00000500/checksums.json      # size and sha256 of the two files above
    run_dir/checkpoints/latest                            # text: "step_00000500"

A checkpoint folder is written under a hidden temporary name (``.tmp_step_00000500_*``) and renamed
into place, and ``latest`` is replaced atomically, so a crash leaves either the previous or the new
checkpoint, never half of one. ``state.pt`` holds only tensors and plain containers (RNG states are
converted) so that it loads with ``torch.load(..., weights_only=True)``. Folders and files follow the
umask like every other file grainvl writes.

Damage after the fact (a truncated copy, a deleted folder, overwritten bytes) is caught by
``checksums.json``, written last: :func:`find_checkpoint` verifies it, falls back from a damaged
``latest`` to the newest intact checkpoint of a run folder, and refuses a damaged checkpoint named
exactly. Checkpoints written before checksums existed load unverified. Damaged folders are never
deleted (rotation skips them; rewriting their step moves them aside to ``step_*.damaged``), so the
user can inspect them.

Tied weights: safetensors refuses tensors that share memory. :func:`save_model_safetensors` stores
each shared tensor once and records the other names in the file's metadata (``grainvl.aliases``);
:func:`load_model_safetensors` puts the aliases back, so ``model.load_state_dict`` sees every key.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from grainvl.errors import DataError
from grainvl.utils.fileio import (
    CHECKSUM_FILE,
    atomic_write_text,
    checksum_problem,
    load_model_safetensors,
    output_errors,
    save_model_safetensors,
    write_checksums,
)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
LATEST_FILE = "latest"
STATE_FORMAT = 1
STEP_DIR = re.compile(r"step_(\d+)")
TEMP_DIR = re.compile(r"\.tmp_step_\d+_.+")
"""Hidden folders a checkpoint is written in before its rename; one left behind is a crashed save."""
DAMAGED_SUFFIX = ".damaged"


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


def _step_folders(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``step_N`` folder under ``root``, oldest first (temp and damaged ones excluded)."""
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.fullmatch(p.name))]
    return sorted(found)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest step first (temporary folders are ignored)."""
    return [p for _, p in _step_folders(Path(run_dir) / "checkpoints") if (p / STATE_FILE).is_file()]


def checkpoint_problem(folder: str | Path, *, hash_files: bool = True) -> str | None:
    """Why ``folder`` is not an intact checkpoint (``"model.safetensors: sha256 mismatch"``), or None.

    Missing files and sizes are checked first (cheap), then every file's sha256 (``hash_files=False``
    skips that: rotation uses the cheap check). A folder without ``checksums.json`` predates checksums:
    it only needs its two files (unverified, as before).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "folder missing"
    if not (folder / CHECKSUM_FILE).is_file():
        missing = [name for name in (MODEL_FILE, STATE_FILE) if not (folder / name).is_file()]
        return f"{missing[0]}: missing" if missing else None
    return checksum_problem(folder, (MODEL_FILE, STATE_FILE), hash_files)


def _make_temp_dir(root: Path, name: str) -> Path:
    """A fresh hidden folder for a checkpoint in the making.

    ``os.mkdir``'s default mode (0o777 less the umask) is the point: ``tempfile.mkdtemp`` makes 0o700,
    which left checkpoints unreadable to the group that can read every other file of the run.
    """
    path = root / f".tmp_{name}_{os.getpid()}_{secrets.token_hex(6)}"
    path.mkdir()
    return path


def remove_stale_temp_dirs(run_dir: str | Path) -> list[Path]:
    """Delete ``checkpoints/.tmp_step_*`` folders a killed save left behind; returns them.

    Only names of the checkpoint temp pattern, only in this run's checkpoint folder. Call it on one
    rank before training starts, while nothing else writes checkpoints into this run folder.
    """
    root = Path(run_dir) / "checkpoints"
    stale = sorted(p for p in root.iterdir() if p.is_dir() and TEMP_DIR.fullmatch(p.name)) if root.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def _move_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint to ``step_N.damaged`` (``.damaged2``, ... if taken): kept for the user."""
    target, n = folder.with_name(folder.name + DAMAGED_SUFFIX), 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}{DAMAGED_SUFFIX}{n}")
    os.rename(folder, target)
    return target


def _rotate(root: Path, newest: int, keep: int) -> None:
    """Delete intact checkpoints older than the ``keep - 1`` newest ones before step ``newest``.

    Only folders of an older step that pass the cheap check (files present, sizes as written) count
    and are deleted; a damaged folder is neither counted nor deleted, and a folder of a later step (an
    abandoned trajectory after resuming from an older checkpoint) is left to be overwritten.
    """
    older = [folder for step, folder in reversed(_step_folders(root)) if step < newest]
    intact = [folder for folder in older if checkpoint_problem(folder, hash_files=False) is None]
    for folder in intact[keep - 1 :]:
        shutil.rmtree(folder, ignore_errors=True)


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
    tmp = _make_temp_dir(root, final.name)
    try:
        # A full disk becomes one line naming the checkpoint folder, not torch.save's "unexpected pos".
        with output_errors(final, tmp):
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
            write_checksums(tmp)  # last: a folder with a manifest was written completely
            if final.exists():  # the same step saved again (e.g. after a resume): replace it
                if checkpoint_problem(final) is None:
                    shutil.rmtree(final)
                else:
                    _move_aside(final)  # damaged: never deleted, kept for the user to inspect
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves no temp folder (no-op after the rename)
    atomic_write_text(root / LATEST_FILE, final.name + "\n")
    if keep is not None and keep > 0:
        _rotate(root, step, keep)
    return final


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint to resume from and the newer ones passed over as damaged (newest first)."""

    folder: Path
    damaged: tuple[tuple[Path, str], ...] = ()

    def notice(self) -> str | None:
        """One line for stderr when it fell back, e.g. ``checkpoint R/step_40 is damaged (...); resuming from
        step_38``; None when it did not."""
        if not self.damaged:
            return None
        parts = [f"checkpoint {folder} is {_damage(reason)}" for folder, reason in self.damaged]
        return "; ".join(parts) + f"; resuming from {self.folder.name}"


def _damage(reason: str) -> str:
    return "missing" if reason == "folder missing" else f"damaged ({reason})"


def _latest_step(root: Path) -> int | None:
    """The step the ``latest`` pointer names, or None when there is no readable pointer."""
    try:
        match = STEP_DIR.fullmatch((root / LATEST_FILE).read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return None
    return int(match[1]) if match else None


def _is_checkpoint_folder(path: Path) -> bool:
    """A path naming one checkpoint (``step_N``, or any folder holding checkpoint files), not a run folder."""
    named = STEP_DIR.fullmatch(path.name) is not None
    return named or (path / STATE_FILE).is_file() or (path / CHECKSUM_FILE).is_file()


def find_checkpoint(path_or_run_dir: str | Path) -> CheckpointChoice:
    """The verified checkpoint to resume from: a checkpoint folder itself, or a run / ``checkpoints`` folder's newest.

    A checkpoint folder named exactly must be intact (else a one-line DataError naming the file and the
    reason; no fallback). A run folder starts at the step ``latest`` names (every step folder when the
    pointer is gone; later folders belong to an abandoned trajectory) and falls back to the newest
    intact older one; when none is intact, a DataError names the checkpoints folder and each problem.
    """
    path = Path(path_or_run_dir)
    if _is_checkpoint_folder(path):
        problem = checkpoint_problem(path)
        if problem is not None:
            hint = "name another checkpoint, or the run folder to resume from its newest intact one"
            raise DataError(path, None, f"checkpoint is {_damage(problem)}; {hint}")
        return CheckpointChoice(path)
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    folders = dict(_step_folders(root))
    latest = _latest_step(root)
    if latest is not None:
        folders = {step: folder for step, folder in folders.items() if step <= latest}
        folders.setdefault(latest, root / f"step_{latest:08d}")  # a deleted latest folder: "missing"
    if not folders:
        raise FileNotFoundError(f"{path}: not a checkpoint folder and no checkpoints inside")
    damaged: list[tuple[Path, str]] = []
    for _, folder in sorted(folders.items(), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return CheckpointChoice(folder, tuple(damaged))
        damaged.append((folder, problem))
    listed = ", ".join(f"{folder.name} ({reason})" for folder, reason in damaged)
    raise DataError(root, None, f"no intact checkpoint to resume from: {listed}")


def resolve_checkpoint(path_or_run_dir: str | Path) -> Path:
    """:func:`find_checkpoint`'s folder; a fallback past damaged checkpoints is said in one line on stderr."""
    choice = find_checkpoint(path_or_run_dir)
    notice = choice.notice()
    if notice is not None:
        print(notice, file=sys.stderr, flush=True)
    return choice.folder


def load_checkpoint(
    path_or_run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    restore_rng: bool = True,
    rank: int = 0,
    strict: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Restore model (and optimizer, scheduler, this rank's RNG) from a checkpoint; return its extra state.

    The returned dict is the ``extra_state`` given to :func:`save_checkpoint` plus ``step``,
    ``checkpoint`` (the folder) and ``num_rng_states``. When the checkpoint holds fewer RNG states
    than ``rank + 1`` (resuming on more processes), this rank takes state ``rank % n``.
    ``verify=False`` loads ``path_or_run_dir`` as the checkpoint folder already chosen and verified
    (the training loop's rank 0 verifies once and tells every rank which folder to load).
    """
    folder = resolve_checkpoint(path_or_run_dir) if verify else Path(path_or_run_dir)
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

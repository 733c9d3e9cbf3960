"""The run scaffold every recipe stands on: one process group, one run folder, one results schema.

A recipe is ``run_recipe(cfg, body)``: :func:`run_recipe` enters the process group (plain ``python``
gives a single process without one; ``torchrun`` gives DDP), and ``body(run)`` builds the model and
the Task, trains with :func:`grainvl.train.loop.train`, evaluates and returns a JSON-ready report.
The scaffold owns what every job repeats around that:

* the run folder: ``config.json`` (the resolved config) when the run starts, ``summary.json`` (the
  report) when it ends, both written atomically and only on rank 0;
* before step 1, on rank 0: the run folder and every file the run writes are checked writable
  (:func:`prepare_run_dir`: one line naming the path instead of a traceback after training), a
  non-empty folder that is not a grainvl run folder is refused (a run folder is reused: resume), and the
  folder is locked (:class:`RunLock`, ``.lock``) so two runs never write one folder;
* ``results.jsonl``: one line per metric in the long schema (:func:`metric_rows`), with the run's
  cost on every line (:func:`cost_columns`; :func:`summary_costs` for a
  :class:`~grainvl.train.loop.TrainSummary`);
* the initial weights' seed (:func:`seed_model_init`);
* the end-of-run cost line of every report (:func:`format_cost`) and printing on rank 0 only
  (:func:`print_report`).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from grainvl.bench.energy import EnergyReport
from grainvl.bench.results import append_result
from grainvl.config import to_dict
from grainvl.errors import OutputError
from grainvl.train.loop import TrainSummary
from grainvl.utils.distributed import DistEnv, run_in_process_group
from grainvl.utils.fileio import atomic_write_text, require_writable_dir, require_writable_file

T = TypeVar("T")

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.jsonl"
METRICS_FILE = "metrics.jsonl"  # appended by train.logging.MetricsLogger
LOCK_FILE = ".lock"
RUN_FILES = (CONFIG_FILE, SUMMARY_FILE, RESULTS_FILE, METRICS_FILE)  # what a run writes or appends to
RUN_FOLDERS = ("checkpoints", "model")  # what a run writes inside, when an earlier run left them


@dataclass(frozen=True)
class Run:
    """One recipe invocation on one rank: where it writes and which process it is."""

    dir: Path
    env: DistEnv

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    @property
    def results(self) -> Path:
        return self.dir / RESULTS_FILE

    def write_config(self, cfg: Any) -> None:
        """``config.json``: the run's resolved config (dataclass), so a run folder says how it was made."""
        if self.is_main:
            atomic_write_text(self.dir / CONFIG_FILE, json.dumps(to_dict(cfg), indent=2) + "\n")

    def write_summary(self, report: dict[str, Any]) -> None:
        if self.is_main:
            atomic_write_text(self.dir / SUMMARY_FILE, json.dumps(report, indent=2, default=str) + "\n")

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append result rows (long schema) to ``results.jsonl``; rank 0 only."""
        if self.is_main:
            for row in rows:
                append_result(self.results, row)


def run_recipe(run_dir: str | Path, body: Callable[[Run], T], torch_threads: int = 0) -> T:
    """Run ``body`` on every rank of the process group (none for one process) in a checked, locked run folder.

    Rank 0 prepares the folder (:func:`prepare_run_dir`) and holds its :class:`RunLock` until ``body`` returns;
    a fault it finds stops every rank with the same one-line :class:`~grainvl.errors.OutputError`, before step 1.
    Returns ``body``'s value (by convention the report on rank 0 and ``{}`` elsewhere).
    """

    def on_rank(env: DistEnv) -> T:
        run = Run(Path(run_dir), env)
        lock, fault = None, None
        if run.is_main:
            try:
                prepare_run_dir(run.dir)
                lock = RunLock.acquire(run.dir)
            except OutputError as error:
                fault = error
        fault = _from_rank_zero(fault, env)
        if fault is not None:
            raise fault
        try:
            return body(run)
        finally:
            if lock is not None:
                lock.release()

    return run_in_process_group(on_rank, torch_threads)


def _from_rank_zero(fault: OutputError | None, env: DistEnv) -> OutputError | None:
    """Rank 0's preparation fault on every rank (torchrun), so no rank waits in a collective for a dead rank 0."""
    if env.world_size == 1 or not dist.is_initialized():
        return fault
    message = [(fault.path, fault.reason) if fault is not None else None]
    dist.broadcast_object_list(message, src=0)
    return OutputError(*message[0]) if message[0] is not None else None


def is_run_folder(path: Path) -> bool:
    """A folder a grainvl run wrote: a run ``config.json`` (it has a ``train`` section), checkpoints, metrics,
    results, a summary or a lock. Re-running or resuming into one is normal; any other non-empty folder is not."""
    if any((path / name).exists() for name in ("checkpoints", METRICS_FILE, RESULTS_FILE, SUMMARY_FILE, LOCK_FILE)):
        return True
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable or not JSON: not a run's config
        return False
    return isinstance(config, dict) and isinstance(config.get("train"), dict)


def prepare_run_dir(run_dir: Path) -> None:
    """Check, before any work, that a run can write everything it will write in ``run_dir`` (made if missing).

    Raises :class:`~grainvl.errors.OutputError` naming the path: "is a file, not a folder", "permission denied",
    "is a folder, not a file" (e.g. a ``results.jsonl`` folder), or a non-empty folder that is not a run folder.
    """
    require_writable_dir(run_dir)
    for name in RUN_FILES:
        require_writable_file(run_dir / name)
    for name in RUN_FOLDERS:
        if (run_dir / name).exists():
            require_writable_dir(run_dir / name)
    if any(run_dir.iterdir()) and not is_run_folder(run_dir):
        raise OutputError(run_dir, "folder is not empty and is not a grainvl run folder; choose a new or empty one")


@dataclass(frozen=True)
class RunLock:
    """``RUN/.lock`` (JSON: pid, host, start time), created exclusively by the run that writes the folder.

    A second run on the folder fails with one line naming the holder. A lock left by a process that is gone
    (same host, pid not alive) is taken over with one line saying so; on another host that cannot be told, so
    the line says which file to remove.
    """

    path: Path
    pid: int

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        path = run_dir / LOCK_FILE
        for _ in range(2):  # a second try after removing a stale lock
            holder = _create_lock(path)
            if holder is None:
                return cls(path, os.getpid())
            if not _is_stale(holder):
                break
            print(
                f"{path}: taking over the lock of pid {holder.get('pid')}, which is no longer running", file=sys.stderr
            )
            path.unlink(missing_ok=True)
        raise OutputError(run_dir, _in_use(holder, path))

    def release(self) -> None:
        """Remove the lock if it is still ours (a lock taken over meanwhile is left alone)."""
        if (_read_lock(self.path) or {}).get("pid") == self.pid:
            self.path.unlink(missing_ok=True)


def _create_lock(path: Path) -> dict[str, Any] | None:
    """Create ``path`` with O_CREAT|O_EXCL and our pid; None on success, else the holder's record (``{}`` if
    unreadable)."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return _read_lock(path) or {}
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return None


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # gone, or being written this instant
        return None
    return record if isinstance(record, dict) else None


def _is_stale(holder: dict[str, Any]) -> bool:
    """Whether the lock's process is known to be gone: same host and no process with its pid."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def _in_use(holder: dict[str, Any], path: Path) -> str:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (started {holder.get('started', '?')})"
    return f"in use by {who}; if that process is gone, remove {path}"


def seed_model_init(seed: int) -> None:
    """Seed python and torch before the model is built: identical initial weights on every rank (DDP also
    broadcasts them); the loop then seeds the data stream per rank (``seed + rank``) or restores a resume."""
    torch.manual_seed(seed)
    random.seed(seed)


def training_gflops(summary: TrainSummary) -> float | None:
    """Training GFLOPs per sample: one optimizer step's measured forward + backward FLOPs over its samples."""
    samples_per_step = summary.samples / summary.steps_run if summary.steps_run else 0
    if not summary.flops_per_step or not samples_per_step:
        return None
    return summary.flops_per_step / samples_per_step / 1e9


def cost_columns(
    *,
    params: int,
    seed: int,
    hardware: dict[str, Any],
    gflops: float | None = None,
    energy: EnergyReport | None = None,
    throughput: float | None = None,
    latency_ms: float | None = None,
) -> dict[str, Any]:
    """The columns of a results row that describe the run rather than the metric (bench/results.py).

    ``hardware`` is :func:`~grainvl.bench.energy.hardware_tags` (a training summary carries it).
    """
    return {
        "params_M": params / 1e6,
        "gflops": gflops,
        "latency_ms": latency_ms,
        "throughput": throughput,
        "energy_kWh": energy.energy_kWh if energy else None,
        "co2_g": energy.co2_g if energy else None,
        "hardware": hardware.get("hardware"),
        "torch": hardware.get("torch"),
        "commit": hardware.get("commit"),
        "seed": seed,
    }


def summary_costs(summary: TrainSummary, seed: int) -> dict[str, Any]:
    """:func:`cost_columns` of a training run: its parameters, training GFLOPs per sample, throughput, energy."""
    return cost_columns(
        params=summary.params,
        seed=seed,
        hardware=summary.hardware,
        gflops=training_gflops(summary),
        energy=summary.energy,
        throughput=summary.samples / summary.wall_s if summary.wall_s else None,
    )


def metric_rows(
    values: dict[str, float], *, model: str, task: str, dataset: str, split: str, costs: dict[str, Any]
) -> list[dict[str, Any]]:
    """One long-schema row per metric of one evaluation, each carrying the run's cost columns."""
    return [
        {"model": model, "task": task, "dataset": dataset, "split": split, "metric": metric, "value": value, **costs}
        for metric, value in values.items()
    ]


def format_cost(summary: dict[str, Any]) -> str:
    """The last line of every training report: steps, time, size, compute, energy and CO₂ of the run."""
    return (
        f"run: {summary['steps']} steps, {summary['samples']} samples, {summary['wall_s']:.0f} s, "
        f"{summary['params'] / 1e6:.1f}M params, {(summary.get('total_flops') or 0) / 1e12:.2f} TFLOPs, "
        f"{format_energy(summary.get('energy'))}"
    )


def format_energy(energy: dict[str, Any] | None) -> str:
    """``energy … kWh, … g CO2-eq (method)`` of a report's energy dict; NaN and 'not tracked' when absent."""
    energy = energy or {}
    return (
        f"energy {energy.get('energy_kWh', float('nan')):.2e} kWh, {energy.get('co2_g', float('nan')):.2e} g CO2-eq "
        f"({energy.get('method', 'not tracked')})"
    )


def print_report(report: dict[str, Any], formatter: Callable[[dict[str, Any]], str]) -> None:
    """Print a recipe's report; ranks other than 0 return ``{}`` and print nothing."""
    if report:
        print(formatter(report))


# ---------------------------------------------------------------------------------------------- official configs
# Optimisation sections of the official X-VLM / X²-VLM YAMLs -> (grainvl config section, {official key: field}).
OFFICIAL_OPTIM_SECTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "optimizer": ("optim", {"lr": "lr", "weight_decay": "weight_decay", "lr_mult": "lr_mult"}),
    "schedular": ("sched", {"num_warmup_steps": "warmup_steps"}),
}


def map_official_sections(
    tree: dict[str, Any], out: dict[str, Any], sections: dict[str, tuple[str, dict[str, str]]]
) -> tuple[set[str], list[str]]:
    """Copy the mapped keys of each official section of ``tree`` into ``out[target]`` (grainvl's own values in
    ``out`` win). Returns (the sections consumed, their keys grainvl has no field for, as ``section.key``)."""
    used: set[str] = set()
    unmapped: list[str] = []
    for name, (target, mapping) in sections.items():
        section = tree.get(name)
        if not isinstance(section, dict):
            continue
        used.add(name)
        values = {mapping[k]: v for k, v in section.items() if k in mapping}
        out[target] = {**values, **(out.get(target) or {})}
        unmapped += [f"{name}.{k}" for k in section if k not in mapping]
    return used, unmapped


def announce_unused(keys: list[str]) -> None:
    """One stderr line listing the official config keys a translation did not use (nothing when none)."""
    if keys:
        print(
            f"official config: not used by grainvl (the model comes from --model): {', '.join(keys)}", file=sys.stderr
        )

"""The benchmark runner: every model in its own subprocess, every (model, task) one result group.

For each model (one ``python -m grainvl.recipes.bench SPEC`` worker at a time, so measurements never
share the machine) and each task:

1. fine-tune it with :func:`grainvl.recipes.finetune.finetune` (``finetune_steps`` steps), or reuse an
   already fine-tuned run folder given for that (model, task). The task run keeps what evaluation reads
   (``model/``, the head, ``task.json``) and no checkpoint: no optimizer state, nothing to resume (a run
   to continue is a ``grainvl finetune`` run);
2. reload the run with :func:`~grainvl.recipes.finetune.load_finetuned` and evaluate the ID (``test``) and
   OOD (``test_ood``) splits, each under an :class:`~grainvl.bench.energy.EnergyTracker`, writing the
   predictions in the official format under the run folder;
3. measure inference cost on the task's own ``latency_call`` (:func:`~grainvl.bench.efficiency.measure_efficiency`),
   and the batch-1 latency again with the towers run by ``latency_backend`` when that is not eager (auto: onnx
   for an X-VLM on the CPU in fp32, :func:`~grainvl.bench.inference.auto_backend`);
4. append one row per (split, metric) in the long schema, plus ``<metric>_diff = OOD - ID`` rows
   (``split: "ood"``), to ``out/results.jsonl``;
5. with ``keep_weights=False``, delete the fine-tuned weights it made (``model/``, the head, ``task.json``):
   the run folder keeps its config, summary, metrics and predictions.

A Python exception inside a task (including CUDA out-of-memory) fails that (model, task) only, with
the exception as the reason; a hard crash of the worker (killed by the kernel's OOM killer, a
segfault, a timeout) fails that model's remaining tasks with the signal or exit status as the reason.
Failures are rows with ``status: "failed"`` and ``error`` so the report lists them.

The fine-tune/evaluate/load steps go through a *backend* (``"module:Class"``, default
:class:`FinetuneBackend`), the one seam to the task code, so the runner can be tested on a fake task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from grainvl.bench.efficiency import PRECISIONS, measure_efficiency, measure_latency, precision_context
from grainvl.bench.energy import EnergyTracker, hardware_tags
from grainvl.bench.inference import AUTO, BACKENDS, auto_backend, check_backend, load_towers, route_towers
from grainvl.bench.report import read_results, write_report
from grainvl.bench.results import RESULT_FIELDS, with_language
from grainvl.compress.loyalty_bench import (
    LOYALTY_METRICS,
    attack_metrics,
    loyalty_rows,
    probability_file,
    save_probabilities,
    task_text_side,
)
from grainvl.compress.quantize import count_quantized_linears
from grainvl.config import from_dict, with_values
from grainvl.models.factory import default_label, resolve_model
from grainvl.models.xvlm import XVLM
from grainvl.recipes.finetune import MODEL_DIR, FinetuneConfig, finetune, load_finetuned
from grainvl.tasks.base import HEAD_FILE, TASK_FILE
from grainvl.tasks.registry import UnsupportedTask, get_task, list_tasks
from grainvl.utils.fileio import atomic_write_text, require_writable_dir, require_writable_file, to_plain

SPLITS = {"id": "test", "ood": "test_ood"}
DEFAULT_BACKEND = "grainvl.recipes.bench:FinetuneBackend"


# ---------------------------------------------------------------------------------------------- options
@dataclass
class BenchOptions:
    """Everything a benchmark run needs besides the models and tasks (units: seconds, ms, samples)."""

    finetune_steps: int | None = None  # None: the task's default fine-tuning length
    finetuned: dict[str, str] = field(default_factory=dict)  # "model:task" -> an already fine-tuned run folder
    # Every fine-tuning run starts from ``finetune``; the runner sets task, model, world, run folder, label and seed.
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # Per task, nested FinetuneConfig values merged onto ``finetune``, e.g. {"vqa": {"options": {"k_test": 16}}}.
    task_finetune: dict[str, dict[str, Any]] = field(default_factory=dict)
    country: str = "FRA"  # ISO 3166-1 alpha-3 code for the carbon intensity
    use_codecarbon: bool = True  # False: grainvl's documented fallback estimate only (no codecarbon start-up)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast) for evaluation and measurements
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    seed: int = 0
    warmup: int = 10  # untimed calls before the batch-1 latency
    repeats: int = 50  # timed batch-1 calls (fewer when budget_s runs out, at least 5)
    # What runs the image/text/fusion towers in the batch-1 latency (bench/inference.py): auto | eager | compile |
    # onnx. auto: onnx for an X-VLM on the CPU in fp32 (measured fastest with parity), else eager. Rows name the
    # one used (latency_backend); FLOPs, throughput and memory stay eager, and latency_eager_ms keeps eager's p50.
    latency_backend: str = AUTO
    throughput_batch: int = 32
    throughput_repeats: int = 5
    budget_s: float = 30.0  # time cap of each timed measurement
    timeout_s: float | None = None  # per model (worker), None: no limit
    backend: str = DEFAULT_BACKEND
    dataset: str | None = None  # results' ``dataset`` column; default: the world folder's name
    reuse: bool = False  # reuse out/runs/<model>/<task> when it already holds a fine-tuned run
    # False: once a (model, task) it fine-tuned is measured, delete its weights (model/, head, task.json), ~0.1-0.3 GB
    # per run for xvlm-small; nothing of the benchmark reads them again. Given or reused runs are never touched.
    keep_weights: bool = True
    teacher: str | None = (
        None  # a benchmarked model's label: loyalty to it + robustness columns (compress/loyalty_bench.py)
    )
    loyalty_examples: int = 256  # first N ID examples scored for loyalty (per task)
    attack_examples: int = 16  # first M of those attacked (0: no robustness columns)
    attack_similarity: bool = True  # the attack's sentence-similarity constraint (packaged MiniLM)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.latency_backend not in (AUTO, *BACKENDS):
            choices = ", ".join((AUTO, *BACKENDS))
            raise ValueError(f"unknown latency_backend {self.latency_backend!r}; choose from {choices}")
        if self.latency_backend == "onnx" and self.precision != "fp32":
            raise ValueError(f"latency_backend onnx runs fp32 graphs; precision {self.precision} needs another")
        if self.finetune_steps is not None and self.finetune_steps < 1:
            raise ValueError(f"finetune_steps must be >= 1, got {self.finetune_steps}")
        if self.loyalty_examples < 1 or self.attack_examples < 0:
            raise ValueError("loyalty_examples must be >= 1 and attack_examples >= 0")
        if self.repeats < 1 or self.throughput_repeats < 1 or self.throughput_batch < 1 or self.warmup < 0:
            raise ValueError("repeats, throughput_repeats and throughput_batch must be >= 1, warmup >= 0")
        for task in self.task_finetune:  # unknown keys fail here, before any worker starts
            self.finetune_config(task)

    def finetune_config(self, task: str) -> FinetuneConfig:
        """``finetune`` with the task's own values merged on top (task, model and paths still unset)."""
        return with_values(self.finetune, self.task_finetune.get(task, {}))


@dataclass(frozen=True)
class ModelEntry:
    """A model to benchmark: ``label`` (its name in every table) and ``source`` (what fine-tuning loads)."""

    label: str
    source: str


def parse_models(entries: Sequence[str]) -> list[ModelEntry]:
    """``LABEL=SOURCE`` or ``SOURCE`` entries; a SOURCE is a registered name or a model/run folder.

    Without a label: a registered name is its own label, a folder its name (its parent's when it is
    called ``model``, as in ``RUN/model``). Labels must be unique.
    """
    models = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        label, _, source = entry.partition("=") if "=" in entry else ("", "", entry)
        source = source.strip()
        if not source:
            raise ValueError(f"empty model source in {entry!r}")
        models.append(ModelEntry(label.strip() or default_label(source), source))
    labels = [m.label for m in models]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ValueError(f"duplicate model labels {duplicates}; name them with LABEL=SOURCE")
    if not models:
        raise ValueError("no models to benchmark")
    return models


def check_inputs(models: Sequence[ModelEntry], tasks: Sequence[str], options: BenchOptions | None = None) -> None:
    """Fail before any worker starts: an unknown task (also as a ``task_finetune`` key), task options that
    task does not take (``finetune.options`` / ``task_finetune.<task>.options``), or a model that does not
    resolve to a vision-language or DaVinci model. Every failure is a one-line ValueError / FileNotFoundError."""

    unknown_tasks = [t for t in tasks if t not in list_tasks()]
    if unknown_tasks:
        raise ValueError(f"unknown task(s) {unknown_tasks}; registered tasks: {', '.join(list_tasks())}")
    if options is not None:
        unknown_tasks = sorted(set(options.task_finetune) - set(list_tasks()))
        if unknown_tasks:
            raise ValueError(
                f"task_finetune: unknown task(s) {unknown_tasks}; registered tasks: {', '.join(list_tasks())}"
            )
    families = []
    for model in models:
        family = resolve_model(model.source).family
        if family != "davinci":
            resolve_model(model.source).expect("vl")
        families.append(family)
    if options is not None:
        for task, family in [(t, f) for f in dict.fromkeys(families) for t in tasks]:
            try:
                get_task(task, family, **options.finetune_config(task).options)
            except UnsupportedTask:
                continue  # that (model, task) becomes a row giving the reason, the others still run
            except ValueError as error:
                where = f"finetune.options / task_finetune.{task}.options"
                raise ValueError(f"{where}: {error}") from None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# ---------------------------------------------------------------------------------------------- backend
class Backend(Protocol):
    """The task code the runner drives (see :class:`FinetuneBackend`)."""

    def finetune(self, model: ModelEntry, task: str, world: Path, out: Path, options: BenchOptions) -> dict[str, Any]:
        """Fine-tune ``model`` on ``task`` into the run folder ``out``; returns a summary (cost keys are read)."""
        ...

    def load(self, run_dir: Path, world: Path) -> tuple[Any, Any, Any]:
        """``(task, module, tokenizer)`` of a fine-tuned run folder."""
        ...

    def evaluate(
        self, task: Any, module: Any, tokenizer: Any, world: Path, split: str, out_dir: Path
    ) -> dict[str, float]:
        """Metrics of the loaded module on a world split, predictions written to ``out_dir``."""
        ...


class FinetuneBackend:
    """The real tasks: :mod:`grainvl.recipes.finetune` and the :class:`~grainvl.tasks.base.DownstreamTask` interface."""

    def finetune(self, model: ModelEntry, task: str, world: Path, out: Path, options: BenchOptions) -> dict[str, Any]:
        # finetune() would evaluate ID and OOD itself; the benchmark does it once, under its own trackers.
        # No checkpoint (optimizer state is twice the model, and a benchmark task run is never resumed):
        # the run keeps model/ + head + task.json, which is all evaluation and latency read back.
        cfg = options.finetune_config(task)
        run: dict[str, Any] = {
            "task": task,
            "model": model.source,
            "world": str(world),
            "label": model.label,
            "eval_splits": (),
            "train.run_dir": str(out),
            "train.ckpt_every": 0,
            "train.save_final": False,
            "train.seed": options.seed,
            "train.country_iso_code": options.country,
            "train.track_energy": options.use_codecarbon and cfg.train.track_energy,
        }
        if options.finetune_steps is not None:
            run["train.steps"] = options.finetune_steps
        return finetune(with_values(cfg, run))

    def load(self, run_dir: Path, world: Path) -> tuple[Any, Any, Any]:
        return load_finetuned(run_dir, world)

    def evaluate(
        self, task: Any, module: Any, tokenizer: Any, world: Path, split: str, out_dir: Path
    ) -> dict[str, float]:
        return dict(task.evaluate(module, tokenizer, world, split, out_dir))

    def text_side(self, task: Any, module: Any, tokenizer: Any, world: Path, split: str, limit: int) -> Any:
        """The task's :class:`~grainvl.compress.loyalty_bench.TextSideSet` (nlvr2, vqa, retrieval) or None.

        Optional for other backends: without this method no loyalty/robustness columns are computed."""

        return task_text_side(task, module, tokenizer, world, split, limit)


def load_backend(path: str) -> Backend:
    """Instantiate a ``"module:Class"`` backend."""
    module_name, _, name = path.partition(":")
    if not name:
        raise ValueError(f"backend must be 'module:Class', got {path!r}")
    return getattr(importlib.import_module(module_name), name)()


# ---------------------------------------------------------------------------------------------- result rows
def ordered_record(record: dict[str, Any]) -> dict[str, Any]:
    """Schema fields first (null when absent, as ``append_result``), then the extra keys sorted.

    An extra key equal to a schema field up to case (``energy_kwh``) is an error: it would silently
    create a second column.
    """
    lower = {name.lower(): name for name in RESULT_FIELDS}
    for key in record:
        if key not in RESULT_FIELDS and key.lower() in lower:
            raise ValueError(f"result key {key!r} looks like the schema field {lower[key.lower()]!r}")
    full = {name: to_plain(record.get(name)) for name in RESULT_FIELDS}
    full.update({k: to_plain(record[k]) for k in sorted(record) if k not in RESULT_FIELDS})
    return full


def append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows as JSON lines with one write (the file is the run's long log)."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(ordered_record(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def failed_row(model: ModelEntry, task: str, reason: str, dataset: str, seed: int) -> dict[str, Any]:
    """The row of a (model, task) that produced no result."""
    return {
        "model": model.label,
        "task": task,
        "dataset": dataset,
        "seed": seed,
        "status": "failed",
        "error": reason,
        "model_source": model.source,
    }


def _result_rows(
    base: dict[str, Any], metrics: dict[str, dict[str, float]], energy: dict[str, dict[str, Any]], primary: str
) -> list[dict[str, Any]]:
    """One row per (split, metric) and the ``<metric>_diff`` (OOD - ID) rows."""
    rows = []
    for split, values in metrics.items():
        for metric, value in values.items():
            # ``acc@de`` (a per-language score of an IGLUE-style task) becomes metric "acc" with lang "de".
            rows.append(
                with_language({**base, **energy[split], "split": split, "metric": metric, "value": float(value)})
            )
            rows[-1]["primary"] = rows[-1]["metric"] == primary and rows[-1].get("lang") is None
    for metric, id_value in metrics.get("id", {}).items():
        ood_value = metrics.get("ood", {}).get(metric)
        if ood_value is not None:
            diff = float(ood_value) - float(id_value)
            rows.append({**base, "split": "ood", "metric": f"{metric}_diff", "value": diff, "primary": False})
    return rows


# ---------------------------------------------------------------------------------------------- one (model, task)
def _device(name: str) -> Any:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _on_device(module: Any, device: Any, run_dir: Path) -> Any:
    """``device``, or a clear error when an int8 (dynamically quantised) module would go to an accelerator."""

    if device.type != "cpu" and count_quantized_linears(module):
        raise ValueError(
            f"{run_dir}: the model is dynamically quantised (int8, quantize.json) and runs on CPU only; "
            "benchmark it with --device cpu"
        )
    return device


def _run_dir(model: ModelEntry, task: str, out: Path, options: BenchOptions) -> tuple[Path, bool]:
    """(run folder, already fine-tuned) for a (model, task)."""
    given = options.finetuned.get(f"{model.label}:{task}")
    if given:
        if not Path(given).is_dir():
            raise FileNotFoundError(f"fine-tuned run folder for {model.label}:{task} not found: {given}")
        return Path(given), True
    run_dir = out / "runs" / _slug(model.label) / task

    return run_dir, options.reuse and (run_dir / TASK_FILE).exists()


def _finetune_cost(summary: dict[str, Any]) -> dict[str, Any]:
    """Fine-tuning wall time, energy and CO₂ from a :func:`~grainvl.recipes.finetune.finetune` summary's ``cost``."""
    cost = summary.get("cost") or {}
    return {
        "finetune_wall_s": cost.get("wall_s"),
        "finetune_energy_kWh": cost.get("energy_kWh"),
        "finetune_co2_g": cost.get("co2_g"),
    }


@contextlib.contextmanager
def _phase(label: str, phase: str) -> Iterator[None]:
    """Print how long a phase of a (model, task) took (to the worker log, echoed by the parent)."""
    start = time.perf_counter()
    yield
    print(f"[bench] {label}: {phase} {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def _evaluate_split(
    backend: Backend, loaded: tuple[Any, Any, Any], world: Path, split: str, out_dir: Path, options: BenchOptions
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, energy columns) of one split's evaluation, under its own energy tracker."""

    task, module, tokenizer = loaded
    device = next(module.parameters()).device
    tracker = EnergyTracker(country_iso_code=options.country, use_codecarbon=options.use_codecarbon)
    with tracker, precision_context(options.precision, device), torch.no_grad():
        metrics = backend.evaluate(task, module, tokenizer, world, split, out_dir)
    report = tracker.report
    assert report is not None
    energy = {"energy_kWh": report.energy_kWh, "co2_g": report.co2_g, "energy_method": report.method}
    return metrics, {**energy, "eval_wall_s": report.duration_s}


def bench_task(
    model: ModelEntry, task_name: str, world: Path, out: Path, options: BenchOptions, backend: Backend, tags: dict
) -> list[dict[str, Any]]:
    """Fine-tune (or reuse), evaluate ID and OOD, and measure one (model, task); returns its result rows."""

    label = f"{model.label} / {task_name}"
    torch.manual_seed(options.seed)
    run_dir, done = _run_dir(model, task_name, out, options)
    cost: dict[str, Any] = {}
    if not done:
        with _phase(label, "fine-tune"):
            cost = _finetune_cost(backend.finetune(model, task_name, world, run_dir, options) or {})
    with _phase(label, "load"):
        task, module, tokenizer = backend.load(run_dir, world)
        if getattr(task, "name", task_name) != task_name:
            raise ValueError(f"{run_dir} is a fine-tuned {task.name} run, not {task_name}")
        module = module.to(_on_device(module, _device(options.device), run_dir)).eval()
    metrics, energy = {}, {}
    for split, world_split in SPLITS.items():
        with _phase(label, f"evaluate {split} ({world_split})"):
            out_dir = run_dir / "predictions" / split
            metrics[split], energy[split] = _evaluate_split(
                backend, (task, module, tokenizer), world, world_split, out_dir, options
            )
    with _phase(label, "measure latency/throughput/memory/FLOPs"):
        efficiency = measure_efficiency(
            lambda batch: task.latency_call(module, tokenizer, world, batch),
            module,
            device=next(module.parameters()).device,
            precision=options.precision,
            throughput_batch=options.throughput_batch,
            warmup=options.warmup,
            repeats=options.repeats,
            throughput_repeats=options.throughput_repeats,
            budget_s=options.budget_s,
        ).to_dict()
        efficiency.update(_backend_latency((task, module, tokenizer), world, options, efficiency["latency_ms"]))
    base = {
        "model": model.label,
        "model_source": model.source,
        "task": task_name,
        "dataset": options.dataset or world.name,
        "seed": options.seed,
        "hardware": tags.get("hardware"),
        "torch": tags.get("torch"),
        "commit": tags.get("commit"),
        "commit_dirty": tags.get("commit_dirty"),
        "country": options.country,
        "status": "ok",
        "run_dir": str(run_dir),
        "finetune_steps": options.finetune_steps if not done else None,
        **cost,
        **efficiency,
    }
    rows = _result_rows(base, metrics, energy, str(getattr(task, "primary_metric", "")))
    if options.teacher is not None and hasattr(backend, "text_side"):
        with _phase(label, "loyalty probabilities and attack"):
            rows += _loyalty_and_attack(backend, (task, module, tokenizer), model, task_name, world, out, options, base)
    if not (done or options.keep_weights):
        drop_weights(run_dir)
    return rows


def _backend_latency(
    loaded: tuple[Any, Any, Any], world: Path, options: BenchOptions, eager_ms: float
) -> dict[str, Any]:
    """``latency_backend`` (resolved) and, unless eager, the batch-1 latency columns measured again through it."""
    task, module, tokenizer = loaded
    model = getattr(module, "model", None)
    choice = options.latency_backend
    backend = auto_backend(model, options.precision) if choice == AUTO else check_backend(choice)
    if backend == "eager":
        return {"latency_backend": backend}
    if not isinstance(model, XVLM):
        raise ValueError(f"latency_backend {backend} runs an X-VLM's towers; this task's model is not one")
    towers = load_towers(model, backend)
    device = next(module.parameters()).device
    with route_towers(model, towers), precision_context(options.precision, device):
        call = task.latency_call(module, tokenizer, world, 1)
        latency = measure_latency(call, options.warmup, options.repeats, 1, device, options.budget_s)
    return {
        "latency_ms": latency.p50_ms,
        "latency_p90_ms": latency.p90_ms,
        "latency_repeats": latency.repeats,
        "latency_backend": backend,
        "latency_eager_ms": eager_ms,
    }


def drop_weights(run_dir: Path) -> None:
    """Delete a fine-tuned run's weights (``model/``, the head) and ``task.json``, which would announce them.

    Without ``task.json`` the folder is no longer a fine-tuned run, so ``--reuse`` fine-tunes it again
    instead of failing on the missing weights; config, summary, metrics and predictions stay.
    """
    shutil.rmtree(run_dir / MODEL_DIR, ignore_errors=True)
    for name in (HEAD_FILE, TASK_FILE):
        (run_dir / name).unlink(missing_ok=True)


def _loyalty_and_attack(
    backend: Any,
    loaded: tuple[Any, Any, Any],
    model: ModelEntry,
    task_name: str,
    world: Path,
    out: Path,
    options: BenchOptions,
    base: dict[str, Any],
) -> list[dict[str, Any]]:
    """Write this model's ID class probabilities (the parent computes loyalty from them); -> the attack rows."""

    task, module, tokenizer = loaded
    text_side = backend.text_side(task, module, tokenizer, world, SPLITS["id"], options.loyalty_examples)
    if text_side is None:
        return []  # the task has no classification-style text side (e.g. captioning)
    save_probabilities(probability_file(out, _slug(model.label), task_name), text_side)
    if options.attack_examples == 0:
        return []
    found = attack_metrics(text_side, options.attack_examples, options.attack_similarity)
    n = found.pop("attack_examples")
    return [
        {**base, "split": "id", "metric": metric, "value": float(value), "primary": False, "attack_examples": n}
        for metric, value in found.items()
    ]


# ---------------------------------------------------------------------------------------------- the worker
def worker_main(spec_path: str | Path) -> int:
    """Run one model over its tasks (the subprocess side); rows are appended to the spec's ``rows`` file per task."""

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    model = ModelEntry(**spec["model"])
    options = from_dict(BenchOptions, spec["options"])
    world, out, rows_path = Path(spec["world"]), Path(spec["out"]), Path(spec["rows"])
    backend = load_backend(options.backend)
    tags = hardware_tags(precision=options.precision)
    failures = 0
    for task in spec["tasks"]:
        start = time.perf_counter()
        print(f"[bench] {model.label} / {task}: start", file=sys.stderr, flush=True)
        try:
            rows = bench_task(model, task, world, out, options, backend, tags)
        except Exception as error:  # any failure of one task must not stop the others
            traceback.print_exc()
            failures += 1
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            rows = [failed_row(model, task, reason[:500], options.dataset or world.name, options.seed)]
        # Outside the except block, so the traceback no longer pins the failed task's tensors (CUDA OOM).
        _free_accelerator_memory()
        append_rows(rows_path, rows)
        status = "failed" if rows[0].get("status") == "failed" else "ok"
        print(
            f"[bench] {model.label} / {task}: {status} in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return 0 if not failures else 3


def _free_accelerator_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ---------------------------------------------------------------------------------------------- the parent
@dataclass
class WorkerOutcome:
    """How a worker process ended: exit status (negative = killed by that signal) and a reason when it failed."""

    returncode: int
    reason: str | None
    wall_s: float


def _crash_reason(returncode: int, log_tail: list[str], timeout_s: float | None, timed_out: bool) -> str | None:
    if timed_out:
        return f"worker timed out after {timeout_s:g} s"
    if returncode in (0, 3):  # 3: the worker finished and reported its own per-task failures
        return None
    if returncode < 0:
        name = (
            signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else str(-returncode)
        )
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -returncode == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    last = next((line.strip() for line in reversed(log_tail) if line.strip()), "")
    return f"worker exited with status {returncode}" + (f": {last[:300]}" if last else "")


def run_worker(
    spec_path: Path, log_path: Path, timeout_s: float | None, echo: Callable[[str], None] | None
) -> WorkerOutcome:
    """Run ``python -m grainvl.recipes.bench SPEC``, teeing its output to ``log_path`` (and ``echo``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "grainvl.recipes.bench", str(spec_path)]
    start = time.perf_counter()
    tail: list[str] = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

        def pump() -> None:  # a thread, so a silent hung worker still meets its timeout below
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                tail[:] = [*tail, line][-20:]
                if echo is not None:
                    echo(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            returncode, timed_out = process.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            process.kill()
            returncode, timed_out = process.wait(), True
        reader.join()
    reason = _crash_reason(returncode, tail, timeout_s, timed_out)
    return WorkerOutcome(returncode, reason, time.perf_counter() - start)


def _kept_rows(results: Path, models: Sequence[ModelEntry], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of an earlier run of the same out folder whose (model, task) succeeded (for ``resume``)."""
    if not results.exists():
        return []

    wanted = {(m.label, t) for m in models for t in tasks}
    rows = read_results(results)
    failed = {(r["model"], r["task"]) for r in rows if r.get("status") == "failed"}
    return [r for r in rows if (r["model"], r["task"]) in wanted - failed]


def run_bench(
    models: Sequence[str],
    tasks: Sequence[str],
    world: str | Path,
    out: str | Path,
    options: BenchOptions | None = None,
    resume: bool = False,
    report: bool = True,
    echo: Callable[[str], None] | None = None,
    progress: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
    """Benchmark ``models`` on ``tasks`` of ``world``; writes ``out/results.jsonl`` (+ the report); returns the rows.

    ``models`` entries are ``[LABEL=]SOURCE`` (:func:`parse_models`). ``resume`` keeps the successful
    (model, task) rows of an earlier ``out/results.jsonl`` and runs only the rest; otherwise the
    file is started afresh. ``echo`` receives every line the workers print; ``progress`` one line
    per finished (model, task).
    """
    options = options or BenchOptions()
    entries = parse_models(models)
    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        raise ValueError("no tasks to benchmark")
    world, out = Path(world), Path(out)
    if not world.is_dir():
        raise FileNotFoundError(f"world folder not found: {world}")
    if options.backend == DEFAULT_BACKEND:
        check_inputs(entries, tasks, options)
    if options.teacher is not None and options.teacher not in {m.label for m in entries}:
        labels = ", ".join(m.label for m in entries)
        raise ValueError(f"--teacher {options.teacher!r} is not one of the benchmarked models ({labels})")
    # Before any fine-tuning: the report files must be writable (one line naming the path otherwise). The folder
    # may hold other things (the demo benchmarks into its own root, beside the world and the pre-training run).
    require_writable_dir(out)
    results = out / "results.jsonl"
    for path in (results, out / "report.md"):
        require_writable_file(path)
    kept = _kept_rows(results, entries, tasks) if resume else []

    atomic_write_text(results, "".join(json.dumps(ordered_record(r), ensure_ascii=False) + "\n" for r in kept))
    done = {(r["model"], r["task"]) for r in kept}
    for model in entries:
        todo = [t for t in tasks if (model.label, t) not in done]
        if todo:
            _bench_model(model, todo, world, out, options, echo, progress)
    if options.teacher is not None:
        _add_loyalty(results, out, options.teacher, progress)
    if report:
        write_report(results, out)

    return read_results(results)


def _add_loyalty(results: Path, out: Path, teacher: str, progress: Callable[[str], None] | None) -> None:
    """Replace the loyalty rows of results.jsonl with ones computed from every model's saved probabilities."""

    rows = [r for r in read_results(results) if r.get("metric") not in LOYALTY_METRICS]
    extra, warnings = loyalty_rows(rows, out, teacher, _slug)
    for line in warnings:
        if progress is not None:
            progress(f"[bench] {line}")
    text = "".join(json.dumps(ordered_record(r), ensure_ascii=False) + "\n" for r in [*rows, *extra])
    atomic_write_text(results, text)


def _bench_model(
    model: ModelEntry,
    tasks: list[str],
    world: Path,
    out: Path,
    options: BenchOptions,
    echo: Callable[[str], None] | None,
    progress: Callable[[str], None] | None,
) -> None:
    """One worker for ``model``; its rows (plus failure rows for tasks it never reached) go to results.jsonl."""
    work = out / "workers"
    work.mkdir(parents=True, exist_ok=True)
    slug = _slug(model.label)
    rows_path, spec_path = work / f"{slug}.rows.jsonl", work / f"{slug}.spec.json"
    rows_path.unlink(missing_ok=True)
    spec = {
        "model": dataclasses.asdict(model),
        "tasks": tasks,
        "world": str(world.resolve()),
        "out": str(out.resolve()),
        "rows": str(rows_path.resolve()),
        "options": dataclasses.asdict(options),
    }
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    outcome = run_worker(spec_path, out / "logs" / f"{slug}.log", options.timeout_s, echo)

    rows = read_results(rows_path) if rows_path.exists() and rows_path.stat().st_size else []
    reached = {r["task"] for r in rows}
    reason = outcome.reason or f"worker ended (status {outcome.returncode}) without a result"
    dataset = options.dataset or world.name
    rows += [failed_row(model, t, reason, dataset, options.seed) for t in tasks if t not in reached]
    append_rows(out / "results.jsonl", rows)
    if progress is not None:
        for task in tasks:
            progress(_progress_line(model.label, task, [r for r in rows if r["task"] == task]))


def _progress_line(label: str, task: str, rows: list[dict[str, Any]]) -> str:
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        return f"{label:<16} {task:<12} FAILED: {failed[0].get('error')}"
    primary = {r["split"]: r["value"] for r in rows if r.get("primary")}
    first = rows[0] if rows else {}
    return (
        f"{label:<16} {task:<12} ID {primary.get('id', float('nan')):.2f}  OOD {primary.get('ood', float('nan')):.2f}  "
        f"p50 {first.get('latency_ms') or float('nan'):.1f} ms  {first.get('throughput') or float('nan'):.1f} samples/s"
    )


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))

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

Cross-lingual tasks (``xvnli``, ``xgqa``, ``marvl``, ``xflickrco``, ``multi_retrieval``; :mod:`grainvl.tasks.iglue`)
follow the IGLUE protocol: fine-tune on English train; with an English ``dev`` file and ``train.eval_every``
> 0 the dev score is taken during training and the best state is the one tested (else the final one); then
every language's test file is scored, one results row per (metric, language) with ``lang`` set, plus the
task score (the mean over the non-English languages) without ``lang``. ``shots`` > 0 then fine-tunes a copy
of the English model on each target language's first ``shots`` few-shot items (``shot_steps`` steps at
``shot_lr``) before testing that language; those rows carry the label ``<model> (<N>-shot)``.
``options.translate_test`` (``--translate-test``) tests the English side of every item instead; its rows
carry the label ``<model> (translate-test)``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grainvl.bench.energy import EnergyTracker, count_parameters, flops_per_sample
from grainvl.bench.report import language_table
from grainvl.bench.results import metric_language, with_language
from grainvl.compress.quantize import quantize_dynamic_int8, read_quantize_flag, write_quantize_flag
from grainvl.data.check import validate_split_files
from grainvl.data.downstream import read_records
from grainvl.data.formats.validate import skipping_bad_records
from grainvl.data.layout import (
    OFFICIAL_ALIASES,
    OFFICIAL_KEYS,
    DataFiles,
    DataLayout,
    files_from_official,
    is_official_config,
    layout_for,
    register_layout,
    split_of,
)
from grainvl.errors import BadRecords
from grainvl.models.davinci import DaVinci
from grainvl.models.factory import (
    ResolvedModel,
    default_label,
    get_tokenizer,
    load_davinci_model,
    load_model,
    resolve_model,
)
from grainvl.models.xvlm import XVLM
from grainvl.recipes.scaffold import (
    OFFICIAL_OPTIM_SECTIONS,
    Run,
    announce_unused,
    cost_columns,
    map_official_sections,
    metric_rows,
    run_recipe,
)
from grainvl.tasks.base import (
    TASK_FILE,
    DataOptions,
    DownstreamTask,
    TaskModule,
    data_files,
    has_split,
    resolve_split,
    split_tag,
)
from grainvl.tasks.davinci_downstream import DaVinciTask
from grainvl.tasks.iglue import ENGLISH, VALIDATORS, CrossLingualTask, non_english_mean, with_options
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
    """The data root: a world, or a dataset in the official layout (``--data-root``)."""
    files: DataFiles = field(default_factory=DataFiles)
    """Explicit files and image folders, by the official config keys (``train_file``, ``image_root``, ...)."""
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
    skip_bad: bool = False
    """Skip bad records of every file read (each listed on stderr, the count in summary.json) instead of stopping."""
    translate_test: bool = False
    """Cross-lingual tasks: test each item's English side (the task option ``translate_test``)."""
    shots: int = 0
    """Cross-lingual tasks: > 0 fine-tunes the English model on N items of each target language before its test."""
    shot_steps: int = 20
    """Optimizer steps of each language's few-shot fine-tune (IGLUE: many epochs over the shots)."""
    shot_lr: float = 1e-5
    """Learning rate of the few-shot fine-tunes (IGLUE's few-shot configs: 1e-5)."""

    def __post_init__(self) -> None:
        if self.shots < 0 or self.shot_steps < 1:
            raise ValueError(f"shots must be >= 0 and shot_steps >= 1, got {self.shots} and {self.shot_steps}")


# ---------------------------------------------------------------------------------------------- model loading
def _optimizer(module: TaskModule, cfg: OptimConfig, pretrained: bool) -> torch.optim.Optimizer:
    """X²-VLM groups; ``lr_mult`` for the task head and, on an un-pretrained model, its new parts too."""

    heads = sorted({name.split(".")[0] + "." for name, _ in module.named_parameters() if not name.startswith("model.")})
    # DaVinci has no packaged-init bookkeeping: a fresh DaVinci trains at the base rate everywhere.
    fresh = [] if pretrained or isinstance(module.model, DaVinci) else module.model.newly_initialised()
    fresh = [f"model.{p}" for p in fresh]
    overrides = {k if k.startswith("model.") else f"model.{k}": v for k, v in cfg.lr_overrides.items()}
    return build_optimizer(module, dataclasses.replace(cfg, lr_mult_params=heads + fresh, lr_overrides=overrides))


def model_label(cfg: FinetuneConfig) -> str:
    if cfg.label:
        return cfg.label
    label = default_label(cfg.model)
    # Translate-test scores a different system (the model on the English side): its rows must not mix in.
    return f"{label} (translate-test)" if task_options(cfg).get("translate_test") else label


def task_options(cfg: FinetuneConfig) -> dict[str, Any]:
    """The task's options: ``cfg.options``, with ``translate_test`` when the run asks for it."""
    return {**cfg.options, "translate_test": True} if cfg.translate_test else dict(cfg.options)


# ---------------------------------------------------------------------------------------------- run
def finetune(cfg: FinetuneConfig, resume: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.task``, save, evaluate ``cfg.eval_splits``; returns the summary.

    The summary comes from rank 0 (``{}`` on other ranks). ``resume``: a run or checkpoint folder to continue.
    """

    def body(run: Run) -> dict[str, Any]:
        # Every reader of the run (training and evaluation files, in every task) skips into one collector.
        with skipping_bad_records(cfg.skip_bad) as bad:
            return _run(cfg, run, resume, bad)

    return run_recipe(cfg.train.run_dir, body, cfg.torch_threads)


def preflight(cfg: FinetuneConfig) -> list[str]:
    """Check, before step 1, that every file the run reads is there; returns the evaluation splits to run.

    The train split must exist (FileNotFoundError otherwise). An evaluation split that does not exist
    is skipped with one line; when none of the requested ones is left and a ``val`` split exists, ``val``
    is evaluated. ``eval_splits`` empty means no evaluation at all: the benchmark and stage-2 compression
    fine-tune with it and evaluate the splits they report themselves. Without ``skip_bad`` every
    evaluation file's records are validated here (no image opened).
    """
    world = Path(cfg.world)
    if not world.is_dir():
        raise FileNotFoundError(f"data root not found: {world} (make a world with `grainvl world --out {world}`)")
    register_layout(DataLayout(world, cfg.files))
    cross = get_task(cfg.task, resolve_model(cfg.model).family, **task_options(cfg))
    if isinstance(cross, CrossLingualTask):
        return _cross_lingual_preflight(cross, world, cfg)
    if isinstance(cross, DaVinciTask):
        return _davinci_preflight(cross, world, cfg)
    task = cfg.task
    data_files(world, task, "train")  # a missing train split stops here, with where it was looked for
    splits = []
    for split in dict.fromkeys(resolve_split(s) for s in cfg.eval_splits):
        if has_split(world, task, split):
            files = data_files(world, task, split)
            if not cfg.skip_bad:  # a bad record (a duplicated id) stops the run now, not after training
                validate_split_files(files, task)
            splits.append(split)
        else:
            print(f"finetune: skipping evaluation split {split!r}: it does not exist for {task}", file=sys.stderr)
    # Only a request that found nothing falls back to val: an empty request is "do not evaluate" (the benchmark's
    # fine-tunes evaluated val here before, 45 s of the demo's 6.7-minute benchmark stage that nothing read).
    if not splits and cfg.eval_splits and has_split(world, task, "val"):
        print(f"finetune: evaluating {task} on 'val' instead", file=sys.stderr)
        splits = ["val"]
    return splits


def _davinci_preflight(task: DaVinciTask, world: Path, cfg: FinetuneConfig) -> list[str]:
    """:func:`preflight` of a DaVinci task: its own files per split (VE, the probe and GLUE live outside the layout)."""
    if not task.split_files(world, "train"):
        raise FileNotFoundError(f"{task.name}: no train split under {world}")
    splits = []
    for split in dict.fromkeys(resolve_split(s) for s in cfg.eval_splits):
        files = task.split_files(world, split)
        if not files:
            print(f"finetune: skipping evaluation split {split!r}: it does not exist for {task.name}", file=sys.stderr)
        elif not cfg.skip_bad and task.name in ("retrieval", "captioning", "vqa", "nlvr2"):  # validated formats
            validate_split_files(files, task.name)
        if files:
            splits.append(split)
    return splits


def load_backbone(source: ResolvedModel) -> tuple[nn.Module, Any]:
    """(model, tokenizer) of a resolved model of either family: an :class:`XVLM` or a :class:`DaVinci`."""
    if source.family == "davinci":
        return load_davinci_model(source), get_tokenizer(source)
    return load_model(source), get_tokenizer(source)


def _cross_lingual_preflight(task: CrossLingualTask, world: Path, cfg: FinetuneConfig) -> list[str]:
    """:func:`preflight` of a cross-lingual task: English train, the splits some language has, every test file read."""
    task.train_file(world)  # FileNotFoundError naming where English train was looked for
    if cfg.shots and task.name == "multi_retrieval":
        raise ValueError("multi_retrieval: --shots is not supported (English retrieval train only)")
    splits = []
    for split in dict.fromkeys(resolve_split(s) for s in cfg.eval_splits):
        langs = task.languages(world, split)
        if not langs:
            print(f"finetune: skipping evaluation split {split!r}: no language has it for {task.name}", file=sys.stderr)
            continue
        if not cfg.skip_bad and task.name in VALIDATORS:  # a bad test record stops the run now, not after training
            for lang in langs:
                read_records(task.test_file(world, split, lang)[0], VALIDATORS[task.name], task.name)
        for lang in [lang for lang in langs if cfg.shots and lang != ENGLISH]:  # FileNotFoundError before step 1
            with_options(task, lang=lang, shots=cfg.shots).train_file(world)
        splits.append(split)
    return splits


def _run(cfg: FinetuneConfig, run: Run, resume: str | Path | None, bad: BadRecords) -> dict[str, Any]:
    env, world, run_dir = run.env, Path(cfg.world), run.dir
    splits = preflight(cfg)
    source = resolve_model(cfg.model)
    task = get_task(cfg.task, source.family, **task_options(cfg)).with_data(cfg.data)
    torch.manual_seed(cfg.train.seed)  # identical head initialisation on every rank
    (model, tokenizer), pretrained = load_backbone(source), source.pretrained
    # int8 models fine-tune in fp32, then re-quantise (post-training); read_quantize_flag validates the flag.
    quantize_spec = read_quantize_flag(source.folder) if source.quantize is not None and source.folder else None
    if isinstance(model, XVLM):
        model.set_grad_checkpointing(cfg.grad_checkpointing)
    elif cfg.grad_checkpointing:
        raise ValueError("grad_checkpointing is not available for DaVinci models")
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
        selection = _DevSelection(task, module, tokenizer, world) if _selects_on_dev(task, cfg, world) else None
        eval_fn = selection.evaluate if selection is not None else None
        summary = train(module, stream, optimizer, scheduler, loop_cfg, env, resume=resume, eval_fn=eval_fn)
        if selection is not None:
            selection.restore_best()
        train_s = time.perf_counter() - t0
        if env.rank == 0:
            save_finetuned(task, module, tokenizer, run_dir, world, quantize_spec)
        if quantize_spec is not None:  # evaluate what was saved: the int8 model (CPU)
            module = quantize_dynamic_int8(module, skip=tuple(quantize_spec.get("skip", ())))
        for split in splits:
            start = time.perf_counter()
            evaluations[split] = task.evaluate(module, tokenizer, world, split, out_dir=run_dir / "predictions")
            if env.rank == 0 and not evaluations[split]:
                print(f"finetune: {split!r} has no ground truth: predictions written, nothing scored", file=sys.stderr)
            eval_s[split] = time.perf_counter() - start
        few_shot = _few_shot(cfg, task, module, tokenizer, world, splits, env) if cfg.shots else {}
    finally:
        energy = tracker.stop() if tracker is not None else None
    if env.rank != 0:
        return {}
    cost = _run_cost(task, module, tokenizer, world, summary, energy, time.perf_counter() - t0, train_s, eval_s)
    hardware, gflops = summary.hardware, cost["gflops_per_sample"]
    costs = cost_columns(params=cost["params"], seed=cfg.train.seed, hardware=hardware, gflops=gflops, energy=energy)
    dataset = "world" if (world / "manifest.json").exists() else str(cfg.world)
    labelled = [(model_label(cfg), evaluations), (f"{model_label(cfg)} ({cfg.shots}-shot)", few_shot)]
    for label, per_split in labelled:
        for split, metrics in per_split.items():
            rows = metric_rows(
                metrics, model=label, task=task.name, dataset=dataset, split=split_tag(split), costs=costs
            )
            run.append([with_language(row) for row in rows])  # "acc@de" -> metric "acc", lang "de"
    if cfg.skip_bad:  # every file has been read (evaluation splits last): what was left out
        print(f"finetune: {bad.summary()}", file=sys.stderr)
    report = {"task": task.name, "model": model_label(cfg), "evaluations": evaluations, "cost": cost,
              "train": summary.to_dict(), "run_dir": str(run_dir), "skipped_records": len(bad.errors)}  # fmt: skip
    if few_shot:
        report["few_shot"] = {"shots": cfg.shots, "evaluations": few_shot}
    if selection is not None:
        report["dev_selection"] = selection.summary()
    run.write_summary(report)
    return report


# ---------------------------------------------------------------------------------------------- cross-lingual protocol
def _selects_on_dev(task: DownstreamTask, cfg: FinetuneConfig, world: Path) -> bool:
    """Select on English dev: a cross-lingual task, an English dev file, and evaluation during training."""
    if not isinstance(task, CrossLingualTask) or cfg.train.eval_every <= 0 or cfg.shots:
        return False
    return ENGLISH in with_options(task, lang=ENGLISH).languages(world, "dev")


class _DevSelection:
    """Score English dev during training (the loop's ``eval_fn``) and keep the best state (IGLUE model selection)."""

    def __init__(self, task: CrossLingualTask, module: TaskModule, tokenizer: Any, world: Path) -> None:
        self.task, self.module, self.tokenizer, self.world = task, module, tokenizer, world
        self.best: float | None = None
        self.best_step = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def evaluate(self, step: int) -> dict[str, float]:
        metrics = self.task.evaluate_language(self.module, self.tokenizer, self.world, "dev", ENGLISH, None)
        score = metrics.get(self.task.primary_metric)
        if score is not None and (self.best is None or score > self.best):
            self.best, self.best_step = score, step
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}
        return {f"dev_{k}": v for k, v in metrics.items()}

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)

    def summary(self) -> dict[str, Any]:
        return {"metric": self.task.primary_metric, "best": self.best, "step": self.best_step}


def _few_shot(
    cfg: FinetuneConfig,
    task: DownstreamTask,
    module: TaskModule,
    tokenizer: Any,
    world: Path,
    splits: list[str],
    env: Any,
) -> dict[str, dict[str, float]]:
    """Per split, ``metric@lang`` of each target language after fine-tuning the English model on its shots.

    Every language starts from the English state (restored after each); the shots are the first
    ``cfg.shots`` items of the language's few-shot file (``CrossLingualTask.train_file``).
    """
    if not isinstance(task, CrossLingualTask):
        raise ValueError(f"{task.name}: --shots applies to the cross-lingual tasks only")
    english = {k: v.detach().clone() for k, v in module.state_dict().items()}
    optim = dataclasses.replace(cfg.optim, lr=cfg.shot_lr)
    loop_cfg = dataclasses.replace(cfg.train, steps=cfg.shot_steps, run_dir=None, track_energy=False, eval_every=0)
    results: dict[str, dict[str, float]] = {}
    for split in splits:
        for lang in [lang for lang in task.languages(world, split) if lang != ENGLISH]:
            shot_task = with_options(task, lang=lang, shots=cfg.shots)
            stream = shot_task.train_stream(module, tokenizer, world, cfg.data, env.rank, env.world_size)
            optimizer = _optimizer(module, optim, pretrained=True)
            scheduler = build_scheduler(optimizer, dataclasses.replace(cfg.sched, total_steps=cfg.shot_steps))
            module.train()
            train(module, stream, optimizer, scheduler, loop_cfg, env)
            metrics = shot_task.evaluate(module, tokenizer, world, split, out_dir=None)
            results.setdefault(split, {}).update({k: v for k, v in metrics.items() if metric_language(k)[1]})
            module.load_state_dict(english)
    for split, flat in results.items():  # the few-shot task score: the mean over the target languages
        per_lang: dict[str, dict[str, float]] = {}
        for key, value in flat.items():
            metric, lang = metric_language(key)
            per_lang.setdefault(str(lang), {})[metric] = value
        results[split] = {**non_english_mean(per_lang), **flat}
    return results


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
    meta["files"] = dataclasses.asdict(layout_files(world))  # explicit files (official config keys), if any
    atomic_write_text(run_dir / TASK_FILE, json.dumps(meta, indent=2))


def load_finetuned(run_dir: str | Path, world: str | Path | None = None) -> tuple[DownstreamTask, nn.Module, Any]:
    """``(task, module, tokenizer)`` of a fine-tuned run folder, weights restored exactly, in eval mode."""

    run_dir = Path(run_dir)
    meta_path = run_dir / TASK_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {TASK_FILE} (not a fine-tuned run; see `grainvl finetune --help`)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    source = resolve_model(run_dir / MODEL_DIR)
    task = get_task(meta["task"], source.family, **meta.get("options", {}))
    task.with_data(DataOptions(**meta.get("data", {})))
    model, tokenizer = load_backbone(source)
    root = Path(world if world is not None else meta.get("world", "."))
    same_root = world is None or Path(world).resolve() == Path(meta.get("world", ".")).resolve()
    if same_root and meta.get("files") and DataFiles(**meta["files"]) != DataFiles():  # the run's explicit files
        register_layout(DataLayout(root, DataFiles(**meta["files"])))
    module = task.build(model, root, tokenizer)
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
    """The data root: a world, or a dataset in the official layout (``--data-root``)."""
    files: DataFiles = field(default_factory=DataFiles)
    """Explicit files and image folders by the official config keys, as in :class:`FinetuneConfig`."""
    split: str = "id"
    """``id`` (test), ``ood`` (test_ood) or a split name such as ``val``."""
    out: str | None = None
    """Folder for the predictions and ``metrics.json``; None: print the metrics only."""


def evaluate_run(run_dir: str | Path, world: str | Path, split: str, out_dir: Path | None = None) -> dict[str, float]:
    """Metrics of a fine-tuned run on a world split (``id``/``ood`` or a split name)."""
    task, module, tokenizer = load_finetuned(run_dir, world)
    return task.evaluate(module, tokenizer, Path(world), resolve_split(split), out_dir=out_dir)


# ---------------------------------------------------------------------------------------------- official configs
def layout_files(world: Path) -> DataFiles:
    """The explicit files registered for a data root (empty for a world or an official-layout folder)."""
    return layout_for(world).files


def config_tree(tree: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    """A config mapping for :class:`FinetuneConfig` / :class:`EvalConfig`: an official X-VLM / X²-VLM
    config (``train_file``, ``test_file``, ``image_root``, ``batch_size_train``, ``optimizer``, ...) is
    translated, grainvl's own keys pass through; official keys grainvl has no use for are listed on one line.

    Mapped: the file keys → ``files``; ``test_file`` → ``eval_splits`` (one split per file);
    ``batch_size`` / ``batch_size_train`` → ``data.batch_size``; ``batch_size_test`` →
    ``data.eval_batch_size``; ``optimizer.lr`` / ``weight_decay`` / ``lr_mult`` → ``optim``;
    ``schedular.num_warmup_steps`` → ``sched.warmup_steps``; ``k_test`` (retrieval, VQA),
    ``careful_hflip`` (grounding), ``num_dec_layers`` (VQA) → ``options``.
    """
    if not is_official_config(tree):
        return tree
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    out: dict[str, Any] = {k: v for k, v in tree.items() if k in known and k not in ("train",)}
    files = files_from_official(tree)
    out["files"] = dataclasses.asdict(files)
    out.setdefault("world", ".")  # official paths are relative to where the official code runs
    tests = [str(p) for p in ([files.test_file] if isinstance(files.test_file, str) else files.test_file or [])]
    if tests and "eval_splits" not in tree:
        out["eval_splits"] = ["test"] if len(tests) == 1 else list(dict.fromkeys(split_of(p) for p in tests))
    used = set(OFFICIAL_KEYS) | set(OFFICIAL_ALIASES) | set(out)
    data = dict(out.get("data") or {})
    for key, target in (("batch_size", "batch_size"), ("batch_size_train", "batch_size"),
                        ("batch_size_test", "eval_batch_size")):  # fmt: skip
        if isinstance(tree.get(key), int):
            data[target] = tree[key]
            used.add(key)
    if data:
        out["data"] = data
    used |= map_official_sections(tree, out, OFFICIAL_OPTIM_SECTIONS)[0]
    options = dict(out.get("options") or {})
    task = task or out.get("task")
    option_keys = {"retrieval": ("k_test",), "video_retrieval": ("k_test",), "vqa": ("k_test", "num_dec_layers"),
                   "grounding": ("careful_hflip",)}.get(task or "", ())  # fmt: skip
    for key in option_keys:
        if key in tree:
            options[key] = tree[key]
            used.add(key)
    if options:
        out["options"] = options
    if task is None:  # task options are per task: without one, none apply
        out.pop("options", None)
    announce_unused(sorted(k for k in tree if k not in used))
    return out


# ---------------------------------------------------------------------------------------------- report
def format_report(report: dict[str, Any]) -> str:
    """End-of-run table: every metric per split, then the run's cost."""
    lines = [f"{report['task']} fine-tuned from {report['model']}:"]
    for split, metrics in report["evaluations"].items():
        if any(
            metric_language(k)[1] for k in metrics
        ):  # a cross-lingual task: one row per metric, one column per language
            lines.append(f"  {split_tag(split)} ({split}), zero-shot from English:")
            lines.append(language_table(metrics, indent="    "))
            continue
        shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        lines.append(f"  {split_tag(split):>4} ({split}): {shown}")
    for split, metrics in report.get("few_shot", {}).get("evaluations", {}).items():
        lines.append(f"  {split_tag(split)} ({split}), {report['few_shot']['shots']}-shot per language:")
        lines.append(language_table(metrics, indent="    "))
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

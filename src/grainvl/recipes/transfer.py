"""The task-selection experiment end to end: PET-tune every task, embed, rank sources, score the rankings.

``run_evaluate`` does, for a task library (GLUE-TSV and SQuAD folders, e.g. the world's ``W/text``):

1. PET-tune every task with each method in ``methods`` (same backbone, recipe and init) and keep the
   parameters at the end and at ``snapshot_steps`` (early checkpoints);
2. embed each task in each variant (raw / delta / centered) and take cosine similarities;
3. the baselines: TextEmb (pre-trained tower), TaskEmb (Fisher of the fine-tuned model), DataSize, Random;
4. the ground truth (:mod:`grainvl.transfer.ground_truth`, cached) and, per class (classification,
   QA), NDCG / rank of the top source / regret@k of every method, with the compute each one used.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grainvl.data.tokenization import packaged_minilm_path
from grainvl.transfer.baselines import data_size, fisher_embedding, text_embedding
from grainvl.transfer.ground_truth import (
    FinetuneSettings,
    GroundTruth,
    TaskRef,
    TransferLab,
    compute_ground_truth,
    run_key,
)
from grainvl.transfer.petl import PetlConfig, load_hf_backbone, load_task, tune_task
from grainvl.transfer.ranking import evaluate_rankings, random_baseline
from grainvl.transfer.task_embeddings import VARIANTS, cosine_matrix, library_embeddings
from grainvl.utils.fileio import atomic_write_bytes

KINDS = ("classification", "qa")


def discover_tasks(
    root: str | Path, kinds: Sequence[str] = KINDS, names: Sequence[str] | None = None, per_kind: int | None = None
) -> list[TaskRef]:
    """Task folders under ``root``: ``glue/*`` (train.tsv) and ``squad/*`` (train-v1.1.json or train.json),
    or task folders directly under ``root``; a world root (holding ``text/``) is accepted too.
    ``names`` keeps those tasks (in that order); ``per_kind`` keeps the first N of each kind (sorted)."""
    root = Path(root)
    if (root / "text").is_dir() and not (root / "glue").is_dir():
        root = root / "text"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such task folder")
    found: list[TaskRef] = []
    for folder in sorted({p.parent for p in root.glob("*/train.tsv")} | {p.parent for p in root.glob("*/*/train.tsv")}):
        found.append(TaskRef(folder.name, "classification", folder))
    squad = {
        p.parent
        for pattern in ("train-v1.1.json", "train.json")
        for p in [*root.glob(f"*/{pattern}"), *root.glob(f"*/*/{pattern}")]
    }
    for folder in sorted(squad):
        found.append(TaskRef(folder.name, "qa", folder))
    found = [t for t in found if t.kind in kinds]
    if names:
        by_name = {t.name: t for t in found}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"tasks {missing} not found under {root} (found {sorted(by_name)})")
        found = [by_name[n] for n in names]
    if per_kind is not None:
        found = [t for kind in kinds for t in [u for u in found if u.kind == kind][:per_kind]]
    if len({t.name for t in found}) != len(found):
        raise ValueError(f"task names under {root} are not unique: {[t.name for t in found]}")
    if not found:
        raise FileNotFoundError(f"{root}: no GLUE (train.tsv) or SQuAD (train-v1.1.json) task folders")
    return found


@dataclass
class EvaluateConfig:
    """What ``transfer evaluate`` runs. PET and ground-truth recipes are shared by all tasks."""

    encoder: str
    num_layers: int | None = None
    methods: tuple[str, ...] = ("prompt", "prefix", "lora", "bitfit")
    variants: tuple[str, ...] = VARIANTS
    pet_steps: int = 60
    pet_batch_size: int = 16
    snapshot_steps: tuple[int, ...] = ()
    num_virtual_tokens: int = 8
    finetune: FinetuneSettings | None = None
    baseline_examples: int = 200  # TextEmb / TaskEmb examples per task (Vu: the whole training set)
    max_length: int = 128
    k: int = 3
    gain: str = "exp"
    seed: int = 0


@dataclass
class EvaluationReport:
    """Per method, per class: the ``evaluate_rankings`` rows; compute seconds per method; similarities."""

    tasks: list[TaskRef]
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    similarities: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    truth: GroundTruth | None = None
    pet_steps: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": [[t.name, t.kind, str(t.path)] for t in self.tasks],
            "results": self.results,
            "seconds": self.seconds,
            "similarities": self.similarities,
            "ground_truth": asdict(self.truth) if self.truth else None,
        }


def _as_similarity(embeddings: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    names, matrix = cosine_matrix(embeddings)
    return {t: {s: float(matrix[i, j]) for j, s in enumerate(names) if s != t} for i, t in enumerate(names)}


def pet_similarities(
    tasks: list[TaskRef], cfg: EvaluateConfig, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, float]]:
    """{"prompt/delta": similarities, "prompt@10/delta": ..., ...} and PET seconds per method."""

    backbone, tokenizer = load_hf_backbone(cfg.encoder, cfg.num_layers)
    sims: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for method in cfg.methods:
        pet = PetlConfig(
            method=method,
            steps=cfg.pet_steps,
            batch_size=cfg.pet_batch_size,
            num_virtual_tokens=cfg.num_virtual_tokens,
            max_length=cfg.max_length,
            snapshot_steps=tuple(s for s in cfg.snapshot_steps if s < cfg.pet_steps),
            seed=cfg.seed,
        )
        results = {}
        for task in tasks:
            results[task.name] = tune_task(backbone, tokenizer, task.path, pet)
            results[task.name].model = None  # free memory; only the parameters are needed
        seconds[method] = sum(r.seconds for r in results.values())
        log(
            f"PET {method}: {seconds[method]:.1f}s for {len(tasks)} tasks "
            f"({next(iter(results.values())).trainable} parameters each)"
        )
        initial = {t: r.initial for t, r in results.items()}
        checkpoints: list[tuple[str, dict[str, Any]]] = [(method, {t: r.params for t, r in results.items()})]
        for step in pet.snapshot_steps:
            checkpoints.append((f"{method}@{step}", {t: r.snapshots[step] for t, r in results.items()}))
        for label, params in checkpoints:
            for variant in cfg.variants:
                sims[f"{label}/{variant}"] = _as_similarity(library_embeddings(method, params, initial, variant))
    return sims, seconds


def baseline_similarities(
    tasks: list[TaskRef], lab: TransferLab, cfg: EvaluateConfig, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, float]]:
    """TextEmb, TaskEmb (both components) and DataSize similarities, and their seconds."""

    loaded = {t.name: load_task(t.path) for t in tasks}
    start = time.perf_counter()
    tower = lab.pretrained()
    text = {
        n: text_embedding(tower.encoder, tower.tokenizer, task, cfg.baseline_examples, cfg.max_length)
        for n, task in loaded.items()
    }
    seconds = {"textemb": time.perf_counter() - start}
    finetune_before = lab.seconds
    models = {t.name: lab.source_model(t) for t in tasks}  # also the ground truth's source runs
    start = time.perf_counter()
    fisher = {n: fisher_embedding(models[n], loaded[n], cfg.baseline_examples, cfg.max_length) for n in loaded}
    fisher_seconds = time.perf_counter() - start
    # TaskEmb needs a fully fine-tuned model per task: count that training too.
    finetune_seconds = (
        lab.seconds - finetune_before if lab.seconds > finetune_before else _cached_finetune_seconds(lab, tasks)
    )
    seconds["taskemb"] = fisher_seconds + finetune_seconds
    log(
        f"TextEmb {seconds['textemb']:.1f}s; "
        f"TaskEmb {seconds['taskemb']:.1f}s (Fisher {fisher_seconds:.1f}s + fine-tuning)"
    )
    sizes = data_size(list(loaded.values()))
    sims = {
        "textemb": _as_similarity(text),
        "taskemb/cls_output": _as_similarity({n: f["cls_output"] for n, f in fisher.items()}),
        "taskemb/layer_output": _as_similarity({n: f["layer_output"] for n, f in fisher.items()}),
        "datasize": {t: {s: sizes[s] for s in sizes if s != t} for t in sizes},
    }
    return sims, seconds


def _cached_finetune_seconds(lab: TransferLab, tasks: list[TaskRef]) -> float:
    total = 0.0
    for task in tasks:
        path = lab.cache_dir / f"{run_key(lab.settings, task)}.json"
        if path.is_file():
            total += json.loads(path.read_text(encoding="utf-8")).get("seconds", 0.0)
    return total


def run_evaluate(
    tasks: list[TaskRef], cfg: EvaluateConfig, cache_dir: str | Path, log: Callable[[str], None] = print
) -> EvaluationReport:
    """The whole experiment (see the module docstring); -> the report (nothing written here)."""
    settings = cfg.finetune or FinetuneSettings(
        encoder=cfg.encoder, num_layers=cfg.num_layers, max_length=cfg.max_length
    )
    lab = TransferLab(settings, cache_dir, log)
    report = EvaluationReport(tasks, pet_steps=cfg.pet_steps)
    sims, report.seconds = pet_similarities(tasks, cfg, log)
    base_sims, base_seconds = baseline_similarities(tasks, lab, cfg, log)
    sims.update(base_sims)
    report.seconds.update(base_seconds)
    truth = compute_ground_truth(tasks, lab)
    report.seconds["ground_truth"] = truth.seconds
    log(f"ground truth: {truth.runs} new fine-tuning runs, {truth.seconds:.1f}s")
    report.truth = truth
    report.similarities = sims
    for kind in KINDS:
        names = {t.name for t in tasks if t.kind == kind}
        gold = {t: truth.transfer[t] for t in names if len(truth.transfer[t]) >= 1}
        if not gold:
            continue
        for label, sim in sims.items():
            predicted = {t: {s: v for s, v in sim[t].items() if s in names} for t in gold}
            report.results.setdefault(label, {})[kind] = evaluate_rankings(predicted, gold, cfg.k, cfg.gain)
        report.results.setdefault("random", {})[kind] = {"mean": random_baseline(gold, cfg.k, cfg.gain)}
    return report


def format_table(report: EvaluationReport, k: int = 3) -> str:
    """One row per method: mean NDCG, top-1 rank and regret@k per class, and compute seconds."""
    kinds = [kind for kind in KINDS if any(kind in r for r in report.results.values())]
    header = (
        f"{'method':<28}"
        + "".join(f"{kind[:5] + ' NDCG':>12}{'rank':>7}{'regret@' + str(k):>10}" for kind in kinds)
        + f"{'seconds':>10}"
    )
    lines = [header, "-" * len(header)]
    for label, per_kind in report.results.items():
        row = f"{label:<28}"
        for kind in kinds:
            mean = per_kind.get(kind, {}).get("mean")
            row += f"{mean['ndcg']:>12.1f}{mean['top1_rank']:>7.2f}{mean[f'regret@{k}']:>10.2f}" if mean else " " * 29
        method, _, step = label.split("/")[0].partition("@")
        seconds = report.seconds.get(method)
        if seconds is not None and step and report.pet_steps:
            seconds *= int(step) / report.pet_steps  # an early checkpoint costs that fraction of the tuning
        row += f"{seconds:>10.1f}" if seconds is not None else f"{'-':>10}"
        lines.append(row)
    return "\n".join(lines)


def plot_heatmap(similarity: dict[str, dict[str, float]], path: str | Path, title: str) -> Path:
    """Write a PNG heat-map of a task-similarity table (diagonal left blank)."""
    # Imported here: matplotlib is heavy and only plotting needs it.
    import matplotlib

    matplotlib.use("Agg")
    # Imported here: matplotlib is heavy and only plotting needs it.
    import matplotlib.pyplot as plt

    names = sorted(similarity)
    matrix = np.full((len(names), len(names)), np.nan)
    for i, t in enumerate(names):
        for j, s in enumerate(names):
            if s in similarity[t]:
                matrix[i, j] = similarity[t][s]
    size = max(4.0, 0.35 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def tiny_bert_folder(out: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised tiny BERT in Hugging Face layout, with the packaged MiniLM's tokenizer
    (for smoke tests and demos; nothing is downloaded)."""

    # Imported here: transformers takes seconds to import; only this path needs it.
    from transformers import BertConfig, BertModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(out)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (packaged_minilm_path() / name).is_file():
            shutil.copy(packaged_minilm_path() / name, out / name)
    return out


__all__ = [
    "EvaluateConfig",
    "EvaluationReport",
    "baseline_similarities",
    "discover_tasks",
    "format_table",
    "pet_similarities",
    "plot_heatmap",
    "run_evaluate",
    "tiny_bert_folder",
]


# ---------------------------------------------------------------------------------------------- command configs
@dataclass
class TransferTasksConfig:
    """Which tasks and backbone ``grainvl transfer tune|evaluate`` use."""

    tasks: str  # task root: a world folder, W/text, or folders with glue/ and squad/ tasks
    out: str  # output folder
    model: str | None = None  # Hugging Face BERT folder; None: the packaged MiniLM
    layers: int | None = None  # keep only the first N encoder layers (cheaper)
    names: list[str] = field(default_factory=list)  # task names to use; empty: all found
    per_kind: int | None = None  # use the first N classification and N QA tasks
    kinds: list[str] = field(default_factory=lambda: ["classification", "qa"])
    batch_size: int = 16
    max_length: int = 128  # max tokens per example
    max_train: int | None = None  # at most this many training examples per task
    seed: int = 0  # data order and heads


@dataclass
class TransferTuneConfig(TransferTasksConfig):
    """``grainvl transfer tune``: PET-tune every task and save its tuned parameters."""

    method: str = "prompt"  # prompt, prefix, lora or bitfit
    steps: int = 60  # PET optimizer steps per task
    snapshot_steps: tuple[int, ...] = ()  # early-checkpoint steps to keep too


@dataclass
class TransferEvaluateConfig(TransferTasksConfig):
    """``grainvl transfer evaluate``: PET embeddings vs TextEmb/TaskEmb against real transfer."""

    methods: list[str] = field(default_factory=lambda: ["prompt", "prefix", "lora", "bitfit"])
    pet_steps: int = 60  # PET steps per task
    snapshot_steps: tuple[int, ...] = ()  # early-checkpoint steps to evaluate too
    ft_steps: int = 60  # fine-tuning steps of each ground-truth run
    ft_lr: float = 1e-4  # fine-tuning learning rate
    baseline_examples: int = 200  # examples per task for TextEmb/TaskEmb
    max_dev: int | None = None  # score at most this many dev examples per task
    target_train: int | None = None  # full -> limited regime: targets train on only this many examples
    k: int = 3  # k of regret@k
    gain: str = "exp"  # NDCG gain: exp (Vu et al.) or linear
    cache: str | None = None  # ground-truth cache folder; None: OUT/cache


@dataclass
class TransferEmbedConfig:
    """``grainvl transfer embed``: task embeddings and similarities from a ``tune`` run."""

    run: str  # the out folder of ``transfer tune``
    method: str = "prompt"
    variant: str = "delta"  # raw, delta (minus init) or centered
    step: int | None = None  # the snapshot at this step instead of the final parameters


@dataclass
class TransferRankConfig:
    """``grainvl transfer rank``: source tasks ranked for each target by embedding similarity."""

    run: str  # the out folder of ``transfer tune``
    method: str = "prompt"
    variant: str = "delta"
    target: str | None = None  # only this target task; None: every task
    top: int = 5  # sources printed per target
    step: int | None = None  # the snapshot at this step instead of the final parameters

"""Ground truth for task selection: real intermediate-task transfer, cached on disk.

For a target t and a source s (same class: classification -> classification, QA -> QA, the
in-class setting of Vu et al. and TuPaTE) the model is fine-tuned on s from the pretrained tower,
then its tower (with a new head, Vu's ``model_load_mode=base_model_only``) is fine-tuned on t; the
target's dev score is the gold relevance of s for t. ``baseline[t]`` is t fine-tuned from the
pretrained tower alone, so ``gain = transfer − baseline``.

Scores are 0–1 fractions (the task's main metric: accuracy, F1 of the positive class or Matthews
correlation for classification — a negative Matthews is clipped to 0 —, SQuAD F1/100 for QA).

Every finished run is cached as a small JSON file named by a hash of everything that decides its
result (the encoder folder and layer count, the recipe, and the bytes of the task files), so a
repeated or extended run only pays for new pairs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from grainvl.data.tokenization import load_tokenizer
from grainvl.models.text import load_hf_bert, read_hf_state_dict
from grainvl.tasks.text_classification import TextClassifier, TextFinetuneConfig, finetune_text_classifier
from grainvl.tasks.text_qa import QAFinetuneConfig, finetune_qa
from grainvl.utils.fileio import atomic_write_text


@dataclass
class TaskRef:
    """A task folder: ``kind`` is ``classification`` (GLUE TSV) or ``qa`` (SQuAD v1.1 JSON)."""

    name: str
    kind: str
    path: Path


@dataclass
class FinetuneSettings:
    """The full fine-tuning recipe of ground-truth runs (source and target runs alike)."""

    encoder: str
    num_layers: int | None = None  # keep only the first layers of the encoder (cheaper runs)
    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    max_length: int = 128
    doc_stride: int = 48
    seed: int = 0
    max_train_examples: int | None = None
    max_dev_examples: int | None = None
    # Vu et al. (2020)'s full -> limited regime: the target-only baselines and the target stage of
    # every transfer see only this many training examples, sources keep ``max_train_examples``.
    # Without it (full -> full) the world's targets saturate and every gain is ~0 (docs/transfer.md).
    target_train_examples: int | None = None


def _task_digest(task: TaskRef) -> str:
    digest = hashlib.sha256(task.kind.encode())
    for path in sorted(p for p in Path(task.path).iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_key(settings: FinetuneSettings, *tasks: TaskRef) -> str:
    """Cache key of fine-tuning on ``tasks`` in order (source first) with ``settings``."""
    payload = json.dumps(
        {"settings": asdict(settings), "tasks": [[t.name, _task_digest(t)] for t in tasks]}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class GroundTruth:
    """``transfer[target][source]`` and ``baseline[target]`` as 0–1 scores; ``seconds`` spent computing."""

    baseline: dict[str, float] = field(default_factory=dict)
    transfer: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    runs: int = 0  # fine-tuning runs actually executed (not read from the cache)

    def gain(self, target: str, source: str) -> float:
        return self.transfer[target][source] - self.baseline[target]


class TransferLab:
    """Fine-tunes (and caches) the runs the ground truth needs; keeps source models for TaskEmb."""

    def __init__(
        self, settings: FinetuneSettings, cache_dir: str | Path, log: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda message: None)
        self.models: dict[str, nn.Module] = {}  # task -> model fine-tuned from the pretrained tower
        self.seconds = 0.0
        self.runs = 0
        self._start: nn.Module | None = None

    def pretrained(self) -> nn.Module:
        """The pretrained tower (+ checkpoint pooler) wrapped so fine-tuning functions can start from it."""
        if self._start is None:
            folder = Path(self.settings.encoder)
            _, tower, _ = load_hf_bert(folder, num_layers=self.settings.num_layers)
            start = TextClassifier(tower, load_tokenizer(folder), 1)
            pooler = {
                k.split("pooler.dense.")[-1]: v for k, v in read_hf_state_dict(folder).items() if "pooler.dense." in k
            }
            if len(pooler) == 2:
                start.pooler.load_state_dict(pooler)
            self._start = start
        return self._start

    def _finetune(self, init: nn.Module, task: TaskRef, as_target: bool = False) -> tuple[nn.Module, float, float]:
        """-> (model, 0–1 score, seconds); ``as_target`` applies the limited-target training budget."""
        s = self.settings
        limit = s.target_train_examples if as_target and s.target_train_examples is not None else s.max_train_examples
        common = dict(steps=s.steps, batch_size=s.batch_size, lr=s.lr, max_length=s.max_length, seed=s.seed)
        common |= dict(max_train_examples=limit, max_dev_examples=s.max_dev_examples)
        if task.kind == "classification":
            result: Any = finetune_text_classifier(init, task.path, TextFinetuneConfig(**common))
            score = max(0.0, result.score)
        else:
            result = finetune_qa(init, task.path, QAFinetuneConfig(doc_stride=s.doc_stride, **common))
            score = result.score / 100.0
        self.seconds += result.seconds
        self.runs += 1
        return result.model, score, result.seconds

    def _cached(self, key: str) -> float | None:
        path = self.cache_dir / f"{key}.json"
        return json.loads(path.read_text(encoding="utf-8"))["score"] if path.is_file() else None

    def _store(self, key: str, record: dict[str, Any]) -> None:
        atomic_write_text(self.cache_dir / f"{key}.json", json.dumps(record, indent=1) + "\n")

    def source_model(self, task: TaskRef) -> nn.Module:
        """``task`` fine-tuned from the pretrained tower (trained now unless already in memory)."""
        if task.name not in self.models:
            model, score, seconds = self._finetune(self.pretrained(), task)
            self.models[task.name] = model
            key = run_key(self.settings, task)
            self._store(key, {"tasks": [task.name], "score": score, "seconds": seconds})
        return self.models[task.name]

    def baseline(self, task: TaskRef) -> float:
        """Target-only score: the source run itself, or a separate limited-data run in full -> limited."""
        if self.settings.target_train_examples is not None:
            key = run_key(self.settings, task) + "-target"
            score = self._cached(key)
            if score is None:
                _, score, seconds = self._finetune(self.pretrained(), task, as_target=True)
                self._store(key, {"tasks": [task.name], "score": score, "seconds": seconds, "target_only": True})
            return score
        score = self._cached(run_key(self.settings, task))
        if score is None:
            self.source_model(task)
            score = self._cached(run_key(self.settings, task))
        assert score is not None
        return score

    def transfer(self, source: TaskRef, target: TaskRef) -> float:
        key = run_key(self.settings, source, target)
        score = self._cached(key)
        if score is None:
            _, score, seconds = self._finetune(self.source_model(source), target, as_target=True)
            self._store(key, {"tasks": [source.name, target.name], "score": score, "seconds": seconds})
            self.log(f"  transfer {source.name} -> {target.name}: {score:.3f} ({seconds:.1f}s)")
        return score


def compute_ground_truth(tasks: list[TaskRef], lab: TransferLab) -> GroundTruth:
    """All in-class (source, target) transfers and every target-only baseline."""
    start_seconds, start_runs = lab.seconds, lab.runs
    truth = GroundTruth()
    for target in tasks:
        truth.baseline[target.name] = lab.baseline(target)
        truth.transfer[target.name] = {
            source.name: lab.transfer(source, target)
            for source in tasks
            if source.kind == target.kind and source.name != target.name
        }
    truth.seconds = lab.seconds - start_seconds
    truth.runs = lab.runs - start_runs
    return truth


__all__ = ["FinetuneSettings", "GroundTruth", "TaskRef", "TransferLab", "compute_ground_truth", "run_key"]

"""Loyalty and robustness columns of ``grainvl bench`` (``--teacher LABEL``; docs/benchmark.md, docs/loyalty.md).

Each classification-style task exposes a *text-side set* (:class:`TextSideSet`): a fixed list of the
first ``N`` examples of a split as ``(image key, text)`` pairs, their gold class, and a
``predict_proba`` over them (:class:`~grainvl.compress.attack.ImageTextClassifier`, softmax at
temperature 1). How the class probabilities are formed, per task:

* ``nlvr2``: softmax of the two-way NLVR head's logits (``NLVRModule.logits``) over (false, true);
  gold = the record's label.
* ``vqa``: softmax over the task's closed answer list of the classifier head's logits, or, for the
  generative decoder head, of every listed answer's full log-likelihood (:func:`vqa_logits_fn`; the
  arg-max is the answer ranking picks when ``k_test`` covers the list); gold = the most frequent
  annotator answer's index (-1 when it is not in the list: never counted correct).
* ``retrieval``: image-text matching as a binary decision: softmax of the ITM head's two logits
  (no match, match) on alternating positive pairs (an image and one of its captions, gold 1) and
  negative pairs (the image and a caption of the next gallery item, gold 0). ITC similarities are a
  ranking score without a probability per pair, so loyalty uses the ITM re-ranking head.

Every model of a bench run writes its probabilities on the ID split to ``OUT/loyalty/<model>/<task>.npz``
(worker side); the parent then compares each model with the teacher's file (:func:`loyalty_rows`):
label loyalty = share of examples with the same arg-max, probability loyalty = 1 − √JSD (base 2).
Robustness (:func:`attack_metrics`) runs the TextFooler-style
:class:`~grainvl.compress.attack.WordSubstitutionAttack` on the text side of the first ``M`` examples.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grainvl.compress.attack import (
    AttackConfig,
    ImageTextClassifier,
    WordSubstitutionAttack,
    itm_logits_fn,
    vqa_logits_fn,
)
from grainvl.compress.loyalty import loyalty_from_probs
from grainvl.utils.fileio import atomic_write_bytes

LOYALTY_METRICS = ("label_loyalty", "probability_loyalty")
ROBUSTNESS_METRICS = ("attack_success_rate", "acc_under_attack")
LOYALTY_DIR = "loyalty"


@dataclass
class TextSideSet:
    """``inputs`` ``(key, text)`` with gold ``labels`` (N,), scored by ``classifier.predict_proba`` -> (N, C)."""

    classifier: Any  # has predict_proba(Sequence[(key, text)]) -> np.ndarray (N, C)
    inputs: list[tuple[Any, str]]
    labels: list[int]


def _on_device(logits_fn: Callable[..., Any], module: Any) -> Callable[..., Any]:
    """``logits_fn`` with its CPU inputs moved to the module's device and the logits brought back."""
    device = next(module.parameters()).device

    def call(images: Any, ids: Any, atts: Any) -> Any:
        return logits_fn(images.to(device), ids.to(device), atts.to(device)).float().cpu()

    return call


def task_text_side(task: Any, module: Any, tokenizer: Any, world: Path, split: str, limit: int) -> TextSideSet | None:
    """The text-side set of a real task module (nlvr2, vqa, retrieval), or None for other tasks."""

    name = getattr(task, "name", "")
    max_length = int(module.model.config.max_tokens)
    images: dict[Any, Any] = {}
    inputs: list[tuple[Any, str]] = []
    labels: list[int] = []
    if name == "nlvr2":
        data = task.eval_data(module, tokenizer, world, split)
        for i in range(min(limit, len(data))):
            images[i] = data.sample(i, 0)["image"]  # (2, 3, R, R): left and right picture
            inputs.append((i, str(data.records[i]["sentence"])))
            labels.append(int(data.labels[i]))
        logits_fn = module.logits
    elif name == "vqa":
        data = task._dataset(module, tokenizer, world, split, False)
        for i in range(min(limit, len(data))):
            sample = data.sample(i, 0)
            images[i] = sample["image"]  # (3, R, R)
            inputs.append((i, sample["question"]))
            answers = data.records[i].get("answer")
            gold = _most_frequent(answers)
            labels.append(module.answer_index.get(gold, -1) if gold is not None else -1)
        logits_fn = vqa_logits_fn(module)
    elif name == "retrieval":
        data = task.eval_set(module, tokenizer, world, split).data
        n_items = len(data.image_text_index)
        for j in range(min(limit, 2 * n_items)):
            item, positive = j // 2, j % 2 == 0
            owner = item if positive or n_items == 1 else (item + 1) % n_items
            caption = data.image_text_index[owner][0]
            images.setdefault(item, data.images[item])
            inputs.append((item, data.captions[caption]))
            labels.append(1 if owner == item else 0)
        logits_fn = itm_logits_fn(module.model)
    else:
        return None
    if not inputs:
        return None
    classifier = ImageTextClassifier(_on_device(logits_fn, module), images, tokenizer, max_length=max_length)
    return TextSideSet(classifier, inputs, labels)


def _most_frequent(answers: Any) -> str | None:
    if answers is None:
        return None
    if isinstance(answers, str):
        return answers
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return max(counts, key=lambda a: counts[a]) if counts else None  # first seen wins ties


# ---------------------------------------------------------------------------------------------- worker side
def save_probabilities(path: Path, text_side: TextSideSet) -> np.ndarray:
    """Score the set and write ``probs`` (N, C), ``labels`` (N,) and the inputs (to check both sides match)."""

    probs = np.asarray(text_side.classifier.predict_proba(text_side.inputs), dtype=np.float64)

    buffer = io.BytesIO()
    np.savez(
        buffer,
        probs=probs,
        labels=np.asarray(text_side.labels, dtype=np.int64),
        inputs=np.asarray([json.dumps([str(k), t]) for k, t in text_side.inputs]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return probs


def attack_metrics(text_side: TextSideSet, examples: int, use_similarity: bool = True) -> dict[str, float]:
    """Attack success rate and accuracy under attack (both %) on the first ``examples`` of the set."""

    n = min(examples, len(text_side.inputs))
    attack = WordSubstitutionAttack(text_side.classifier, cfg=AttackConfig(use_similarity=use_similarity))
    summary, _ = attack.run(text_side.inputs[:n], text_side.labels[:n])
    return {
        "attack_success_rate": 100.0 * summary.attack_success_rate,
        "acc_under_attack": 100.0 * summary.accuracy_under_attack,
        "acc_before_attack": 100.0 * summary.original_accuracy,
        "attack_examples": n,
    }


# ---------------------------------------------------------------------------------------------- parent side
def probability_file(out: Path, slug: str, task: str) -> Path:
    return out / LOYALTY_DIR / slug / f"{task}.npz"


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def loyalty_rows(
    rows: Sequence[dict[str, Any]], out: Path, teacher: str, slug: Callable[[str], str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """(loyalty rows for every model and task with probabilities next to the teacher's, warnings).

    Each row copies the model's ID primary row of the task (its cost columns) and sets ``metric``,
    ``value``, ``primary = False``, ``teacher`` and ``loyalty_examples``. The teacher compares with
    itself (both loyalties 1).
    """

    anchors: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if row.get("status") == "failed" or row.get("split") != "id" or row.get("metric") in LOYALTY_METRICS:
            continue
        key = (row["model"], row["task"])
        if key not in anchors or (row.get("primary") and not anchors[key].get("primary")):
            anchors[key] = row
    out_rows, warnings = [], []
    for (model, task), anchor in anchors.items():
        mine, theirs = probability_file(out, slug(model), task), probability_file(out, slug(teacher), task)
        if not mine.is_file() or not theirs.is_file():
            continue
        student, reference = _load(mine), _load(theirs)
        if student["inputs"].tolist() != reference["inputs"].tolist():
            warnings.append(f"{model} / {task}: examples differ from the teacher's; no loyalty computed")
            continue
        report = loyalty_from_probs(reference["probs"], student["probs"])
        values = {"label_loyalty": report.label_loyalty, "probability_loyalty": report.probability_loyalty}
        for metric, value in values.items():
            out_rows.append(
                {
                    **anchor,
                    "metric": metric,
                    "value": float(value),
                    "primary": False,
                    "teacher": teacher,
                    "loyalty_examples": report.examples,
                }
            )
    return out_rows, warnings


__all__ = [
    "LOYALTY_DIR",
    "LOYALTY_METRICS",
    "ROBUSTNESS_METRICS",
    "TextSideSet",
    "attack_metrics",
    "loyalty_rows",
    "probability_file",
    "save_probabilities",
    "task_text_side",
]

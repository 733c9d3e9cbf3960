"""Accuracy and F1 for classification-style tasks (NLVR2, video QA, XVNLI).

Percentages (0-100) like every other metric of the toolkit. NLVR2's official number is plain
accuracy over all pairs (X-VLM ``NLVR.py``: ``(targets == argmax).sum() / n`` averaged over batches
weighted by batch size, i.e. correct / total).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def _check_lengths(predictions: Sequence, labels: Sequence) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no labels to score")


def accuracy(predictions: Sequence[Hashable], labels: Sequence[Hashable]) -> float:
    """Percentage of positions where ``predictions[i] == labels[i]``."""
    _check_lengths(predictions, labels)
    return 100.0 * sum(1 for p, y in zip(predictions, labels) if p == y) / len(labels)


def f1_score(predictions: Sequence[Hashable], labels: Sequence[Hashable], positive: Hashable = True) -> float:
    """Binary F1 (percent) of class ``positive``; 0 when it is never predicted nor present
    (scikit-learn's ``zero_division=0``)."""
    _check_lengths(predictions, labels)
    tp = sum(1 for p, y in zip(predictions, labels) if p == positive and y == positive)
    fp = sum(1 for p, y in zip(predictions, labels) if p == positive and y != positive)
    fn = sum(1 for p, y in zip(predictions, labels) if p != positive and y == positive)
    return 0.0 if tp == 0 else 100.0 * 2 * tp / (2 * tp + fp + fn)


def macro_f1(predictions: Sequence[Hashable], labels: Sequence[Hashable]) -> float:
    """Unweighted mean of the per-class F1 over the classes present in ``labels`` or ``predictions``
    (scikit-learn ``f1_score(average="macro", zero_division=0)``)."""
    _check_lengths(predictions, labels)
    classes = sorted(set(labels) | set(predictions), key=repr)
    return sum(f1_score(predictions, labels, positive=c) for c in classes) / len(classes)

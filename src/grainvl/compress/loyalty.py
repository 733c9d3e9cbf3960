"""Loyalty of a compressed model to its teacher (Xu et al., "Beyond Preserved Accuracy", arXiv 2109.03228).

Accuracy alone hides *which* examples a compressed model gets right: a student can match the
teacher's accuracy while disagreeing with it on many inputs. The paper measures agreement directly:

* **label loyalty** ``L_l``: the share of examples on which the student predicts the teacher's
  label, i.e. accuracy with the teacher's predictions as ground truth (the official recipe is
  ``sklearn.metrics.accuracy_score(teacher_labels, student_labels)``);
* **probability loyalty** ``L_p = 1 − sqrt(D_JS(P_t ‖ P_s))``, averaged over examples, where
  ``D_JS(P‖Q) = ½ KL(P‖M) + ½ KL(Q‖M)`` and ``M = ½(P + Q)``. With base-2 logarithms ``D_JS`` lies
  in [0, 1], so ``L_p`` does too: 1 for identical distributions, 0 for disjoint supports.

The square root of the JS divergence is the JS *distance* (what ``scipy.spatial.distance.jensenshannon``
returns); taking a second square root of scipy's value, as one third-party repository does, is a bug
(compression.md §B.1). ``base`` is a parameter and is recorded in every report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

DEFAULT_BASE = 2.0  # [0, 1]-valued L_p; scipy's default base e would cap the JS distance at sqrt(ln 2) ≈ 0.833


class ProbabilisticClassifier(Protocol):
    """Anything with ``predict_proba(inputs) -> (N, C)`` class probabilities (e.g. ``TextClassifier``)."""

    def predict_proba(self, inputs: Sequence[Any]) -> np.ndarray: ...


def _as_probs(probs: Any, name: str) -> np.ndarray:
    array = np.asarray(probs, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"{name} must be (N, C) class probabilities with C >= 2, got shape {array.shape}")
    if (array < -1e-9).any() or not np.allclose(array.sum(-1), 1.0, atol=1e-4):
        raise ValueError(f"{name} rows must be probability distributions (non-negative, summing to 1)")
    return np.clip(array, 0.0, None)


def _labels(values: Any, name: str) -> np.ndarray:
    """(N,) integer labels, or (N, C) probabilities -> their argmax."""
    array = np.asarray(values)
    if array.ndim == 2:
        return array.argmax(-1)
    if array.ndim != 1:
        raise ValueError(f"{name} must be (N,) labels or (N, C) probabilities, got shape {array.shape}")
    return array


def label_loyalty(teacher: Any, student: Any) -> float:
    """Share of examples where the student's label equals the teacher's.

    ``teacher`` / ``student``: (N,) predicted labels or (N, C) probabilities (argmax taken).
    """
    t, s = _labels(teacher, "teacher"), _labels(student, "student")
    if t.shape != s.shape or t.size == 0:
        raise ValueError(f"need equally many (>= 1) teacher and student predictions, got {t.shape} and {s.shape}")
    return float((t == s).mean())


def _entropy_terms(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Σ_c p log(p / m) per row (natural log), with 0·log 0 = 0; m > 0 wherever p > 0 since m = (p+q)/2."""
    ratio = np.divide(p, m, out=np.ones_like(p), where=p > 0)
    return (p * np.log(ratio)).sum(-1)


def js_divergence(p: Any, q: Any, base: float = DEFAULT_BASE) -> np.ndarray:
    """Per-example Jensen–Shannon divergence (N,) of two (N, C) distributions, logs in ``base``."""
    p, q = _as_probs(p, "p"), _as_probs(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    m = 0.5 * (p + q)  # (N, C)
    divergence = 0.5 * _entropy_terms(p, m) + 0.5 * _entropy_terms(q, m)  # nats
    return np.clip(divergence / np.log(base), 0.0, None)  # rounding can leave -1e-17


def probability_loyalty(teacher_probs: Any, student_probs: Any, base: float = DEFAULT_BASE) -> float:
    """``mean_i [1 − sqrt(D_JS(P_t,i ‖ P_s,i))]`` over examples; in [0, 1] for ``base`` 2.

    Equal to ``1 − mean(scipy.spatial.distance.jensenshannon(P_t, P_s, base=base, axis=1))``.
    """
    distance = np.sqrt(js_divergence(teacher_probs, student_probs, base))  # (N,) JS distances
    if distance.size == 0:
        raise ValueError("probability_loyalty: no examples")
    return float(1.0 - distance.mean())


@dataclass
class LoyaltyReport:
    """Loyalty of a student to its teacher on one evaluation set (accuracies only when labels are given)."""

    label_loyalty: float
    probability_loyalty: float
    examples: int
    js_base: float = DEFAULT_BASE
    teacher_accuracy: float | None = None
    student_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def loyalty_from_probs(
    teacher_probs: Any, student_probs: Any, labels: Any = None, base: float = DEFAULT_BASE
) -> LoyaltyReport:
    """Both loyalties (and accuracies when gold ``labels`` (N,) are given) from (N, C) probabilities."""
    t, s = _as_probs(teacher_probs, "teacher_probs"), _as_probs(student_probs, "student_probs")
    report = LoyaltyReport(label_loyalty(t, s), probability_loyalty(t, s, base), len(t), base)
    if labels is not None:
        gold = np.asarray(labels).astype(int)
        if gold.shape != (len(t),):
            raise ValueError(f"labels must be ({len(t)},), got {gold.shape}")
        report.teacher_accuracy = float((t.argmax(-1) == gold).mean())
        report.student_accuracy = float((s.argmax(-1) == gold).mean())
    return report


def evaluate_loyalty(
    teacher: ProbabilisticClassifier,
    student: ProbabilisticClassifier,
    inputs: Sequence[Any],
    labels: Any = None,
    base: float = DEFAULT_BASE,
) -> LoyaltyReport:
    """Run both models' ``predict_proba`` on the same ``inputs`` (softmax at temperature 1) and compare."""
    return loyalty_from_probs(teacher.predict_proba(inputs), student.predict_proba(inputs), labels, base)


__all__ = [
    "DEFAULT_BASE",
    "LoyaltyReport",
    "ProbabilisticClassifier",
    "evaluate_loyalty",
    "js_divergence",
    "label_loyalty",
    "loyalty_from_probs",
    "probability_loyalty",
]

"""Loyalty metrics (arXiv 2109.03228): hand cases and parity with scipy's Jensen–Shannon distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from grainvl.compress.loyalty import (
    evaluate_loyalty,
    js_divergence,
    label_loyalty,
    loyalty_from_probs,
    probability_loyalty,
)


def test_identical_distributions_are_fully_loyal() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert probability_loyalty(p, p) == pytest.approx(1.0)
    assert label_loyalty(p, p) == 1.0


def test_disjoint_one_hot_distributions_have_zero_probability_loyalty() -> None:
    teacher = np.array([[1.0, 0.0], [0.0, 1.0]])
    student = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert js_divergence(teacher, student) == pytest.approx([1.0, 1.0])  # base 2: the maximum
    assert probability_loyalty(teacher, student) == pytest.approx(0.0, abs=1e-12)
    assert label_loyalty(teacher, student) == 0.0


def test_hand_computed_jsd() -> None:
    # P = (1, 0), Q = (1/2, 1/2), M = (3/4, 1/4):
    # KL(P‖M) = log2(4/3); KL(Q‖M) = ½ log2(2/3) + ½ log2(2); JSD = ½ (KL(P‖M) + KL(Q‖M)).
    jsd = 0.5 * (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5)
    assert jsd == pytest.approx(0.3112781, abs=1e-7)
    got = js_divergence([[1.0, 0.0]], [[0.5, 0.5]])
    assert got == pytest.approx([jsd])
    assert probability_loyalty([[1.0, 0.0]], [[0.5, 0.5]]) == pytest.approx(1 - math.sqrt(jsd))


def test_matches_scipy_distance_without_a_second_square_root() -> None:
    rng = np.random.default_rng(0)
    teacher = rng.dirichlet(np.ones(4), size=50)
    student = rng.dirichlet(np.ones(4), size=50)
    reference = 1.0 - jensenshannon(teacher, student, base=2, axis=1).mean()
    assert probability_loyalty(teacher, student) == pytest.approx(reference, abs=1e-10)
    # base e gives a different (larger) loyalty: the base is part of the metric.
    reference_e = 1.0 - jensenshannon(teacher, student, axis=1).mean()
    assert probability_loyalty(teacher, student, base=math.e) == pytest.approx(reference_e, abs=1e-10)
    assert 0.0 <= probability_loyalty(teacher, student) <= 1.0


def test_label_loyalty_is_agreement_not_accuracy() -> None:
    teacher = np.array([0, 1, 1, 0])
    student = np.array([0, 1, 0, 1])
    assert label_loyalty(teacher, student) == 0.5
    report = loyalty_from_probs(np.eye(2)[teacher], np.eye(2)[student], labels=[1, 1, 0, 1])
    # student is more accurate than the teacher here, yet only half loyal
    assert (report.teacher_accuracy, report.student_accuracy, report.label_loyalty) == (0.25, 0.75, 0.5)
    assert report.js_base == 2.0 and report.examples == 4


class _Fixed:
    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def predict_proba(self, inputs: list[str]) -> np.ndarray:
        return self.probs[: len(inputs)]


def test_evaluate_loyalty_uses_predict_proba() -> None:
    t = np.array([[0.9, 0.1], [0.2, 0.8]])
    s = np.array([[0.6, 0.4], [0.7, 0.3]])
    report = evaluate_loyalty(_Fixed(t), _Fixed(s), ["a", "b"])
    assert report.label_loyalty == 0.5
    assert report.probability_loyalty == pytest.approx(1 - jensenshannon(t, s, base=2, axis=1).mean())


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="probability distributions"):
        probability_loyalty([[0.5, 0.6]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="same shape"):
        js_divergence([[0.5, 0.5]], [[0.5, 0.5], [1.0, 0.0]])
    with pytest.raises(ValueError, match="equally many"):
        label_loyalty([0, 1], [0])

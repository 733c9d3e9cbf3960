"""NDCG / rank of the top source / regret@k: parity with scikit-learn and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from grainvl.transfer.ranking import evaluate_rankings, ndcg, random_baseline, rank_of_top, regret_at_k


@pytest.mark.parametrize("seed", range(20))
def test_ndcg_matches_sklearn_including_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    relevance, predicted = rng.random(n), rng.random(n)
    if seed % 3 == 0:
        predicted = np.round(predicted, 1)  # ties, which sklearn averages
    assert ndcg(predicted, relevance, "linear") == pytest.approx(ndcg_score([relevance], [predicted]), abs=1e-12)
    # exponential gain == sklearn on the transformed relevance 2^rel - 1
    assert ndcg(predicted, relevance, "exp") == pytest.approx(ndcg_score([2**relevance - 1], [predicted]), abs=1e-12)


def test_ndcg_hand_case() -> None:
    relevance = [0.9, 0.5, 0.0]
    predicted = [0.1, 0.9, 0.5]  # order: 2nd, 3rd, 1st
    gains = [2**0.5 - 1, 0.0, 2**0.9 - 1]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = (2**0.9 - 1) / 1 + (2**0.5 - 1) / math.log2(3)
    assert ndcg(predicted, relevance) == pytest.approx(dcg / ideal)
    assert ndcg(relevance, relevance) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fraction"):
        ndcg([1, 2], [50.0, 80.0])


def test_rank_and_regret_hand_cases() -> None:
    gold = [0.70, 0.80, 0.60, 0.75]
    assert rank_of_top([0.1, 0.9, 0.2, 0.3], gold) == 1  # picks the best source
    assert rank_of_top([0.9, 0.1, 0.2, 0.3], gold) == 3  # 0.70 is third best
    assert regret_at_k([0.9, 0.1, 0.2, 0.3], gold, k=1) == pytest.approx(100 * (0.80 - 0.70) / 0.80)
    assert regret_at_k([0.9, 0.1, 0.2, 0.3], gold, k=2) == pytest.approx(100 * (0.80 - 0.75) / 0.80)
    assert regret_at_k([0.9, 0.1, 0.2, 0.3], gold, k=4) == 0.0


def test_evaluate_rankings_excludes_target_and_perfect_is_best() -> None:
    gold = {"a": {"b": 0.8, "c": 0.6}, "b": {"a": 0.5, "c": 0.7}}
    perfect = {"a": {"a": 1.0, "b": 0.9, "c": 0.1}, "b": {"a": 0.2, "c": 0.3}}
    rows = evaluate_rankings(perfect, gold)
    assert rows["mean"] == {"ndcg": pytest.approx(100.0), "top1_rank": 1.0, "regret@3": 0.0}
    worst = {"a": {"b": 0.1, "c": 0.9}, "b": {"a": 0.9, "c": 0.1}}
    assert evaluate_rankings(worst, gold)["mean"]["top1_rank"] == 2.0
    rand = random_baseline(gold, trials=100)
    assert evaluate_rankings(worst, gold)["mean"]["ndcg"] < rand["ndcg"] < 100.0

"""Ranking metrics for intermediate-task selection (Vu et al. 2020; Poth et al. 2021; Lin et al. 2024).

For one target, candidate sources are ranked by predicted similarity (descending) and compared with
the gold ranking by real transfer score:

* NDCG = DCG(predicted order) / DCG(gold order), DCG = Σ_i gain(rel_i) / log2(i + 1) over the whole
  source list; ``gain="exp"`` is ``2^rel − 1`` (Vu et al.), ``"linear"`` is ``rel`` (scikit-learn's
  ``ndcg_score``). Relevance must be a 0–1 fraction (an accuracy, or F1/100): with 0–100 scores the
  exponential gain explodes. Tied predicted scores are averaged over their permutations, as
  scikit-learn does, so a constant predictor is not credited with a lucky order.
* average rank of the top-ranked source: position (1 = best) of the predicted #1 in the gold order.
* regret@k = 100 · (O − M_k) / O, O the best transfer score, M_k the best among the top-k predicted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _gains(relevance: np.ndarray, gain: str) -> np.ndarray:
    if np.any(relevance < 0) or np.any(relevance > 1):
        raise ValueError(f"relevance must lie in [0, 1] (a fraction), got range [{relevance.min()}, {relevance.max()}]")
    if gain == "exp":
        return np.power(2.0, relevance) - 1.0
    if gain == "linear":
        return relevance
    raise ValueError(f"gain must be 'exp' or 'linear', got {gain!r}")


def _dcg(gains: np.ndarray, scores: np.ndarray) -> float:
    """DCG of ordering by ``scores`` descending, ties averaged (scikit-learn's ``_tie_averaged_dcg``)."""
    discount = 1.0 / np.log2(np.arange(len(gains)) + 2.0)  # 1/log2(i+1), i = 1..p
    _, inverse, counts = np.unique(-scores, return_inverse=True, return_counts=True)
    group_gain = np.zeros(len(counts))
    np.add.at(group_gain, inverse, gains)
    ends = np.cumsum(counts)
    cumulative = np.concatenate([[0.0], np.cumsum(discount)])
    group_discount = cumulative[ends] - cumulative[ends - counts]
    return float(np.sum(group_gain / counts * group_discount))


def ndcg(predicted: Sequence[float], relevance: Sequence[float], gain: str = "exp") -> float:
    """NDCG in [0, 1] of ranking sources by ``predicted`` against ``relevance`` (0–1 fractions)."""
    pred, rel = np.asarray(predicted, dtype=float), np.asarray(relevance, dtype=float)
    if pred.shape != rel.shape or pred.ndim != 1 or len(pred) == 0:
        raise ValueError(f"predicted and relevance must be equal-length 1-D, got {pred.shape} and {rel.shape}")
    gains = _gains(rel, gain)
    ideal = _dcg(gains, rel)
    return 0.0 if ideal == 0 else _dcg(gains, pred) / ideal


def rank_of_top(predicted: Sequence[float], gold: Sequence[float]) -> int:
    """1-based position in the gold order (descending ``gold``) of the source ``predicted`` puts first.

    Ties in ``gold`` give the best position of the tied group (the chosen source is as good as them).
    """
    pred, gold_arr = np.asarray(predicted, dtype=float), np.asarray(gold, dtype=float)
    chosen = int(np.argmax(pred))
    return int(np.sum(gold_arr > gold_arr[chosen])) + 1


def regret_at_k(predicted: Sequence[float], gold: Sequence[float], k: int = 3) -> float:
    """100·(O − M_k)/O: how much worse the best of the top-k predicted sources is than the best source."""
    pred, gold_arr = np.asarray(predicted, dtype=float), np.asarray(gold, dtype=float)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    best = float(gold_arr.max())
    top_k = np.argsort(-pred, kind="stable")[:k]
    found = float(gold_arr[top_k].max())
    return 0.0 if best == 0 else 100.0 * (best - found) / best


def rank_sources(similarity: dict[str, float]) -> list[tuple[str, float]]:
    """Sources sorted by descending similarity (name breaks ties, for a stable report)."""
    return sorted(similarity.items(), key=lambda kv: (-kv[1], kv[0]))


def evaluate_rankings(
    predicted: dict[str, dict[str, float]], gold: dict[str, dict[str, float]], k: int = 3, gain: str = "exp"
) -> dict[str, dict[str, float]]:
    """Per-target NDCG (×100), rank of the top source and regret@k, plus their ``"mean"`` row.

    ``predicted[target][source]`` = similarity, ``gold[target][source]`` = transfer score as a 0–1
    fraction; each target is scored over the sources present in both (the target itself excluded).
    """
    rows: dict[str, dict[str, float]] = {}
    for target, scores in gold.items():
        sources = sorted(s for s in scores if s != target and s in predicted.get(target, {}))
        if not sources:
            continue
        pred = [predicted[target][s] for s in sources]
        rel = [scores[s] for s in sources]
        rows[target] = {
            "ndcg": 100.0 * ndcg(pred, rel, gain),
            "top1_rank": float(rank_of_top(pred, rel)),
            f"regret@{k}": regret_at_k(pred, rel, k),
        }
    if not rows:
        raise ValueError("no target has both predicted and gold scores for any source")
    keys = next(iter(rows.values())).keys()
    rows["mean"] = {key: float(np.mean([r[key] for r in rows.values()])) for key in keys}
    return rows


def random_baseline(
    gold: dict[str, dict[str, float]], k: int = 3, gain: str = "exp", trials: int = 200, seed: int = 5
) -> dict[str, float]:
    """Expected metrics of a random ranking (mean over ``trials`` shuffles; seed 5 as Lin et al.)."""
    rng = np.random.default_rng(seed)
    totals: dict[str, list[float]] = {}
    for _ in range(trials):
        predicted = {t: {s: float(rng.random()) for s in scores} for t, scores in gold.items()}
        for key, value in evaluate_rankings(predicted, gold, k, gain)["mean"].items():
            totals.setdefault(key, []).append(value)
    return {key: float(np.mean(values)) for key, values in totals.items()}


__all__ = ["evaluate_rankings", "ndcg", "random_baseline", "rank_of_top", "rank_sources", "regret_at_k"]

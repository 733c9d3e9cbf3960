"""Pareto frontier of score against latency (VLUE's "Pareto SOTA", arXiv 2205.15237 §C.4 of our notes).

A model is **Pareto-optimal** when no other model is both faster and better. Dominance is the usual
weak one: model B dominates model A when B's latency ≤ A's, B's score ≥ A's, and at least one of
the two is strict. Consequences for ties, which are deliberate:

* two models with the **same latency** and different scores: the better one dominates the other;
* two models with the **same score** and different latencies: the faster one dominates the other;
* two models **identical in both**: neither dominates the other, both are on the frontier;
* a single model is on its own frontier;
* a point without a score or a latency (a failed run) is never on the frontier and dominates nothing.

Higher scores are better, lower latencies are better. The frontier is computed per task and on the
average over tasks (:func:`average_points`): a model's average score is the mean of its per-task
scores and its average latency the mean of its per-task latencies over all benchmarked tasks; a
model without a result on one of them (a failed run) has no average and is left off that frontier,
so one model's failure never changes the other models' averages.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """One model on the score-latency plane (latency in ms, score higher-is-better)."""

    name: str
    latency: float | None
    score: float | None

    @property
    def valid(self) -> bool:
        return (
            self.latency is not None
            and self.score is not None
            and math.isfinite(self.latency)
            and math.isfinite(self.score)
        )


def dominates(b: Point, a: Point) -> bool:
    """True when ``b`` is at least as fast and at least as good as ``a`` and strictly one of them."""
    if not (a.valid and b.valid):
        return False
    assert a.latency is not None and a.score is not None and b.latency is not None and b.score is not None
    no_worse = b.latency <= a.latency and b.score >= a.score
    strictly = b.latency < a.latency or b.score > a.score
    return no_worse and strictly


def pareto_optimal(points: Iterable[Point]) -> dict[str, bool]:
    """``{name: on the frontier}`` for every point (O(n²): a leaderboard has tens of models, not millions)."""
    pts = list(points)
    names = [p.name for p in pts]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model names in a Pareto comparison: {names}")
    return {a.name: a.valid and not any(dominates(b, a) for b in pts if b is not a) for a in pts}


def frontier(points: Iterable[Point]) -> list[Point]:
    """The Pareto-optimal points sorted by latency (then score, best first): the staircase to draw."""
    pts = list(points)
    optimal = pareto_optimal(pts)
    return sorted((p for p in pts if optimal[p.name]), key=lambda p: (p.latency, -(p.score or 0.0)))


def average_points(per_task: Mapping[str, Iterable[Point]]) -> list[Point]:
    """Per-model mean score and mean latency over the tasks that every model was compared on.

    ``per_task`` maps a task to its points. A task in which no model has a valid point is ignored;
    a model without a valid point in one of the remaining tasks gets an invalid average (``None``)
    so it appears in tables but never on the average frontier.
    """
    by_task = {task: {p.name: p for p in pts} for task, pts in per_task.items()}
    tasks = [t for t, pts in by_task.items() if any(p.valid for p in pts.values())]
    models = sorted({name for pts in by_task.values() for name in pts})
    averages = []
    for name in models:
        mine = [by_task[t].get(name) for t in tasks]
        if not tasks or any(p is None or not p.valid for p in mine):
            averages.append(Point(name, None, None))
            continue
        latencies = [p.latency for p in mine if p is not None and p.latency is not None]
        scores = [p.score for p in mine if p is not None and p.score is not None]
        averages.append(Point(name, sum(latencies) / len(latencies), sum(scores) / len(scores)))
    return averages

"""Pareto frontier on crafted points: dominated points, ties, a single point, invalid points, the average."""

from __future__ import annotations

import itertools
import random

import pytest

from grainvl.bench.pareto import Point, average_points, dominates, frontier, pareto_optimal


def brute_force(points: list[Point]) -> dict[str, bool]:
    """Reference: a point is optimal iff no other point is <= in latency, >= in score and differs in one."""
    result = {}
    for a in points:
        beaten = False
        for b in points:
            if b is a or not (a.valid and b.valid):
                continue
            if b.latency <= a.latency and b.score >= a.score and (b.latency, b.score) != (a.latency, a.score):
                beaten = True
        result[a.name] = a.valid and not beaten
    return result


def test_dominated_points_are_off_the_frontier() -> None:
    points = [Point("fast-bad", 1.0, 50.0), Point("slow-good", 10.0, 80.0), Point("slow-bad", 12.0, 60.0)]
    assert pareto_optimal(points) == {"fast-bad": True, "slow-good": True, "slow-bad": False}
    assert [p.name for p in frontier(points)] == ["fast-bad", "slow-good"]


def test_ties() -> None:
    same_latency = [Point("a", 5.0, 70.0), Point("b", 5.0, 60.0)]
    assert pareto_optimal(same_latency) == {"a": True, "b": False}  # as fast, better: dominates
    same_score = [Point("a", 5.0, 70.0), Point("b", 6.0, 70.0)]
    assert pareto_optimal(same_score) == {"a": True, "b": False}  # as good, faster: dominates
    identical = [Point("a", 5.0, 70.0), Point("b", 5.0, 70.0), Point("c", 9.0, 65.0)]
    assert pareto_optimal(identical) == {"a": True, "b": True, "c": False}  # identical twins both stay
    assert not dominates(identical[0], identical[1]) and not dominates(identical[1], identical[0])


def test_single_point_and_invalid_points() -> None:
    assert pareto_optimal([Point("only", 3.0, 1.0)]) == {"only": True}
    points = [Point("failed", None, None), Point("no-score", 0.1, None), Point("ok", 9.0, 10.0)]
    # A failed run is never optimal and never dominates (it would otherwise win on latency).
    assert pareto_optimal(points) == {"failed": False, "no-score": False, "ok": True}
    assert pareto_optimal([Point("nan", float("nan"), 1.0)]) == {"nan": False}
    assert frontier([]) == []


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        pareto_optimal([Point("a", 1.0, 1.0), Point("a", 2.0, 2.0)])


def test_matches_brute_force_on_random_points_with_ties() -> None:
    rng = random.Random(0)
    for _ in range(50):
        # Few distinct values, so exact ties in latency, score or both are frequent.
        points = [Point(f"m{i}", rng.choice([1.0, 2.0, 3.0]), rng.choice([10.0, 20.0, 30.0])) for i in range(7)]
        assert pareto_optimal(points) == brute_force(points)
        front = frontier(points)
        assert all(x.latency <= y.latency for x, y in itertools.pairwise(front))


def test_average_frontier() -> None:
    per_task = {
        "retrieval": [Point("a", 2.0, 40.0), Point("b", 4.0, 60.0), Point("c", 1.0, 10.0)],
        "vqa": [Point("a", 4.0, 50.0), Point("b", 6.0, 70.0), Point("c", None, None)],  # c failed on vqa
        "broken": [Point("a", None, None), Point("b", None, None), Point("c", None, None)],  # nobody: ignored
    }
    averages = {p.name: p for p in average_points(per_task)}
    assert averages["a"] == Point("a", 3.0, 45.0)
    assert averages["b"] == Point("b", 5.0, 65.0)
    assert not averages["c"].valid  # missing a task: no average rather than a flattering partial one
    assert pareto_optimal(averages.values()) == {"a": True, "b": True, "c": False}
    assert average_points({}) == []

"""benchmarks/bench_compress.py: the VLUE score table and retention it derives from grainvl bench rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_compress.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_compress", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(model: str, scores: dict[str, float], failed: str | None = None) -> list[dict]:
    rows = []
    for task, value in scores.items():
        for split, v in (("id", value), ("ood", value / 2)):
            rows.append({"model": model, "task": task, "split": split, "metric": "m", "value": v, "primary": True})
    if failed:
        rows.append({"model": model, "task": failed, "status": "failed", "error": "boom"})
    return rows


def test_vlue_scores_average_the_primary_id_metrics(bench) -> None:
    teacher = dict(zip(bench.VLUE_TASKS, (80.0, 40.0, 60.0, 10.0, 30.0)))
    student = dict(zip(bench.VLUE_TASKS, (78.0, 39.0, 61.0, 9.0, 29.0)))
    scores = bench.vlue_scores(_rows("teacher", teacher) + _rows("student", student))
    assert scores["teacher"]["avg_id"] == pytest.approx(44.0) and scores["teacher"]["avg_ood"] == pytest.approx(22.0)
    assert scores["student"]["avg_id"] / scores["teacher"]["avg_id"] == pytest.approx(43.2 / 44.0)
    assert scores["student"]["tasks"]["nlvr2"]["id"] == 61.0


def test_a_failed_task_leaves_no_average(bench) -> None:
    partial = dict(zip(bench.VLUE_TASKS[:4], (80.0, 40.0, 60.0, 10.0)))
    scores = bench.vlue_scores(_rows("student", partial, failed="captioning"))
    assert scores["student"]["avg_id"] is None and scores["student"]["failed"] == {"captioning": "boom"}


def test_parse_layers(bench) -> None:
    assert bench.parse_layers("2,1,1") == (2, 1, 1) and bench.parse_layers(None) is None
    with pytest.raises(SystemExit):
        bench.parse_layers("2,1")


def test_teacher_near_chance_is_flagged(bench) -> None:
    # The 400-step from-scratch bench teacher: zero-shot r_mean 11.75 against chance 13.6 -> flagged.
    assert bench.teacher_above_chance(11.75, 13.6) is False
    assert bench.teacher_above_chance(76.3, 10.6) is True
    assert bench.teacher_above_chance(2.0 * 10.0, 10.0) is True  # the boundary counts as above
    assert bench.teacher_above_chance(None, 10.0) is None and bench.teacher_above_chance(50.0, None) is None

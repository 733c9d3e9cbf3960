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


def _run(seed: int, sparsity: float, student: float, teacher: float, budget: float | None) -> dict:
    run = {
        "task": "retrieval", "seed": seed, "sparsity": sparsity, "resolution": None, "metric": "r_mean",
        "teacher": {"id": teacher, "ood": teacher / 2}, "student": {"id": student, "ood": student / 2},
        "params_M": {"teacher": 10.0, "student": 8.0},
        "achieved_sparsity": {"all": sparsity, "text": sparsity}, "learned_sparsity": {"all": sparsity},
        "expected_sparsity": sparsity, "calibration": {},
    }  # fmt: skip
    if budget is not None:
        run["teacher_budget"] = {"id": budget, "ood": budget / 2}
        run["budget_steps"] = {"teacher": 100, "teacher_budget": 200, "student": 200}
    return run


def test_retention_against_the_equal_budget_teacher(bench, capsys) -> None:
    # A CoFi student (teacher's 100 steps + its own 100) beats its 100-step teacher but not one trained 200 steps.
    runs = [_run(0, 0.3, 50.0, 40.0, 55.0), _run(1, 0.3, 44.0, 40.0, 50.0)]
    args = type("A", (), {"min_test_items": 500})()
    latency = {"retrieval": {"teacher": 30.0, "s0.3@same": 20.0}}
    out = bench.summarise_task_mode(runs, latency, {}, {"retrieval": {"test": 500, "test_ood": 500}}, {}, args, 1.0)
    (entry,) = out["curve"]
    assert entry["retention_id"][0] == pytest.approx((50 / 40 + 44 / 40) / 2)
    assert entry["retention_id_equal_budget"][0] == pytest.approx((50 / 55 + 44 / 50) / 2)
    assert entry["retention_ood_equal_budget"][0] == pytest.approx((25 / 27.5 + 22 / 25) / 2)
    assert entry["speedup"] == pytest.approx(1.5)
    text = capsys.readouterr().out
    assert "(equal budget): none" in text and "(vs start): s0.3@same 1.50x" in text
    # Runs recorded before the equal-budget teacher existed fall back to the teacher they started from.
    old = bench.seed_retention([_run(0, 0.3, 30.0, 40.0, None)], "teacher_budget", "id")
    assert old == [pytest.approx(0.75)]


def _point(speedup: float | None, mean: float, std: float = 0.0) -> dict:
    return {"point": f"p{speedup}", "speedup": speedup, "r": (mean, std)}


def test_curve_crossing_every_branch(bench) -> None:
    cross = bench.curve_crossing
    # Interpolated on the segment from the last point above the bar to the next one below it.
    curve = [_point(1.2, 1.05), _point(2.0, 0.99), _point(3.0, 0.94)]
    at = 2.0 + (0.99 - 0.984) / (0.99 - 0.94) * 1.0
    assert cross(curve, "r") == {"speedup": pytest.approx(at), "kind": "interpolated"}
    # Order is by speed-up, not by the order the points were given in.
    assert cross(curve[::-1], "r")["speedup"] == pytest.approx(at)
    # Every point above: the fastest measured is a lower bound.
    assert cross([_point(1.5, 1.1), _point(3.2, 0.99)], "r") == {"speedup": 3.2, "kind": "beyond"}
    # No point reaches the bar; a point without a latency is left out.
    assert cross([_point(1.5, 0.9), _point(2.0, 0.8), _point(None, 1.2)], "r") == {"speedup": None, "kind": "none"}
    # Exactly at the bar counts as reached; the segment after it starts there.
    assert cross([_point(1.5, 0.984), _point(2.0, 0.9)], "r") == {"speedup": 1.5, "kind": "interpolated"}
    # A dip below and back above: the last stretch above counts (as the fastest-point rule does).
    dip = [_point(1.2, 1.0), _point(1.6, 0.9), _point(2.4, 1.0), _point(3.0, 0.9)]
    assert cross(dip, "r")["speedup"] == pytest.approx(2.4 + 0.016 / 0.1 * 0.6)
    # Equal speed-ups, one above and one below: the measured point itself.
    assert cross([_point(2.0, 1.0), _point(2.0, 0.9)], "r") == {"speedup": 2.0, "kind": "point"}
    # The seed spread: mean - std / mean + std curves bracket the mean's crossing.
    spread = [_point(1.2, 1.0, 0.01), _point(2.0, 0.98, 0.02), _point(3.0, 0.9, 0.05)]
    low, mean, high = (cross(spread, "r", band)["speedup"] for band in ("low", "mean", "high"))
    assert low < mean < high and mean == pytest.approx(1.2 + 0.016 / 0.02 * 0.8)
    assert "crosses it at" in bench.describe_crossing({"mean": cross(spread, "r"), "low": cross(spread, "r", "low"),
                                                       "high": cross(spread, "r", "high")})  # fmt: skip


def test_summarise_reprints_a_recorded_run(bench, tmp_path: Path, capsys) -> None:
    import json

    runs = [_run(0, 0.3, 50.0, 40.0, 52.0), _run(1, 0.3, 44.0, 40.0, 43.0)]
    args = type("A", (), {"min_test_items": 500})()
    items = {"retrieval": {"test": 100, "test_ood": 500}}
    latency = {"retrieval": {"teacher": 30.0, "s0.3@same": 20.0}}
    first = bench.summarise_task_mode(runs, latency, {}, items, bench.small_splits(items, 500), args, 1.0)
    path = tmp_path / "bench_compress.json"
    path.write_text(json.dumps(first), encoding="utf-8")
    capsys.readouterr()
    again = bench.summarise_json(path, 500)
    assert json.loads(json.dumps(again["curve"])) == json.loads(json.dumps(first["curve"]))
    assert again["flags"] == first["flags"]
    assert any("test splits of" in flag for flag in again["flags"])
    assert again["crossing_98_4"]["retention_id"]["mean"] == {"speedup": 1.5, "kind": "beyond"}
    assert "every point is above it" in capsys.readouterr().out
    bench.plot_curve(again["curve"], "test", tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_task_mode_end_to_end_with_the_equal_budget_teacher(
    bench, vlue_world: Path, tmp_path: Path, monkeypatch
) -> None:
    """Stage 2 from the task teacher on xvlm-tiny, 2 seeds, 3 + 3 steps: a 6-step equal-budget teacher per seed,
    both retentions per point, every run recorded in OUT/bench_compress.json."""
    import json
    import sys

    out = tmp_path / "b"
    argv = ["bench_compress.py", "--teacher", "xvlm-tiny", "--tasks", "retrieval", "--seeds", "0,1", "--student-init",
            "task_teacher", "--points", "0.2", "--steps", "3", "--finetune-steps", "3", "--world", str(vlue_world),
            "--min-test-items", "500", "--repeats", "2", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bench.main()
    result = json.loads((out / "bench_compress.json").read_text(encoding="utf-8"))
    assert [r["seed"] for r in result["runs"]] == [0, 1]
    for run in result["runs"]:
        assert run["budget_steps"] == {"teacher": 3, "teacher_budget": 6, "student": 6}
        assert (out / "teachers_budget" / "retrieval" / f"seed{run['seed']}" / "task.json").is_file()
        assert set(run["teacher_budget"]) == {"id", "ood"}
    (entry,) = result["curve"]
    assert len(entry["retention_id_equal_budget"]) == 2 and entry["speedup"] > 0
    assert any("test splits of" in flag for flag in result["flags"])  # 6-image splits are under the minimum

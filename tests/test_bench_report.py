"""Report files from a crafted results.jsonl: CSV columns, Markdown rows, Pareto marks, valid PNGs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from grainvl.bench.report import format_value, read_results, task_table, write_report
from grainvl.bench.results import RESULT_FIELDS
from grainvl.errors import DataError

# (model, task, ID score, OOD score, latency ms); "small" is slower and worse than "base" on retrieval.
CRAFTED = [
    ("tiny", "retrieval", 40.0, 30.0, 2.0),
    ("base", "retrieval", 60.0, 45.0, 5.0),
    ("small", "retrieval", 50.0, 35.0, 6.0),
    ("tiny", "nlvr2", 55.0, 52.0, 1.0),
    ("base", "nlvr2", 70.0, 60.0, 4.0),
    ("small", "nlvr2", 72.0, 50.0, 3.0),
]
PRIMARY = {"retrieval": "r_mean", "nlvr2": "acc"}


def crafted_rows() -> list[dict]:
    rows = []
    for model, task, id_score, ood_score, latency in CRAFTED:
        cost = {"params_M": 1.5, "gflops": 0.2, "latency_ms": latency, "latency_p90_ms": latency * 1.2}
        cost |= {"throughput": 100.0 / latency, "peak_mem_MB": 50.0, "hardware": "cpu", "torch": "2.x"}
        cost |= {"commit": "abc", "seed": 0, "status": "ok", "precision": "fp32", "loyalty": 0.9}
        cost |= {"energy_method": "codecarbon 3.3.2 offline (FRA): CPU estimated"}
        for split, score in (("id", id_score), ("ood", ood_score)):
            energy = {"energy_kWh": 1e-6, "co2_g": 5e-5}
            rows.append({"model": model, "task": task, "dataset": "world", "split": split, **cost, **energy,
                         "metric": PRIMARY[task], "value": score, "primary": True})  # fmt: skip
            rows.append({"model": model, "task": task, "dataset": "world", "split": split, **cost, **energy,
                         "metric": "other", "value": score / 2, "primary": False})  # fmt: skip
        rows.append({"model": model, "task": task, "split": "ood", "metric": f"{PRIMARY[task]}_diff",
                     "value": ood_score - id_score, **cost})  # fmt: skip
    rows.append({"model": "broken", "task": "retrieval", "status": "failed", "error": "worker killed by SIGKILL"})
    rows.append({"model": "broken", "task": "nlvr2", "status": "failed", "error": "worker killed by SIGKILL"})
    return rows


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in crafted_rows()) + "\n", encoding="utf-8")
    return path


def test_task_table_scores_gap_pareto_and_failures(results: Path) -> None:
    table = {(e["model"], e["task"]): e for e in task_table(read_results(results))}
    tiny = table[("tiny", "retrieval")]
    assert (tiny["metric"], tiny["id"], tiny["ood"], tiny["diff"]) == ("r_mean", 40.0, 30.0, -10.0)
    assert tiny["energy_kWh"] == pytest.approx(2e-6)  # ID + OOD evaluations
    assert table[("tiny", "retrieval")]["pareto_id"] and table[("base", "retrieval")]["pareto_id"]
    assert not table[("small", "retrieval")]["pareto_id"]  # slower and worse than base
    # nlvr2: small is faster and better than base on ID, but worse on OOD.
    assert table[("small", "nlvr2")]["pareto_id"] and not table[("base", "nlvr2")]["pareto_id"]
    assert table[("base", "nlvr2")]["pareto_ood"] and not table[("small", "nlvr2")]["pareto_ood"]
    broken = table[("broken", "retrieval")]
    assert broken["status"] == "failed" and "SIGKILL" in broken["error"]
    assert broken["id"] is None and not broken["pareto_id"]
    assert tiny["loyalty"] == 0.9  # unknown extra keys pass through


def test_write_report_files(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    paths = write_report(results, out)
    with open(paths["results_csv"], newline="", encoding="utf-8") as f:
        long_rows = list(csv.DictReader(f))
    header = list(long_rows[0])
    assert header[: len(RESULT_FIELDS)] == list(RESULT_FIELDS)
    assert {"latency_p90_ms", "status", "error", "loyalty", "primary"} <= set(header)
    assert len(long_rows) == len(crafted_rows())
    with open(paths["leaderboard_csv"], newline="", encoding="utf-8") as f:
        wide = list(csv.DictReader(f))
    assert len(wide) == 8  # 4 models x 2 tasks, the failed ones included
    assert {"id", "ood", "diff", "pareto_id", "pareto_ood", "latency_ms", "latency_p90_ms", "throughput",
            "peak_mem_MB", "energy_kWh", "co2_g", "gflops", "params_M", "loyalty", "error"} <= set(wide[0])  # fmt: skip

    text = paths["report_md"].read_text(encoding="utf-8")
    task_lines = [line for line in text.splitlines() if line.startswith("| tiny | retrieval |")]
    assert len(task_lines) == 1 and "| 40.00 | 30.00 | -10.00 |" in task_lines[0]
    assert "| broken | retrieval | worker killed by SIGKILL |" in text  # the failed-runs table
    assert (
        "- retrieval, ID: tiny, base" in text and "- average, ID: tiny, base" in text
    )  # small ties base on latency, worse
    assert "estimate" in text and "RAPL" in text and "codecarbon 3.3.2 offline (FRA): CPU estimated" in text
    assert "loyalty" in text
    leaderboard = [line for line in text.splitlines() if line.startswith("| base |")]
    assert leaderboard and "2" in leaderboard[0].split("|")[2]  # tasks ok

    for key in ("pareto_png", "id_vs_ood_png"):
        with Image.open(paths[key]) as image:
            image.verify()
        with Image.open(paths[key]) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


def test_bad_results_file(tmp_path: Path) -> None:
    bad = tmp_path / "results.jsonl"
    bad.write_text('{"model": "a", "task": "t"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        read_results(bad)
    with pytest.raises(FileNotFoundError):
        read_results(tmp_path / "missing.jsonl")


def test_format_value() -> None:
    assert format_value(None) == "" and format_value(True) == "✓" and format_value(False) == ""
    assert format_value(12.345) == "12.35" and format_value(1234.5) == "1234.5"
    assert format_value(3.9e-08) == "3.9e-08" and format_value(0.0123) == "0.0123" and format_value("a|b") == "a\\|b"


def test_report_names_the_measured_throughput_batch() -> None:
    from grainvl.bench.report import markdown_report

    rows = [{**row, "throughput_batch": 8} for row in crafted_rows()]
    text = " ".join(markdown_report(rows).split())
    assert "throughput is at batch 8 (--throughput-batch)" in text and "batch 32" not in text
    assert "a batch size that was not recorded" in markdown_report(crafted_rows())


def test_captioning_fractions_average_as_percent_points() -> None:
    """CIDEr is a pycocoevalcap fraction; the cross-task average puts it on the percent scale of the rest."""
    from grainvl.bench.report import model_table

    rows = []
    for task, metric, value in (("retrieval", "r_mean", 60.0), ("captioning", "CIDEr", 1.2)):
        for split in ("id", "ood"):
            rows.append({"model": "m", "task": task, "split": split, "metric": metric, "value": value,
                         "primary": True, "latency_ms": 1.0, "status": "ok"})  # fmt: skip
    table = task_table(rows)
    captioning = next(e for e in table if e["task"] == "captioning")
    assert (captioning["id"], captioning["id_points"]) == (1.2, pytest.approx(120.0))  # shown as is, averaged x100
    assert model_table(table)[0]["avg_id"] == pytest.approx(90.0)

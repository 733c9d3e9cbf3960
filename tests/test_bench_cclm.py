"""benchmarks/bench_cclm.py: the per-language tables and the two claims' readings (no training here)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from grainvl.data.parallel_text import CrossViewSchedule


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cclm.py"
    spec = importlib.util.spec_from_file_location("bench_cclm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cclm"] = module
    spec.loader.exec_module(module)
    return module


def _scores(bench: ModuleType) -> dict[str, dict[str, float]]:
    """One task's evaluations as finetune returns them: ``metric@lang`` plus the non-English mean ``metric``."""
    return {
        bench.CCLM: {"acc": 50.0, "acc@en": 70.0, "acc@de": 60.0, "acc@zh": 40.0},
        bench.NO_PARA: {"acc": 45.0, "acc@en": 70.0, "acc@de": 50.0, "acc@zh": 40.0},
        bench.ENGLISH_ONLY: {"acc": 35.0, "acc@en": 80.0, "acc@de": 40.0, "acc@zh": 30.0},
        bench.TRANSLATE_TEST: {"acc": 80.0, "acc@en": 80.0, "acc@de": 80.0, "acc@zh": 80.0},
    }


def test_language_table_puts_english_first_and_averages_without_it(bench: ModuleType) -> None:
    languages, table = bench.language_table(_scores(bench), "acc")
    assert languages == ["en", "de", "zh"]
    assert table[bench.CCLM] == {"en": 70.0, "de": 60.0, "zh": 40.0, "avg": 50.0}
    assert table[bench.ENGLISH_ONLY]["avg"] == 35.0  # not (80 + 40 + 30) / 3: English is left out


def test_language_table_of_an_english_only_task_has_no_average(bench: ModuleType) -> None:
    _, table = bench.language_table({bench.CCLM: {"acc@en": 70.0}}, "acc")
    assert table[bench.CCLM]["en"] == 70.0 and math.isnan(table[bench.CCLM]["avg"])


def test_claims_read_both_gaps_per_task_and_on_the_mean(bench: ModuleType) -> None:
    tables = {"xvnli": bench.language_table(_scores(bench), "acc")[1]}
    tables["marvl"] = {
        bench.CCLM: {"avg": 60.0},
        bench.ENGLISH_ONLY: {"avg": 55.0},
        bench.TRANSLATE_TEST: {"avg": 50.0},
    }
    readings = bench.claims(tables)
    xvnli, marvl, mean = readings["xvnli"], readings["marvl"], readings["mean over tasks"]
    assert xvnli["zero_shot_minus_translate_test"] == -30.0 and xvnli["zero-shot CCLM >= translate-test"] is False
    assert xvnli["cclm_minus_english_only"] == 15.0 and xvnli["CCLM - English-only >= 10"] is True
    assert marvl["zero-shot CCLM >= translate-test"] is True and marvl["CCLM - English-only >= 10"] is False
    assert mean["cclm_minus_english_only"] == pytest.approx(10.0)  # (55 + 60) / 2 - (35 + 55) / 2
    assert mean["zero_shot_minus_translate_test"] == pytest.approx(-10.0)


def test_claims_without_translate_test_say_unknown(bench: ModuleType) -> None:
    readings = bench.claims({"xvnli": {bench.CCLM: {"avg": 60.0}, bench.ENGLISH_ONLY: {"avg": 40.0}}})
    assert readings["xvnli"]["zero-shot CCLM >= translate-test"] is None
    assert "| xvnli | — | — | +20.0 | yes |" in bench.format_claims(readings)


def test_markdown_table_has_a_row_per_setting_in_order(bench: ModuleType) -> None:
    languages, table = bench.language_table(_scores(bench), "acc")
    text = bench.format_tables({"xvnli": table}, {"xvnli": languages}, {"xvnli": "acc"})
    rows = [line for line in text.splitlines() if line.startswith("| ") and "setting" not in line]
    assert [row.split(" | ")[0][2:] for row in rows] == list(bench.SETTINGS)
    assert rows[0] == f"| {bench.CCLM} | 70.0 | 60.0 | 40.0 | 50.0 |"
    assert "| setting | en | de | zh | avg (no en) |" in text


def test_the_no_parallel_text_setting_schedules_no_parallel_batch() -> None:
    """The bench's "w/o parallel text" run is ``cclm.para_prob=0``: same schedule, the para steps left out."""
    streams = {"image": iter(()), "region": iter(()), "para": iter(())}  # plan() never reads them
    without = CrossViewSchedule(streams, seed=3, para_prob=0.0)
    with_para = CrossViewSchedule(streams, seed=3, para_prob=1.0)
    for iteration in range(50):
        assert "para" not in without.plan(iteration)
        assert with_para.plan(iteration) == ["para", *without.plan(iteration)]
    assert without.steps(50) == with_para.steps(50) - 50

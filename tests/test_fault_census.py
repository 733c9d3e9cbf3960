"""benchmarks/bench_faults.py: its classifier, and a slice of the census run for real (data check faults, ~5 s).

The full census (every fault class, ~3 minutes) is `python benchmarks/bench_faults.py`; each class is tested
in-process in tests/test_faults_{data,output,resume}.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_faults.py"


@pytest.fixture(scope="module")
def census():
    spec = importlib.util.spec_from_file_location("bench_faults", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_faults"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_classifier_buckets(census) -> None:
    fault = census.Fault("x", "one line", lambda w, o: [], "data.jsonl")
    run = ["pretrain", "--data", "W"]
    assert census.classify(fault, census.Outcome(2, "", "error: W/data.jsonl: line 3: bad\n"), run)[0] == "one-line"
    assert census.classify(fault, census.Outcome(0, "", ""), run)[0] == "silent"
    traceback = "Traceback (most recent call last):\n  File x\nKeyError: 1\n"
    assert census.classify(fault, census.Outcome(1, "", traceback), run)[0] == "traceback"
    assert census.classify(fault, census.Outcome(2, "", "error: other.json: bad\n"), run)[0] == "unclear"
    two = "error: W/data.jsonl: line 3: bad\nerror: W/data.jsonl: line 4: bad\n"
    assert census.classify(fault, census.Outcome(2, "", two), run)[0] == "unclear"  # a run stops at the first
    assert census.classify(fault, census.Outcome(2, "", two), ["data", "check", "W"])[0] == "one-line"
    survived = census.Fault("y", "resume", lambda w, o: [], "damaged", survive=True)
    said = "checkpoint R/step_2 is damaged (sha256 mismatch); resuming from step_1\n"
    assert census.classify(survived, census.Outcome(0, "", said), run)[0] == "one-line"
    assert census.classify(survived, census.Outcome(0, "", ""), run)[0] == "silent"


def test_data_check_faults_are_all_one_line_errors(census, tmp_path: Path) -> None:
    world = tmp_path / "world"
    made = census.grainvl(["world", "--out", str(world), "--images", "24", "--videos", "2", "--seed", "1"], tmp_path)
    assert made.rc == 0, made.stderr
    faults = [f for f in census.FAULTS if f.name.startswith("data check") and not f.extra]
    assert len(faults) >= 8
    for fault in faults:
        bucket, detail, _ = census.run_fault(fault, tmp_path, world)
        assert bucket in ("one-line", "n/a"), f"{fault.name}: {bucket}: {detail}"

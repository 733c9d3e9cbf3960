"""benchmarks/bench_taco.py: the held-out acceptability tasks, the crossing step and the speed-up's validity."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from grainvl.data.formats.glue import read_tsv, write_tsv


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_taco.py"
    spec = importlib.util.spec_from_file_location("bench_taco", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_taco"] = module
    spec.loader.exec_module(module)
    return module


def test_corruptions_keep_ends_and_change_the_sentence(bench: ModuleType) -> None:
    words = ["The", "red", "square", "is", "left", "of", "the", "blue", "circle."]
    rng = random.Random(0)
    for kind in bench.HELDOUT_TASKS:
        for _ in range(20):
            out = bench.corrupt(words, kind, rng, ["green", "star"])
            assert out != words and out[0] == words[0] and out[-1] == words[-1] and len(out) == len(words)
            if kind != "word_replace":
                assert sorted(out) == sorted(words)
            else:
                assert sum(a != b for a, b in zip(out, words)) == 1
    with pytest.raises(ValueError, match="unknown held-out task"):
        bench.corrupt(words, "nope", rng, [])


def _fake_world(root: Path) -> Path:
    shapes = ["square", "circle", "star", "oval", "cross", "heart"]
    colors = ["red", "blue", "green", "pink", "gray"]
    dev = [f"The {c} {s} is left of the {d} {t}." for c in colors for s in shapes for d in colors for t in shapes[:3]]
    train = [*dev[:50], "A cat sat on the warm mat today."]  # 50 dev sentences also occur in training text
    for split, sentences in (("train", train), ("dev", dev)):
        rows = [{"sentence": s, "label": str(i % 2)} for i, s in enumerate(sentences)]
        write_tsv(root / "text" / "glue" / "shape_sst" / f"{split}.tsv", ["sentence", "label"], rows)
        # a CoLA-like task's dev sentences are corrupted already: never a source
        write_tsv(root / "text" / "glue" / "scene_cola" / f"{split}.tsv", ["sentence", "label"], rows[:3])
    return root


def test_heldout_tasks_use_unseen_dev_sentences_only(bench: ModuleType, tmp_path: Path) -> None:
    world = _fake_world(tmp_path / "world")
    counts = bench.heldout_tasks(world, tmp_path / "tasks", seed=0, dev_size=100, train_size=200)
    assert counts == {kind: 300 for kind in bench.HELDOUT_TASKS}
    train_text = {r["sentence"] for r in read_tsv(world / "text" / "glue" / "shape_sst" / "train.tsv")["rows"]}
    for kind in bench.HELDOUT_TASKS:
        dev = read_tsv(tmp_path / "tasks" / kind / "dev.tsv")["rows"]
        train = read_tsv(tmp_path / "tasks" / kind / "train.tsv")["rows"]
        assert len(dev) == 100 and len(train) == 200
        originals = [r["sentence"] for r in dev + train if r["label"] == "1"]
        assert not set(originals) & train_text  # pre-training text never appears as an example
        assert [r["label"] for r in dev[:4]] == ["0", "1", "0", "1"]
        assert all(r["sentence"] not in train_text for r in dev + train if r["label"] == "0")
    with pytest.raises(ValueError, match="too few"):
        bench.heldout_tasks(world, tmp_path / "few", seed=0, dev_size=400, train_size=10)


def test_steps_to_reach_interpolates(bench: ModuleType) -> None:
    curve = [(0, 50.0), (100, 60.0), (200, 70.0)]
    assert bench.steps_to_reach(curve, 65.0) == pytest.approx(150.0)
    assert bench.steps_to_reach(curve, 50.0) == 0.0 and bench.steps_to_reach(curve, 71.0) is None


def test_speedup_needs_a_gap_between_init_and_mlm(bench: ModuleType) -> None:
    def curves(init: float, mlm: list[float], taco: list[float]) -> dict:
        points = lambda values: [{"step": s * 100, "average": v} for s, v in enumerate([init, *values])]  # noqa: E731
        return {"mlm": points(mlm), "taco": points(taco)}

    good = bench.speedup_of(curves(50.0, [55.0, 60.0], [60.0, 62.0]), 200)
    assert good["valid"] and good["taco_steps_to_mlm_final"] == 100.0 and good["speedup"] == pytest.approx(2.0)
    flat = bench.speedup_of(curves(61.0, [55.0, 60.0], [60.0, 62.0]), 200)
    assert not flat["valid"] and flat["speedup"] is None  # the random encoder already scores 61 > 60
    never = bench.speedup_of(curves(50.0, [55.0, 60.0], [52.0, 58.0]), 200)
    assert never["valid"] and never["taco_steps_to_mlm_final"] is None and never["speedup"] is None

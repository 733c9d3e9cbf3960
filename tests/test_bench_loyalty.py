"""``grainvl bench --teacher``: loyalty and robustness columns (fake backend in worker subprocesses), and the
real text-side sets of nlvr2 / vqa / retrieval.

The fake "model" is an MLP whose width comes from its name (``fake-8``); its text-side classifier scores a
bag of colour words through the MLP, so two models of the same width agree exactly (loyalty 1) and models
of different widths do not.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from grainvl.compress.loyalty_bench import TextSideSet, loyalty_rows, probability_file
from grainvl.recipes.bench import BenchOptions, ModelEntry, run_bench
from test_bench_runner import FakeTask

TESTS = Path(__file__).resolve().parent
COLOURS = ("red", "green", "blue", "yellow", "purple", "black", "white", "gray")
TEXTS = [f"a {a} circle left of a {b} square" for a in COLOURS for b in COLOURS[:3]]


class BagClassifier:
    """predict_proba of ``(key, text)``: a 16-d bag of colour words (+ the key) through ``module``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def predict_proba(self, inputs: list[tuple[Any, str]]) -> np.ndarray:
        x = torch.zeros(len(inputs), 16)
        for row, (key, text) in enumerate(inputs):
            for word in text.split():
                x[row, zlib.crc32(word.encode()) % 16] += 1.0
            x[row, 15] += float(key) / 10
        with torch.no_grad():
            return self.module(x).softmax(-1).numpy().astype(np.float64)


class LoyaltyBackend:
    def finetune(self, model: ModelEntry, task: str, world: Path, out: Path, options: BenchOptions) -> dict:
        out.mkdir(parents=True, exist_ok=True)
        width = int(model.source.partition("-")[2])
        (out / "task.json").write_text(json.dumps({"task": task, "width": width}), encoding="utf-8")
        return {"cost": {"wall_s": 0.1}}

    def load(self, run_dir: Path, world: Path):
        meta = json.loads((run_dir / "task.json").read_text(encoding="utf-8"))
        torch.manual_seed(meta["width"])  # same width -> same weights
        module = nn.Sequential(nn.Linear(16, meta["width"]), nn.Tanh(), nn.Linear(meta["width"], 2))
        return FakeTask(meta["task"]), module, None

    def evaluate(self, task, module, tokenizer, world: Path, split: str, out_dir: Path) -> dict[str, float]:
        return task.evaluate(module, tokenizer, world, split, out_dir)

    def text_side(self, task, module, tokenizer, world: Path, split: str, limit: int) -> TextSideSet | None:
        if task.name == "plain":  # a task without a classification-style text side
            return None
        classifier = BagClassifier(module)
        inputs = [(i % 3, t) for i, t in enumerate(TEXTS[:limit])]
        labels = classifier.predict_proba(inputs).argmax(-1).tolist()  # gold = what the teacher-width model says
        return TextSideSet(classifier, inputs, labels)


@pytest.fixture
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    world = tmp_path / "world"
    world.mkdir()
    return world


def _options(**overrides: Any) -> BenchOptions:
    base = dict(backend="test_bench_loyalty:LoyaltyBackend", use_codecarbon=False, warmup=1, repeats=5)
    base.update(throughput_batch=4, throughput_repeats=1, finetune_steps=1, attack_similarity=False)
    return BenchOptions(**{**base, **overrides})


@pytest.mark.slow
def test_bench_teacher_adds_loyalty_and_robustness_columns(fake_env: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    models = ["teacher=fake-8", "twin=fake-8", "small=fake-3"]
    options = _options(teacher="teacher", loyalty_examples=20, attack_examples=6)
    rows = run_bench(models, ["t1", "plain"], fake_env, out, options, progress=None)
    got = {(r["model"], r["task"], r["metric"]): r for r in rows if r["split"] == "id"}
    for model in ("teacher", "twin"):  # the teacher and an identical copy are perfectly loyal
        assert got[(model, "t1", "label_loyalty")]["value"] == 1.0
        assert got[(model, "t1", "probability_loyalty")]["value"] == pytest.approx(1.0, abs=1e-6)
    small = got[("small", "t1", "probability_loyalty")]
    assert 0.0 <= small["value"] < 0.999 and small["teacher"] == "teacher" and small["loyalty_examples"] == 20
    assert small["primary"] is False and small["latency_ms"] > 0  # carries the model's cost columns
    # Reference: the loyalty of the saved probabilities, computed by hand.
    t = np.load(probability_file(out, "teacher", "t1"))["probs"]
    s = np.load(probability_file(out, "small", "t1"))["probs"]
    m = (t + s) / 2
    kl = lambda p: (p * np.log2(np.where(p > 0, p, 1) / m)).sum(-1)  # noqa: E731
    expected = 1 - np.sqrt((kl(t) + kl(s)) / 2)
    assert small["value"] == pytest.approx(float(expected.mean()), abs=1e-9)
    assert got[("small", "t1", "label_loyalty")]["value"] == pytest.approx(float((t.argmax(-1) == s.argmax(-1)).mean()))
    for model in ("teacher", "twin", "small"):
        asr = got[(model, "t1", "attack_success_rate")]
        under = got[(model, "t1", "acc_under_attack")]
        before = got[(model, "t1", "acc_before_attack")]
        assert asr["attack_examples"] == 6 and 0 <= under["value"] <= before["value"] <= 100
        assert 0 <= asr["value"] <= 100
        assert (model, "plain", "label_loyalty") not in got and (model, "plain", "acc_under_attack") not in got
    assert got[("teacher", "t1", "acc_before_attack")]["value"] == 100.0  # gold = the teacher's own predictions
    # Report and leaderboard show the columns.
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Loyalty and robustness (ID)" in report and "label_loyalty" in report
    header = (out / "leaderboard.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert {"label_loyalty", "probability_loyalty", "acc_under_attack", "attack_success_rate"} <= set(header)
    # Re-running the report keeps one loyalty row per (model, task, metric).
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    keys = [(r["model"], r["task"], r["metric"]) for r in lines if r["metric"] == "label_loyalty"]
    assert len(keys) == len(set(keys)) == 3


def test_unknown_teacher_is_refused(fake_env: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not one of the benchmarked models"):
        run_bench(["a=fake-2"], ["t1"], fake_env, tmp_path / "o", _options(teacher="b"), progress=None)
    with pytest.raises(ValueError, match="attack_examples"):
        _options(attack_examples=-1)


def test_loyalty_rows_skip_mismatched_examples(tmp_path: Path) -> None:
    classifier = BagClassifier(nn.Sequential(nn.Linear(16, 2)))
    from grainvl.compress.loyalty_bench import save_probabilities

    save_probabilities(probability_file(tmp_path, "a", "t"), TextSideSet(classifier, [(0, TEXTS[0])], [0]))
    save_probabilities(probability_file(tmp_path, "b", "t"), TextSideSet(classifier, [(0, TEXTS[1])], [0]))
    rows = [{"model": m, "task": "t", "split": "id", "metric": "acc", "value": 1.0, "primary": True} for m in "ab"]
    extra, warnings = loyalty_rows(rows, tmp_path, "a", str)
    assert [r["model"] for r in extra] == ["a", "a"] and "examples differ" in warnings[0]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grainvl.data.world.generate import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("loyalty") / "w"
    cfg = WorldConfig(images=24, videos=0, resolution=64, split_fractions=(12, 4, 4, 4), text_scenes=0, dialogues=0)
    generate_world(cfg, out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nlvr2", "vqa", "retrieval"])
def test_real_task_text_side_and_int8_loyalty(tiny_world: Path, name: str) -> None:
    """The real tasks' text-side sets: class probabilities per example, gold labels, an int8 copy stays loyal."""
    from grainvl.compress.loyalty import loyalty_from_probs
    from grainvl.compress.loyalty_bench import attack_metrics, task_text_side
    from grainvl.compress.quantize import quantize_dynamic_int8
    from grainvl.models.factory import create_model, get_tokenizer
    from grainvl.tasks.registry import get_task

    torch.manual_seed(0)
    model = create_model("xvlm-tiny", init_unimodal=False)
    tokenizer = get_tokenizer(model.config)
    task = get_task(name)
    module = task.build(model, tiny_world, tokenizer).eval()
    side = task_text_side(task, module, tokenizer, tiny_world, "test", 6)
    assert side is not None and 2 <= len(side.inputs) == len(side.labels) <= 6  # the world split may be smaller
    n = len(side.inputs)
    probs = side.classifier.predict_proba(side.inputs)
    classes = len(module.answers) if name == "vqa" else 2
    assert probs.shape == (n, classes) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    if name == "retrieval":
        assert side.labels == [1, 0] * (n // 2) and side.inputs[0][0] == side.inputs[1][0]
        assert side.inputs[0][1] != side.inputs[1][1]  # the negative pair has another item's caption
    if name == "nlvr2":  # the adapter computes what the module's own head computes on the same tokens
        key, text = side.inputs[0]
        image = side.classifier.images[key][None]
        tokens = tokenizer([text], padding=True, truncation=True, max_length=40, return_tensors="pt")
        with torch.no_grad():
            ref = module.logits(image, tokens["input_ids"], tokens["attention_mask"]).softmax(-1)
        np.testing.assert_allclose(probs[0], ref[0].numpy(), atol=1e-5)
    int8 = task_text_side(task, quantize_dynamic_int8(module), tokenizer, tiny_world, "test", 6)
    report = loyalty_from_probs(probs, int8.classifier.predict_proba(int8.inputs))
    assert 0.9 < report.probability_loyalty <= 1.0
    found = attack_metrics(side, 2, use_similarity=False)
    assert found["attack_examples"] == 2 and 0 <= found["acc_under_attack"] <= found["acc_before_attack"]

"""``grainvl bench --teacher``: loyalty and robustness columns (fake backend in worker subprocesses), and the
real text-side sets of nlvr2 / vqa / retrieval.

The fake "model" is an MLP whose width comes from its name (``fake-8``); its text-side classifier scores a
bag of colour words through the MLP, so two models of the same width agree exactly (loyalty 1) and models
of different widths do not.
"""

from __future__ import annotations

import importlib.util
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


# ------------------------------------------------------------------------------ benchmarks/bench_loyalty.py
SCRIPT = TESTS.parent / "benchmarks" / "bench_loyalty.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("bench_loyalty", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(model: str, accuracy: float) -> dict[str, Any]:
    return {"model": model, "accuracy": accuracy}


def _notes(raw: float = 0.49, calibrated: float = 0.49, final_rate: float = 1.0) -> dict[str, Any]:
    return {"prune": {"target": 0.5, "raw": raw, "calibrated": calibrated}, "theseus": {"final_rate": final_rate}}


def test_a_clean_table_raises_no_flag(script) -> None:
    rows = [_row("teacher", 0.95), _row("int8", 0.94), _row("prune", 0.9), _row("theseus-3L", 0.93)]
    assert script.degeneracy_flags(rows, _notes(), chance=0.5, n=300) == []


def test_degeneracy_flags_name_each_failure(script) -> None:
    # n = 100, chance 0.5: within noise up to 0.5 + 2·0.05 = 0.6.
    rows = [_row("teacher", 0.995), _row("prune", 0.9), _row("theseus-3L", 0.6)]
    flags = script.degeneracy_flags(rows, _notes(raw=0.11, calibrated=0.47, final_rate=0.8), chance=0.5, n=100)
    text = "\n".join(flags)
    assert len(flags) == 5, text
    assert "teacher: accuracy 0.995 >= 0.99" in text and "theseus-3L: accuracy 0.600 is within noise" in text
    assert "Lagrangian alone reached 0.110 of a 0.500 target" in text and "calibrated sparsity 0.470 misses" in text
    assert "replacing rate ended at 0.800" in text
    assert not any(f.startswith("prune: accuracy") for f in flags)
    # A teacher at chance is flagged too; 0.61 is outside the noise band.
    flags = script.degeneracy_flags([_row("teacher", 0.55), _row("x", 0.61)], {}, chance=0.5, n=100)
    assert flags == ["teacher: accuracy 0.550 is within noise of chance (0.500)"]
    # A student beyond the teacher's noise band (0.8 + 2·0.04 = 0.88) means an under-trained teacher.
    flags = script.degeneracy_flags([_row("teacher", 0.8), _row("a", 0.87), _row("b", 0.9)], {}, chance=0.5, n=100)
    assert flags == ["teacher: under-trained, b beats it beyond noise (0.900 > 0.880)"]


def test_chance_is_the_majority_class_and_noise_two_standard_errors(script) -> None:
    assert script.chance_accuracy([0, 1, 1, 2]) == 0.5
    assert script.noise_margin(0.5, 100) == pytest.approx(0.1)
    assert script.noise_margin(1.0, 100) == 0.0


@pytest.mark.parametrize("base", [0.3, 0.5])
def test_theseus_slope_reaches_one_exactly_at_the_chosen_step(script, base: float) -> None:
    from grainvl.compress.theseus import LinearReplacementScheduler

    for reach in (1, 7, 150, 999):
        k = script.linear_slope(base, reach)
        scheduler = LinearReplacementScheduler.__new__(LinearReplacementScheduler)  # rate() needs no encoder
        scheduler.k, scheduler.base_replacing_rate = k, base
        assert scheduler.rate(reach) == 1.0 and scheduler.rate(reach - 1) < 1.0


def test_train_keeps_constant_lr_groups_undecayed(script) -> None:
    """The pruner's log α and λ groups (``constant_lr``) must not follow the linear decay of the model's lr."""
    decayed, constant = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))
    holder = nn.Module()
    holder.a, holder.b = decayed, constant
    groups = [{"params": [decayed], "lr": 0.01}, {"params": [constant], "lr": 0.01, "constant_lr": True}]
    script._train(holder, groups, 40, lambda step: decayed + constant)  # gradient 1: Adam moves each by ≈ its lr
    assert float(constant.detach()) == pytest.approx(-0.4, rel=0.02)  # 40 steps × 0.01
    assert -0.25 < float(decayed.detach()) < -0.15  # warm-up + linear decay: about half the distance


def _tiny_classifier_task():
    from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
    from grainvl.models.text import BertEncoderModel, TextConfig
    from grainvl.tasks.text_classification import GlueTask, TextClassifier

    torch.manual_seed(0)
    tokenizer = load_tokenizer(packaged_minilm_path())
    cfg = TextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=256,  # fine-grained enough for calibration to land within 0.01
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    teacher = TextClassifier(BertEncoderModel(cfg), tokenizer, 2, ("0", "1"), dropout=0.0, max_length=16).eval()
    texts = [f"a {c} circle" for c in COLOURS] * 4
    targets = [float(i % 2) for i in range(len(texts))]
    return teacher, GlueTask("toy", ("sentence",), "label", ("0", "1"), texts, targets, texts, targets)


def test_prune_reports_raw_and_calibrated_sparsity_of_the_shrunk_student(script) -> None:
    teacher, task = _tiny_classifier_task()
    reference = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, note = script.prune_classifier(teacher, task, 0.5, 30, 1e-3, 0)
    assert set(note) >= {"target", "expected", "raw", "calibrated", "delta", "reg_lr", "heads", "ffn"}
    assert note["reg_lr"] == pytest.approx(4.0 / 30)  # short_run_reg_lr: travel 4 over 30 steps
    assert abs(note["calibrated"] - 0.5) <= 0.01 and 0.0 <= note["raw"] <= 1.0
    assert (note["delta"] == 0.0) == (abs(note["raw"] - 0.5) <= 0.01)  # calibration only when the game missed
    config = student.encoder.config  # the shrunk tower has exactly the reported heads and neurons, fewer than before
    assert config.layer_heads == note["heads"] and config.layer_intermediate == note["ffn"]
    assert sum(note["heads"]) + sum(note["ffn"]) < 2 * (4 + 256)
    assert student.predict_proba(task.dev_texts[:3]).shape == (3, 2)
    assert all(torch.equal(v, reference[k]) for k, v in teacher.state_dict().items())  # teacher untouched

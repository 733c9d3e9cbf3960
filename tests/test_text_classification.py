"""Text classification fine-tuning: data reading by GLUE column names, metrics, and learning a toy task."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grainvl.data.formats.glue import write_tsv
from grainvl.errors import DataError
from grainvl.recipes.transfer import tiny_bert_folder
from grainvl.tasks.text_classification import (
    TextFinetuneConfig,
    TextProbeConfig,
    classification_metrics,
    finetune_text_classifier,
    fit_in_memory,
    fit_probe,
    load_glue_task,
    main_metric_name,
    probe_text_classifier,
    resolve_encoder,
    text_features,
    train_rows,
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert_folder(tmp_path_factory.mktemp("tiny_bert"))


def _toy_task(folder: Path, n_train: int = 64, n_dev: int = 32) -> Path:
    """Label 1 iff the sentence says "apple": separable by one token."""
    rng = random.Random(0)
    fillers = ["the box is", "i see a", "there lies one", "a small", "look at the"]

    def rows(n: int) -> list[dict[str, str]]:
        out = []
        for i in range(n):
            label = i % 2
            word = "apple" if label else "stone"
            out.append({"sentence": f"{rng.choice(fillers)} {word} here", "label": str(label)})
        return out

    write_tsv(folder / "train.tsv", ["sentence", "label"], rows(n_train))
    write_tsv(folder / "dev.tsv", ["sentence", "label"], rows(n_dev))
    return folder


@pytest.mark.slow
def test_learns_trivially_separable_task(tiny_bert: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    task = _toy_task(tmp_path / "toy_sst")
    cfg = TextFinetuneConfig(steps=40, batch_size=16, lr=2e-3, max_length=16, dropout=0.0, warmup=0.0)
    result = finetune_text_classifier(tiny_bert, task, cfg)
    assert result.metrics["accuracy"] == 1.0
    assert result.main_metric == "accuracy" and result.steps == 40
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    probs = result.model.predict_proba(["i see a apple here", "i see a stone here"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1.0)
    assert result.model.predict(["i see a apple here", "i see a stone here"]) == ["1", "0"]


def test_continue_from_finetuned_model_uses_new_head(tiny_bert: Path, tmp_path: Path) -> None:
    task = _toy_task(tmp_path / "toy")
    first = finetune_text_classifier(tiny_bert, task, TextFinetuneConfig(steps=2, batch_size=8, max_length=16))
    before = {k: v.clone() for k, v in first.model.state_dict().items()}
    second = finetune_text_classifier(
        first.model, task, TextFinetuneConfig(steps=2, batch_size=8, max_length=16, seed=1)
    )
    # the source model is not modified, and the target run starts from its tower
    assert all(torch.equal(v, first.model.state_dict()[k]) for k, v in before.items())
    assert second.model.encoder is not first.model.encoder


def test_reads_real_glue_headers(tmp_path: Path) -> None:
    mrpc = tmp_path / "MRPC"
    columns = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    row = {"Quality": "1", "#1 ID": "1", "#2 ID": "2", "#1 String": 'He said "hi".', "#2 String": "He greeted."}
    write_tsv(mrpc / "train.tsv", columns, [row, {**row, "Quality": "0"}])
    write_tsv(mrpc / "dev.tsv", columns, [row])
    task = load_glue_task(mrpc)
    assert task.text_columns == ("#1 String", "#2 String") and task.label_column == "Quality"
    assert task.train_texts[0] == ('He said "hi".', "He greeted.") and task.labels == ("0", "1")
    assert main_metric_name(task.name, False, 2) == "f1"
    stsb = tmp_path / "STS-B"
    write_tsv(
        stsb / "train.tsv", ["sentence1", "sentence2", "score"], [{"sentence1": "a", "sentence2": "b", "score": "3.8"}]
    )
    write_tsv(
        stsb / "dev.tsv", ["sentence1", "sentence2", "score"], [{"sentence1": "a", "sentence2": "c", "score": "1.0"}]
    )
    assert load_glue_task(stsb).is_regression and load_glue_task(stsb).train_targets == [3.8]


def test_unseen_dev_label_and_unknown_columns_are_data_errors(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    write_tsv(folder / "train.tsv", ["sentence", "label"], [{"sentence": "x", "label": "0"}])
    write_tsv(folder / "dev.tsv", ["sentence", "label"], [{"sentence": "y", "label": "2"}])
    with pytest.raises(DataError, match="do not occur in train"):
        load_glue_task(folder)
    write_tsv(folder / "train.tsv", ["words", "label"], [{"words": "x", "label": "0"}])
    with pytest.raises(DataError, match="cannot tell text/label columns"):
        load_glue_task(folder)


def test_metrics_match_sklearn() -> None:
    from sklearn.metrics import f1_score, matthews_corrcoef

    rng = np.random.default_rng(0)
    pred, gold = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    metrics = classification_metrics(pred, gold, ("0", "1"))
    assert metrics["accuracy"] == pytest.approx((pred == gold).mean())
    assert metrics["f1"] == pytest.approx(f1_score(gold, pred))
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(gold, pred))
    # labels without "1": the second sorted label is the positive class
    assert classification_metrics(pred, gold, ("entailment", "not_entailment"))["f1"] == pytest.approx(
        f1_score(gold, pred)
    )
    assert main_metric_name("scene_cola", False, 2) == "mcc" and main_metric_name("size_mnli", False, 3) == "accuracy"


def test_train_rows_default_prefix_and_seeded_subsets() -> None:
    assert train_rows(10, None) == list(range(10)) and train_rows(10, 20, 3) == list(range(10))
    assert train_rows(10, 4) == [0, 1, 2, 3]  # no seed: the first N, as before
    first, again, other = train_rows(100, 8, 0), train_rows(100, 8, 0), train_rows(100, 8, 1)
    assert first == again and first != other and len(set(first)) == 8 and first == sorted(first)


def test_fit_probe_separates_and_handles_one_class() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = rng.normal(size=(40, 5)) * 100.0 + 0.0  # large scale: the probe standardises
    x[:, 0] = np.where(y == 1, 1000.0, 900.0) + rng.normal(size=40)
    assert fit_probe(x[:30], y[:30].astype(float), x[30:], y[30:].astype(float), ("0", "1"), 1.0)["accuracy"] == 1.0
    one_class = fit_probe(x[:4:2], np.zeros(2), x[30:], y[30:].astype(float), ("0", "1"), 1.0)
    assert one_class["accuracy"] == 0.5


def test_text_features_mean_pooling_ignores_padding(tiny_bert: Path) -> None:
    tower, tokenizer, _ = resolve_encoder(tiny_bert)
    alone = text_features(tower, tokenizer, ["an apple"], 16, "mean")
    padded = text_features(tower, tokenizer, ["an apple", "a much longer sentence about a small stone here"], 16)
    assert alone.shape == (1, tower.config.hidden_size) and np.allclose(alone[0], padded[0], atol=1e-5)
    cls = text_features(tower, tokenizer, ["an apple"], 16, "cls")
    assert not np.allclose(cls, alone)
    with pytest.raises(ValueError, match="pooling"):
        text_features(tower, tokenizer, ["x"], 16, "max")


def test_probe_on_toy_task(tiny_bert: Path, tmp_path: Path) -> None:
    task = _toy_task(tmp_path / "toy_sst")
    result = probe_text_classifier(tiny_bert, task, TextProbeConfig(max_length=16, max_train_examples=32))
    # "apple" vs "stone" changes the frozen features: even an untrained tower separates them linearly
    assert result.main_metric == "accuracy" and result.train_examples == 32 and result.score >= 0.9


def test_fit_in_memory_trains_through_the_loop_with_warmup_and_nan_guard() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(32, 3)
    y = (x[:, 0] > 0).float()

    def batches(step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        rows = torch.arange(8) + 8 * (step % 4)
        return {"x": x[rows]}, y[rows]

    def loss_fn(m: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(m(inputs["x"]), targets.long())

    before = [p.detach().clone() for p in model.parameters()]
    steps: list[int] = []
    losses = fit_in_memory(model, batches, loss_fn, 40, 3e-2, 0.01, 0.1, steps.append)
    assert len(losses) == 40 and steps == list(range(1, 41)) and not model.training
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    # The linear warm-up starts at lr 0: the first of two steps leaves the weights where they were.
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))
    after: list[list[torch.Tensor]] = []
    fit_in_memory(
        fresh, batches, loss_fn, 2, 3e-2, 0.01, 0.5, lambda _: after.append([p.clone() for p in fresh.parameters()])
    )
    assert all(torch.equal(p, q) for p, q in zip(after[0], before))
    assert not all(torch.equal(p, q) for p, q in zip(after[1], before))
    with pytest.raises(FloatingPointError):
        fit_in_memory(model, lambda step: ({"x": x[:8] * float("nan")}, y[:8]), loss_fn, 3, 1e-2, 0.0, 0.0)

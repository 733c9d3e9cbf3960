"""PET tuning on a tiny BERT and every task-embedding extractor; TextEmb / TaskEmb baselines; QA metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from grainvl.data.world.generate import WorldConfig, _generate_text
from grainvl.recipes.transfer import tiny_bert_folder
from grainvl.tasks.text_classification import TextFinetuneConfig, finetune_text_classifier, load_glue_task
from grainvl.tasks.text_qa import squad_scores
from grainvl.transfer.baselines import fisher_embedding, text_embedding
from grainvl.transfer.petl import PetlConfig, load_hf_backbone, tune_task
from grainvl.transfer.task_embeddings import center, cosine_matrix, library_embeddings, pet_vector, task_vector

HIDDEN, LAYERS, TOKENS, RANK = 32, 2, 4, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("transfer")
    _generate_text(WorldConfig(text_scenes=40, text_train=16, text_dev=8), root / "world")
    return tiny_bert_folder(root / "bert", hidden=HIDDEN, layers=LAYERS), root / "world" / "text"


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora", "bitfit"])
def test_extractor_shapes_and_variants(setup: tuple[Path, Path], method: str) -> None:
    torch.set_num_threads(2)
    bert, text = setup
    backbone, tokenizer = load_hf_backbone(bert)
    cfg = PetlConfig(
        method=method, steps=2, batch_size=4, num_virtual_tokens=TOKENS, lora_r=RANK, max_length=48, snapshot_steps=(1,)
    )
    results = {name: tune_task(backbone, tokenizer, text / "glue" / name, cfg) for name in ("color_sst", "shape_sst")}
    qa = tune_task(backbone, tokenizer, text / "squad" / "color_squad", cfg)
    biases = sum(p.numel() for n, p in backbone.named_parameters() if "bias" in n)
    expected = {
        "prompt": HIDDEN,
        "prefix": 2 * LAYERS * HIDDEN,
        "lora": LAYERS * 2 * 2 * RANK * HIDDEN,
        "bitfit": biases,
    }[method]
    first = results["color_sst"]
    assert pet_vector(method, first.params).shape == (expected,)
    assert pet_vector(method, qa.params).shape == (expected,)  # QA and classification share the space
    assert first.trainable == (TOKENS * expected if method in ("prompt", "prefix") else expected)
    assert set(first.snapshots) == {1} and first.snapshots[1].keys() == first.params.keys()
    # the backbone itself is never modified, and the PET init is shared by all tasks
    assert all(torch.equal(results["color_sst"].initial[n], results["shape_sst"].initial[n]) for n in first.initial)
    if method == "prompt":  # mean over prompt tokens
        table = next(iter(first.params.values()))
        assert np.allclose(pet_vector(method, first.params), table.double().mean(0).numpy())
    delta = task_vector(method, first.params, first.initial, "delta")
    assert np.allclose(delta, pet_vector(method, first.params) - pet_vector(method, first.initial))
    assert np.abs(delta).sum() > 0  # training moved the parameters
    params = {n: r.params for n, r in results.items()}
    centered = library_embeddings(method, params, None, "centered")
    assert np.allclose(sum(centered.values()), 0.0)


def test_prompt_raw_cosines_are_dominated_by_shared_init() -> None:
    """The pitfall the delta/centered variants exist for: same init + small updates -> cosine ~ 1."""
    rng = np.random.default_rng(0)
    init = rng.normal(size=(8, 64))
    a = {"p": torch.tensor(init + 0.05 * rng.normal(size=init.shape))}
    b = {"p": torch.tensor(init + 0.05 * rng.normal(size=init.shape))}
    raw = {"a": pet_vector("prompt", a), "b": pet_vector("prompt", b)}
    delta = {k: task_vector("prompt", v, {"p": torch.tensor(init)}, "delta") for k, v in {"a": a, "b": b}.items()}
    assert cosine_matrix(raw)[1][0, 1] > 0.95
    assert abs(cosine_matrix(delta)[1][0, 1]) < 0.5
    assert abs(cosine_matrix(center(raw))[1][0, 1] + 1.0) < 1e-9  # two centred vectors are opposite


def test_baselines_textemb_and_fisher(setup: tuple[Path, Path]) -> None:
    bert, text = setup
    task = load_glue_task(text / "glue" / "color_sst")
    result = finetune_text_classifier(bert, task, TextFinetuneConfig(steps=2, batch_size=4, max_length=32))
    model = result.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    emb = text_embedding(model.encoder, model.tokenizer, task, max_examples=8, max_length=32)
    assert emb.shape == (HIDDEN,) and np.isfinite(emb).all()
    fisher = fisher_embedding(model, task, max_examples=8, max_length=32, batch_size=4)
    assert fisher["cls_output"].shape == (HIDDEN,) and fisher["layer_output"].shape == (LAYERS * HIDDEN,)
    assert all((v >= 0).all() and np.isfinite(v).all() and v.sum() > 0 for v in fisher.values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # no update
    # hand check of the coarse Fisher for one batch: (sum of d loss / d pooled)^2 / tokens / examples
    batch = model.encode(task.train_texts[:4])
    pooled = model.pooled(**batch)
    pooled.retain_grad()
    loss = torch.nn.functional.cross_entropy(model.classifier(pooled), torch.tensor(task.train_targets[:4]).long())
    loss.backward()
    expected = pooled.grad.sum(0).pow(2) / batch["attention_mask"].sum() / 4
    one = fisher_embedding(model, task, max_examples=4, max_length=32, batch_size=4)["cls_output"]
    assert np.allclose(one, expected.double().numpy(), rtol=1e-4, atol=1e-12)


def test_qa_window_labels_point_at_the_answer(setup: tuple[Path, Path]) -> None:
    from grainvl.data.tokenization import load_tokenizer
    from grainvl.tasks.text_qa import load_squad_task, train_features

    bert, text = setup
    tokenizer = load_tokenizer(bert)
    task = load_squad_task(text / "squad" / "relation_squad")
    examples = task.train[:6]
    features = train_features(tokenizer, examples, max_length=40, doc_stride=8)  # long contexts get cut
    assert features["input_ids"].shape[0] > len(examples)
    labelled = 0
    for ids, start, end in zip(features["input_ids"], features["start_positions"], features["end_positions"]):
        if start == 0:
            continue  # answer not in this window
        labelled += 1
        span = tokenizer.decode(ids[start : end + 1])
        assert any(span == a.lower() for e in examples for a in e["answers"]["text"])
    assert labelled >= len(examples) // 2


def test_squad_official_metric_hand_cases() -> None:
    examples = [
        {"id": "1", "answers": {"text": ["the red circle", "red"]}},
        {"id": "2", "answers": {"text": ["two"]}},
        {"id": "3", "answers": {"text": ["left of the star"]}},
    ]
    predictions = {"1": "Red circle!", "2": "three", "3": "left of star"}
    scores = squad_scores(examples, predictions)
    assert scores["exact_match"] == pytest.approx(100 * 2 / 3)  # articles and punctuation are ignored
    assert scores["f1"] == pytest.approx(100 * 2 / 3)
    partial = squad_scores([{"id": "x", "answers": {"text": ["big blue star"]}}], {"x": "blue star now"})
    assert partial["f1"] == pytest.approx(100 * 2 * (2 / 3 * 2 / 3) / (4 / 3))

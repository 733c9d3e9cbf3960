"""Video QA (MSRVTT-QA format): frames, labels, the classifier, fine-tune + evaluate ID/OOD + reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.tasks.base import DataOptions
from grainvl.tasks.registry import get_task

QUIET = ["train.progress=false", "train.tensorboard=false", "train.track_energy=false", "train.count_flops=false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(images=8, videos=10, resolution=64, split_fractions=(4, 2, 1, 1), text_scenes=0, dialogues=0)
    generate_world(cfg, out)
    return out


def test_batches_logits_and_loss(world: Path) -> None:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny")
    tokenizer = get_tokenizer(model.config)
    task = get_task("videoqa").with_data(DataOptions(batch_size=2))
    module = task.build(model, world, tokenizer)
    ans2label = json.loads((world / "annotations" / "msrvtt" / "ans2label.json").read_text())
    assert task.options["ans2label"] == ans2label  # saved with the run through task.json
    batch = next(task.train_stream(module, tokenizer, world, task.data, 0, 1))
    frames = model.config.frame_len
    assert batch["video"].shape == (2, frames, 3, 64, 64)
    records = [json.loads(line) for line in (world / "annotations" / "msrvtt" / "msrvtt_qa_train.jsonl").open()]
    for i, label in zip(batch["index"], batch["labels"].tolist()):
        assert label == ans2label.get(records[i]["answer"], -100)
    losses, _ = module(batch)
    logits = module.logits(batch["video"], batch["question_ids"], batch["question_atts"])
    assert logits.shape == (2, len(ans2label))
    expected = F.cross_entropy(logits, batch["labels"], ignore_index=-100)
    assert float(losses["videoqa_loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    # The video path is the model's: frames averaged per token after the frame embedding.
    vis, _ = model.encode_video(batch["video"])
    per_frame = model.vision_encoder(batch["video"].flatten(0, 1)).view(2, frames, *vis.shape[1:])
    torch.testing.assert_close(vis, (per_frame + model.absolute_frame_pos_embed[:, :frames]).mean(1))


def test_unknown_answers_are_ignored_in_training(world: Path) -> None:
    model = create_model("xvlm-tiny")
    tokenizer = get_tokenizer(model.config)
    task = get_task("videoqa", ans2label={"never": 0, "seen": 1}).with_data(DataOptions(batch_size=2))
    module = task.build(model, world, tokenizer)
    batch = next(task.train_stream(module, tokenizer, world, task.data, 0, 1))
    assert batch["labels"].tolist() == [-100, -100]
    losses, _ = module(batch)
    assert float(losses["videoqa_loss"]) == 0.0 and losses["videoqa_loss"].requires_grad


@pytest.mark.slow
def test_finetune_evaluate_and_reload(world: Path, tmp_path: Path) -> None:
    from grainvl.config import load_config
    from grainvl.recipes.finetune import FinetuneConfig, evaluate_run, finetune, load_finetuned

    run = tmp_path / "run"
    finetune(
        load_config(
            FinetuneConfig,
            None,
            ["train.steps=2", "data.batch_size=2", *QUIET],
            {"task": "videoqa", "model": "xvlm-tiny", "world": world, "train.run_dir": run},
        )
    )
    results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {(r["split"], r["metric"]) for r in results} >= {("id", "acc"), ("ood", "acc")}
    task, module, tokenizer = load_finetuned(run, world)
    first = task.evaluate(module, tokenizer, world, "id", tmp_path / "a")
    assert first == evaluate_run(run, world, "id", tmp_path / "b")
    saved = next(r for r in results if r["split"] == "id" and r["metric"] == "acc")["value"]
    assert first["acc"] == pytest.approx(saved)
    predictions = json.loads((tmp_path / "a" / "videoqa_result_test.json").read_text())
    ans2label = task.options["ans2label"]
    assert all(p["pred"] in ans2label for p in predictions)
    correct = sum(p["pred"] == p["answer"] for p in predictions)
    assert first["acc"] == pytest.approx(100.0 * correct / len(predictions))
    assert task.latency_call(module, tokenizer, world, 2)().shape == (2, len(ans2label))

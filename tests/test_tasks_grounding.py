"""Grounding: accuracy at IoU >= 0.5 on constructed predictions, training targets, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grainvl.data.downstream import GroundingTrainDataset, grounding_file
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.tasks.base import DataOptions, model_data_config
from grainvl.tasks.grounding import GroundingModule, grounding_metrics
from grainvl.tasks.registry import get_task

QUIET = ["train.progress=false", "train.tensorboard=false", "train.track_energy=false", "train.save_final=false"]


@pytest.fixture(scope="module")
def world(vlue_world: Path) -> Path:
    return vlue_world  # the shared session world (conftest.py)


class _Oracle(GroundingModule):
    """Predicts a box built from the ground truth of each expression, to test the evaluation alone."""

    def __init__(self, model, boxes: list[list[float]], size: tuple[int, int], shift: float) -> None:
        super().__init__(model)
        self.boxes, self.size, self.shift, self.calls = boxes, size, shift, 0

    def predict(self, image, text_ids, text_atts):  # type: ignore[override]
        out = []
        width, height = self.size
        for x, y, w, h in self.boxes[self.calls : self.calls + image.shape[0]]:
            x = x + self.shift * w  # slide right by a fraction of the width
            out.append([(x + w / 2) / width, (y + h / 2) / height, w / width, h / height])
        self.calls += image.shape[0]
        return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize(("shift", "expected"), [(0.0, 100.0), (0.2, 100.0), (0.5, 0.0)])
def test_accuracy_at_iou_half_on_constructed_predictions(world: Path, shift: float, expected: float) -> None:
    # Sliding a box by s·w keeps IoU = (1 - s) / (1 + s) (continuous): 1, 0.67 (correct), 0.33 (wrong).
    records = json.loads(grounding_file(world, "test").read_text())
    size = (records[0]["width"], records[0]["height"])
    assert all((r["width"], r["height"]) == size for r in records)
    model = create_model("xvlm-tiny")
    tokenizer = get_tokenizer(model.config)
    task = get_task("grounding").with_data(DataOptions(eval_batch_size=4))
    oracle = _Oracle(model, [r["bbox"] for r in records], size, shift)
    metrics = task.evaluate(oracle, tokenizer, world, "id")
    assert metrics["acc@0.5"] == pytest.approx(expected)


def test_metric_uses_inclusive_pixels() -> None:
    # The official computeIoU: last pixel x + w - 1, intersection only when x0 < x1 strictly.
    assert grounding_metrics([[0, 0, 10, 10]], [[0, 0, 10, 10]])["acc@0.5"] == 100.0
    half = grounding_metrics([[0, 0, 10, 10]], [[5, 0, 10, 10]])  # columns 5..9 shared: 50 / 150
    assert half["acc@0.5"] == 0.0 and half["miou"] == pytest.approx(100 / 3)
    assert grounding_metrics([[0, 0, 10, 10]], [[9, 0, 10, 10]])["miou"] == 0.0  # one shared column: 0


def test_training_target_is_the_box_after_the_crop(world: Path) -> None:
    model = create_model("xvlm-tiny")
    tokenizer = get_tokenizer(model.config)
    dcfg = model_data_config(model, augment=False)
    data = GroundingTrainDataset(grounding_file(world, "train"), world, tokenizer, dcfg)
    for index in range(5):
        sample = data.sample(index, epoch=0)
        cx, cy, w, h = sample["target_box"].tolist()
        assert 0 < w <= 1 and 0 < h <= 1 and cx - w / 2 + 1e-6 >= 0 and cx + w / 2 <= 1 + 1e-6
        assert cy - h / 2 + 1e-6 >= 0 and cy + h / 2 <= 1 + 1e-6
    assert not torch.equal(data.sample(0, 0)["image"], data.sample(0, 1)["image"])  # fresh crop per epoch


def test_training_step(world: Path) -> None:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny")
    tokenizer = get_tokenizer(model.config)
    task = get_task("grounding")
    module = task.build(model, world, tokenizer)
    stream = task.train_stream(module, tokenizer, world, DataOptions(batch_size=4), 0, 1)
    losses, _ = module(next(stream))
    assert set(losses) == {"bbox_loss", "giou_loss"} and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.slow
def test_finetune_evaluate_reload(world: Path, tmp_path: Path) -> None:
    from grainvl.config import load_config
    from grainvl.metrics.scoring import score_grounding
    from grainvl.recipes.finetune import FinetuneConfig, evaluate_run, finetune

    run = tmp_path / "run"
    report = finetune(
        load_config(
            FinetuneConfig,
            None,
            ["train.steps=2", "data.batch_size=4", *QUIET],
            {"task": "grounding", "model": "xvlm-tiny", "world": world, "train.run_dir": run},
        )
    )
    for split in ("test", "test_ood"):
        pred = run / "predictions" / f"grounding_{split}.json"
        scored = score_grounding(pred, grounding_file(world, split), echo=lambda _: None)
        assert scored == pytest.approx(report["evaluations"][split])
    assert evaluate_run(run, world, "ood") == report["evaluations"]["test_ood"]

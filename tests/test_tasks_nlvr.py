"""NLVR2: pairing of images and sentence, the two-CLS head, evaluation and the prediction file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grainvl.data.downstream import NLVRDataset, nlvr_file
from grainvl.data.pretrain import open_rgb
from grainvl.data.transforms import build_transform
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.tasks.base import DataOptions, model_data_config
from grainvl.tasks.nlvr import NLVRModule
from grainvl.tasks.registry import get_task

QUIET = ["train.progress=false", "train.tensorboard=false", "train.track_energy=false", "train.save_final=false"]


@pytest.fixture(scope="module")
def world(vlue_world: Path) -> Path:
    return vlue_world  # the shared session world (conftest.py)


@pytest.fixture(scope="module")
def module(world: Path) -> tuple[NLVRModule, object]:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny").eval()
    return NLVRModule(model).eval(), get_tokenizer(model.config)


def test_pairs_keep_file_order_and_label(world: Path, module: tuple) -> None:
    nlvr, tokenizer = module
    dcfg = model_data_config(nlvr.model, augment=False)
    data = NLVRDataset(nlvr_file(world, "test"), world, tokenizer, dcfg, train=False)
    record = data.records[0]
    sample = data.sample(0, 0)
    test = build_transform("test", dcfg.resolution, dcfg.mean, dcfg.std)
    left, right = (test(open_rgb(p, world, True, data.path, "index 0"))[0] for p in record["images"])
    assert torch.equal(sample["image"][0], left) and torch.equal(sample["image"][1], right)
    assert sample["label"] == int(record["label"] in (True, "True"))
    batch = data.collate([data.sample(i, 0) for i in range(3)])
    assert batch["image"].shape == (3, 2, 3, dcfg.resolution, dcfg.resolution)
    assert batch["label"].tolist() == data.labels[:3]


def test_head_concatenates_left_then_right_cls(module: tuple) -> None:
    nlvr, _ = module
    m = nlvr.model
    torch.manual_seed(1)
    image = torch.randn(2, 2, 3, 64, 64)
    ids = torch.tensor([[101, 2054, 2003, 102], [101, 2023, 102, 0]])
    atts = (ids != 0).long()
    with torch.no_grad():
        logits = nlvr.logits(image, ids, atts)
        text = m.encode_text(ids, atts)
        cls = []
        for side in (0, 1):  # each image fused separately with the same text
            vis, vis_atts = m.encode_image(image[:, side])
            cls.append(m.fuse(text, atts, vis, vis_atts)[:, 0])
        expected = nlvr.cls_head(torch.cat(cls, dim=-1))
        swapped = nlvr.logits(image.flip(1), ids, atts)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits, swapped)  # order matters: [left, right] is not [right, left]


def test_training_step_reaches_the_head(world: Path) -> None:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny")
    tokenizer = get_tokenizer(model.config)
    task = get_task("nlvr2")
    nlvr = task.build(model, world, tokenizer)
    stream = task.train_stream(nlvr, tokenizer, world, DataOptions(batch_size=4), 0, 1)
    losses, metrics = nlvr(next(stream))
    assert set(losses) == {"nlvr_loss"} and torch.isfinite(losses["nlvr_loss"]) and 0 <= metrics["train_acc"] <= 1
    losses["nlvr_loss"].backward()
    assert nlvr.cls_head[0].weight.grad is not None


@pytest.mark.slow
def test_finetune_evaluate_reload(world: Path, tmp_path: Path) -> None:
    from grainvl.config import load_config
    from grainvl.metrics.scoring import score_nlvr2
    from grainvl.recipes.finetune import FinetuneConfig, evaluate_run, finetune, load_finetuned

    run = tmp_path / "run"
    report = finetune(
        load_config(
            FinetuneConfig,
            None,
            ["train.steps=2", "data.batch_size=4", *QUIET],
            {"task": "nlvr2", "model": "xvlm-tiny", "world": world, "train.run_dir": run},
        )
    )
    for split in ("test", "test_ood"):
        acc = report["evaluations"][split]["acc"]
        gt = nlvr_file(world, split)
        preds = json.loads((run / "predictions" / f"nlvr2_{split}.json").read_text())
        assert len(preds) == len(json.loads(gt.read_text()))
        assert score_nlvr2(run / "predictions" / f"nlvr2_{split}.json", gt, echo=lambda _: None)["acc"] == acc
    assert evaluate_run(run, world, "id") == report["evaluations"]["test"]
    from safetensors.torch import load_file

    _, loaded, _ = load_finetuned(run)
    head = load_file(run / "head.safetensors")
    assert set(head) == {k for k in loaded.state_dict() if k.startswith("cls_head.")}
    for key, value in head.items():
        assert torch.equal(loaded.state_dict()[key], value)

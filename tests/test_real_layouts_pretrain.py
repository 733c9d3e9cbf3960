"""Pre-training on data shipped the official X-VLM / X²-VLM way: folders of JSON-lines shards named by an
official pre-training YAML, base64 images, region lines with pixel boxes; every file looked up before step 1.

The dataset below is tiny (32×32 images): ``data/pretrain/coco_bs64/`` holds two image–caption shards
(``binary`` base64 + ``desc``, X²-VLM's keys) and a ``_SUCCESS`` marker, ``data/pretrain/coco_objs/`` one region
shard (``image`` paths under ``images/``, ``elems`` with ``bb``/``caption``/``attributes``), and
``data/finetune/coco_test.json`` (ALBEF retrieval JSON) is the zero-shot ``test`` split.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from grainvl.cli import main
from grainvl.config import with_values
from grainvl.data.pretrain import ImageTextDataset, PretrainDataConfig, PretrainDataFiles, PretrainFiles
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.recipes.pretrain import PretrainConfig, config_tree, preflight

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
QUIET = [
    "train.progress=false",
    "train.tensorboard=false",
    "train.track_energy=false",
    "train.count_flops=false",
    "train.log_every=1",
]


def _picture(colour: tuple[int, int, int]) -> Image.Image:
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[8:24, 4:20] = colour
    return Image.fromarray(pixels)


def _lines(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _b64(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


OFFICIAL = {
    "train_file": ["data/pretrain/coco_bs64"],
    "train_dataset_size": 4,
    "images": {"image_key": "binary", "is_image_rpath": False, "caption_key": "desc", "tokenized": False,
               "batch_size": 2, "num_workers": 4},
    "train_file_regions": ["data/pretrain/coco_objs"],
    "regions": {"image_key": "image", "is_image_rpath": True, "caption_key": "caption", "tokenized": False,
                "iter_perc": 0.5, "batch_size": 4, "max_images": 2, "max_regions": 5, "min_perc_in_image": 0.5,
                "num_workers": 4},
    "image_res": 224,
    "patch_size": 16,
    "max_tokens": 40,
    "mask_prob": 0.5,
    "max_masks": 12,
    "optimizer": {"opt": "adamW", "lr": 1e-4, "weight_decay": 0.01, "lr_mult": 2},
    "schedular": {"sched": "linear", "lr": 1e-4, "epochs": 41, "num_warmup_steps": 1},
    "accelerator": {"SYNCBN": False, "FP16_OPT_LEVEL": "O1", "RNG_SEED": 42, "GRAD_ACCUMULATE_STEPS": 1,
                    "CLIP_GRAD_NORM": 1.0},
}  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("official_pretrain")
    names = list(COLOURS)
    for name in names:
        path = root / "images" / "coco" / "train2014" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        _picture(COLOURS[name]).save(path)
    shards = root / "data" / "pretrain" / "coco_bs64"
    texts = [{"binary": _b64(_picture(COLOURS[n])), "desc": f"a {n} square on black"} for n in names]
    _lines(shards / "part-00000", texts[:2])
    _lines(shards / "part-00001", texts[2:])
    (shards / "_SUCCESS").write_text("")
    regions = [
        {
            "image": f"coco/train2014/{n}.jpg",
            "width": 32,
            "height": 32,
            "caption": f"a {n} square",
            "elems": [{"bb": [4, 8, 16, 16], "caption": "square", "attributes": [n]}],
        }
        for n in names
    ]
    _lines(root / "data" / "pretrain" / "coco_objs" / "part-00000", regions)
    test = [{"image": f"coco/train2014/{n}.jpg", "caption": [f"a {n} square"], "image_id": f"coco_{n}"} for n in names]
    (root / "data" / "finetune").mkdir(parents=True)
    (root / "data" / "finetune" / "coco_test.json").write_text(json.dumps(test), encoding="utf-8")
    (root / "official.yaml").write_text(yaml.safe_dump(OFFICIAL), encoding="utf-8")
    return root


def _pretrain(root: Path, out: Path, config: Path, *extra: str) -> int:
    args = ["pretrain", "--config", str(config), "--data-root", str(root), "--image-root", str(root / "images")]
    return main([*args, "--model", "xvlm-tiny", "--steps", "2", "--out", str(out), *extra, "--set", *QUIET])


def test_official_config_is_translated(root: Path, capsys: pytest.CaptureFixture) -> None:
    tree = config_tree(yaml.safe_load((root / "official.yaml").read_text()))
    assert tree["files"]["train_file"] == ["data/pretrain/coco_bs64"]
    assert tree["files"]["train_file_regions"] == ["data/pretrain/coco_objs"]
    data = tree["data"]
    assert (data["image_batch_size"], data["region_batch_size"], data["region_images"]) == (2, 4, 2)
    assert (data["mask_prob"], data["max_masks"], data["world"]) == (0.5, 12, ".")
    assert tree["optim"] == {"lr": 1e-4, "weight_decay": 0.01, "lr_mult": 2}
    assert tree["sched"] == {"warmup_steps": 1} and tree["train"] == {"clip_grad": 1.0, "grad_accum": 1, "seed": 42}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image_res" in err[0] and "regions.iter_perc" in err[0]


def test_unsupported_image_key_is_one_line(root: Path) -> None:
    tree = {**OFFICIAL, "images": {**OFFICIAL["images"], "is_image_rpath": True}}  # paths under "binary"
    with pytest.raises(ValueError, match=r"images\.image_key 'binary' with is_image_rpath True"):
        config_tree(tree)


def test_shards_of_a_folder_are_one_stream(root: Path) -> None:
    files = PretrainFiles.from_sources(root, PretrainDataFiles(train_file=["data/pretrain/coco_bs64"]))
    assert [p.name for p in files.image] == ["part-00000", "part-00001"]  # no _SUCCESS
    assert files.region is None and files.root == root


def test_files_found_by_name_without_a_config(tmp_path: Path) -> None:
    other = tmp_path / "r"
    _lines(other / "pretrain" / "image_text_coco.jsonl", [{"image": "a.jpg", "caption": "x"}])
    _lines(
        other / "pretrain" / "region_vg.jsonl", [{"image": "a.jpg", "elems": [{"bb": [0, 0, 1, 1], "caption": "y"}]}]
    )
    files = PretrainFiles.find(other, "train")
    assert files.image == other / "pretrain" / "image_text_coco.jsonl"
    assert files.region == other / "pretrain" / "region_vg.jsonl" and files.video is None


def test_preflight_finds_the_test_split_and_skips_the_missing_one(root: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = with_values(PretrainConfig(), {"data.world": str(root), "files.train_file": ["data/pretrain/coco_bs64"]})
    plan = preflight(cfg)
    assert list(plan.evals) == ["test"]
    assert plan.evals["test"].retrieval == root / "data" / "finetune" / "coco_test.json"
    assert plan.evals["test"].grounding is None
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("'test_ood'" in line for line in err) == 1 and all(line.startswith("pretrain: ") for line in err)


def test_official_yaml_pretrains_and_evaluates(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert _pretrain(root, run, root / "official.yaml") == 0
    captured = capsys.readouterr()
    assert "zero-shot on test (4 images, 4 captions)" in captured.out
    skipped = [line for line in captured.err.splitlines() if "test_ood" in line]
    assert len(skipped) == 1 and "skipping" in skipped[0]
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in losses if "loss" in r) == [1, 2]
    results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {r["split"] for r in results} == {"id"} and "txt_r1" in {r["metric"] for r in results}
    assert (run / "model" / "model.safetensors").exists()


def test_missing_training_file_fails_before_step_1(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "missing.yaml"
    config.write_text(yaml.safe_dump({**OFFICIAL, "train_file_regions": ["data/pretrain/vg_objs"]}), encoding="utf-8")
    run = tmp_path / "run"
    assert _pretrain(root, run, config) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("official config:")]
    assert len(err) == 1 and "train_file_regions" in err[0] and "vg_objs" in err[0]
    assert not (run / "checkpoints").exists() and not (run / "model").exists() and not (run / "metrics.jsonl").exists()


def test_missing_eval_file_named_in_config_is_skipped(root: Path, tmp_path: Path) -> None:
    cfg = with_values(
        PretrainConfig(),
        {"data.world": str(root), "files.train_file": ["data/pretrain/coco_bs64"], "eval.splits": ["val"]},
    )
    assert preflight(cfg, announce=False).evals == {}


def test_the_datasets_read_base64_shards(root: Path) -> None:
    tokenizer = get_tokenizer(create_model("xvlm-tiny").config)
    files = PretrainFiles.from_sources(root, PretrainDataFiles(train_file="data/pretrain/coco_bs64"))
    dataset = ImageTextDataset(files.image, files.root, tokenizer, PretrainDataConfig(resolution=32, patch_size=16))
    assert len(dataset) == 4 and dataset.at(3)[0].name == "part-00001" and dataset[3]["image"].shape == (3, 32, 32)

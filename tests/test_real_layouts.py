"""Real data in the official layouts drops in: no renaming, no manifest, official configs as they ship.

The dataset below is written the way the real ones ship (tiny: 32×32 images): ALBEF retrieval json
with string image ids under ``data/finetune/``, VQA v2 questions + annotations in their own folder,
X-VLM RefCOCO+ json, NLVR2 JSON lines (``nlvr_dev.json``), COCO images under ``images/coco/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from grainvl.cli import main
from grainvl.data.check import check_layout, check_path, layout_from_config
from grainvl.data.layout import DataFiles, DataLayout, split_of
from grainvl.data.pretrain import _decode

QUIET = ["train.progress=false", "train.tensorboard=false", "train.save_final=false", "train.track_energy=false"]
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}


def _coco(sub: str, image_id: int) -> str:
    return f"{sub}/COCO_{sub}_{image_id:012d}.jpg"


def _image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[8:24, 8:24] = colour
    Image.fromarray(pixels).save(path)


def _json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def make_real_dataset(root: Path) -> Path:
    coco, finetune = root / "images" / "coco", root / "data" / "finetune"
    names = list(COLOURS)
    train = {i + 1: n for i, n in enumerate(names)}  # COCO ids 1..4 in train2014
    val = {i + 11: n for i, n in enumerate(names)}  # 11..14 in val2014
    for image_id, name in train.items():
        _image(coco / _coco("train2014", image_id), COLOURS[name])
    for image_id, name in val.items():
        _image(coco / _coco("val2014", image_id), COLOURS[name])
    # ALBEF / X-VLM retrieval: string ids, one caption per train record, lists on val/test.
    _json(
        finetune / "coco_train.json",
        [
            {"image": _coco("train2014", i), "caption": f"a {n} square", "image_id": f"coco_{i}"}
            for i, n in train.items()
        ],
    )
    for split in ("val", "test"):
        _json(
            finetune / f"coco_{split}.json",
            [{"image": _coco("val2014", i), "caption": [f"a {n} square", f"{n} box"]} for i, n in val.items()],
        )
    # VQA v2 official pair, in its own folder.
    for sub, ids in (("train2014", train), ("val2014", val)):
        info = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": sub}
        questions = [{"image_id": i, "question": "what color is the square?", "question_id": i * 10} for i in ids]
        anns = [
            {
                "question_type": "what color",
                "multiple_choice_answer": n,
                "answers": [{"answer": n, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
                "image_id": i,
                "answer_type": "other",
                "question_id": i * 10,
            }
            for i, n in ids.items()
        ]
        _json(root / "vqav2" / f"v2_OpenEnded_mscoco_{sub}_questions.json", {**info, "task_type": "Open-Ended",
                                                                              "questions": questions})  # fmt: skip
        _json(root / "vqav2" / f"v2_mscoco_{sub}_annotations.json", {**info, "annotations": anns})
    # X-VLM RefCOCO+ json (COCO pixels).
    for split, sub, ids in (("train", "train2014", train), ("val", "val2014", val), ("test", "val2014", val)):
        refs = [
            {"image": _coco(sub, i), "text": f"the {n} square", "ref_id": i, "bbox": [8, 8, 16, 16]}
            for i, n in ids.items()
        ]
        _json(finetune / f"refcoco+_{split}.json", refs)
    # NLVR2 as JSON lines, images in their own folder.
    nlvr = root / "images" / "nlvr2"
    for name, colour in COLOURS.items():
        _image(nlvr / f"{name}.png", colour)
    for split in ("train", "dev", "test"):
        lines = [
            {"images": [f"{a}.png", f"{b}.png"], "sentence": f"the left square is {a}", "label": "True"}
            for a, b in zip(names, names[1:] + names[:1])
        ] + [{"images": ["red.png", "blue.png"], "sentence": "the left square is blue", "label": "False"}]
        (finetune / f"nlvr_{split}.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_real_dataset(tmp_path_factory.mktemp("real"))


# ---------------------------------------------------------------------------------------------- layout
def test_layout_finds_official_names(real: Path) -> None:
    layout = DataLayout(real)
    assert layout.split_files("retrieval", "train") == [real / "data/finetune/coco_train.json"]
    assert layout.split_files("nlvr2", "val") == [real / "data/finetune/nlvr_dev.json"]
    assert [p.name for p in layout.split_files("vqa", "train")] == [
        "v2_OpenEnded_mscoco_train2014_questions.json",
        "v2_mscoco_train2014_annotations.json",
    ]
    assert layout.split_files("retrieval", "test_ood") == []
    assert split_of("refcoco+_testA.json") == "testA" and split_of("coco_test_ood.json") == "test_ood"


def test_check_resolves_images_like_the_trainer(real: Path, tmp_path: Path) -> None:
    assert not check_path(real).ok  # images live under images/coco, so the root alone cannot find them
    report = check_path(real / "data/finetune", image_root=real / "images/coco", fmt="albef-retrieval")
    assert report.ok, report.errors
    finetune = real / "data/finetune"
    tree = {
        "train_file": [str(finetune / "coco_train.json")],
        "test_file": str(finetune / "coco_test.json"),
        "image_root": str(real / "images/coco/"),
    }
    layout, task = layout_from_config(tree)
    assert task == "retrieval"
    assert check_layout(layout, task).ok


def test_check_names_each_bad_record(real: Path, tmp_path: Path) -> None:
    bad = tmp_path / "coco_train.json"
    records = json.loads((real / "data/finetune/coco_train.json").read_text())
    records[1]["image"] = "train2014/missing.jpg"
    records[3]["caption"] = ""
    bad.write_text(json.dumps(records))
    layout = DataLayout(tmp_path, DataFiles(train_file=[str(bad)], image_root=str(real / "images/coco")))
    report = check_layout(layout, "retrieval", skip_bad=True)
    assert [str(e).split(": ")[1] for e in report.errors] == ["index 1", "index 3"]


def test_sixteen_bit_png_is_scaled(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray((np.arange(1024).reshape(32, 32) * 64).astype(np.uint16)).save(path)
    pixels = np.asarray(_decode(path))
    assert pixels.min() == 0 and 100 < pixels.mean() < 160  # not pure white


# ---------------------------------------------------------------------------------------------- runs
def _finetune(task: str, out: Path, *args: str) -> dict:
    argv = ["finetune", task, "--model", "xvlm-tiny", "--out", str(out), "--steps", "2", *args]
    assert main([*argv, "--set", "data.batch_size=2", "data.eval_batch_size=4", *QUIET]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retrieval", "vqa", "nlvr2", "grounding"])
def test_finetune_with_data_root(real: Path, tmp_path: Path, task: str) -> None:
    images = real / "images" / ("nlvr2" if task == "nlvr2" else "coco")
    extra = ["eval_splits=[val]"] if task == "vqa" else []
    out = tmp_path / task
    argv = ["finetune", task, "--model", "xvlm-tiny", "--out", str(out), "--steps", "2"]
    argv += ["--data-root", str(real), "--image-root", str(images)]
    assert main([*argv, "--set", "data.batch_size=2", "data.eval_batch_size=4", *QUIET, *extra]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] and all(summary["evaluations"].values())


@pytest.mark.slow
def test_official_retrieval_config(real: Path, tmp_path: Path) -> None:
    config = {
        "train_file": [str(real / "data/finetune/coco_train.json")],
        "val_file": str(real / "data/finetune/coco_val.json"),
        "test_file": str(real / "data/finetune/coco_test.json"),
        "image_root": str(real / "images/coco/"),
        "vision_config": "configs/config_swinB_384.json",
        "batch_size_train": 2,
        "batch_size_test": 4,
        "k_test": 4,
        "optimizer": {"opt": "adamW", "lr": 3e-5, "weight_decay": 0.01, "lr_mult": 2},
        "schedular": {"sched": "linear", "lr": 3e-5, "epochs": 10, "num_warmup_steps": 0.1},
    }
    path = tmp_path / "Retrieval_coco.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    argv = ["finetune", "retrieval", "--config", str(path), "--model", "xvlm-tiny", "--out", str(out), "--steps", "2"]
    assert main([*argv, "--set", *QUIET]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["evaluations"]) == ["test"]
    assert main(["data", "check", "--config", str(path)]) == 0
    assert main(["eval", "retrieval", "--model", str(out), "--world", str(Path.cwd()), "--split", "test"]) in (0, 2)

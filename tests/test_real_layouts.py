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
    assert main(["eval", "retrieval", "--model", str(out), "--world", str(Path.cwd()), "--split", "test"]) == 0


# ---------------------------------------------------------------------------------------------- official configs
def _official_config(real: Path, task: str) -> dict:
    """The data keys of the official X-VLM / X²-VLM configs (configs/finetune/*.yaml) for ``task``."""
    finetune, coco = real / "data/finetune", str(real / "images/coco/")
    if task == "retrieval":  # Retrieval_coco.yaml
        return {"train_file": [str(finetune / "coco_train.json")], "val_file": str(finetune / "coco_val.json"),
                "test_file": str(finetune / "coco_test.json"), "image_root": coco, "k_test": 4}  # fmt: skip
    if task == "vqa":  # VQA.yaml: X-VLM json with answer lists, vqa_root / vg_root, answer_list
        for split, sub, ids in (("train", "train2014", range(1, 5)), ("val", "val2014", range(11, 15))):
            records = [
                {"question_id": i * 10, "question": "what color is the square?", "image": _coco(sub, i),
                 "answer": [list(COLOURS)[(i - 1) % 10 % 4]] * 10, "dataset": "vqa"}
                for i in ids
            ]  # fmt: skip
            _json(finetune / f"vqa_{split}.json", records)
        _json(finetune / "answer_list.json", list(COLOURS))
        answers = str(finetune / "answer_list.json")
        return {"train_file": [str(finetune / "vqa_train.json")], "test_file": [str(finetune / "vqa_val.json")],
                "answer_list": answers, "vqa_root": coco, "vg_root": coco, "k_test": 4}  # fmt: skip
    if task == "nlvr2":  # NLVR.yaml
        return {"train_file": [str(finetune / "nlvr_train.json")], "val_file": [str(finetune / "nlvr_dev.json")],
                "test_file": [str(finetune / "nlvr_test.json")], "image_root": str(real / "images/nlvr2/")}  # fmt: skip
    # Grounding_bbox.yaml (RefCOCO+): two test files, one split each
    return {"train_file": [str(finetune / "refcoco+_train.json")],
            "test_file": [str(finetune / "refcoco+_val.json"), str(finetune / "refcoco+_test.json")],
            "image_root": coco, "careful_hflip": True}  # fmt: skip


@pytest.mark.parametrize("task", ["nlvr2", "retrieval", "vqa", "grounding"])  # each well under a second
def test_official_config_finetunes_and_evaluates(
    real: Path, tmp_path: Path, task: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {**_official_config(real, task), "batch_size_train": 2, "batch_size_test": 4,
              "optimizer": {"opt": "adamW", "lr": 3e-5, "weight_decay": 0.01, "lr_mult": 2},
              "schedular": {"sched": "linear", "lr": 3e-5, "epochs": 1, "num_warmup_steps": 0.1}}  # fmt: skip
    path = tmp_path / "official.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    argv = ["finetune", task, "--config", str(path), "--model", "xvlm-tiny", "--out", str(out), "--steps", "2"]
    assert main([*argv, "--set", *QUIET]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] and all(summary["evaluations"].values())
    assert "only" in capsys.readouterr().err  # the small-split warning, one line per evaluated split
    assert main(["data", "check", "--config", str(path)]) == 0
    capsys.readouterr()
    assert main(["eval", task, "--model", str(out), "--world", str(Path.cwd()), "--split", "test"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["metrics"], printed
    assert "not meaningful" in printed.err


# ---------------------------------------------------------------------------------------------- data check gaps
def test_check_walks_up_to_the_data_root(real: Path, tmp_path: Path) -> None:
    world = tmp_path / "W"
    _image(world / "images/val/a.jpg", COLOURS["red"])
    _json(world / "annotations/retrieval/coco_val.json", [{"image": "images/val/a.jpg", "caption": ["a red square"]}])
    assert check_path(world / "annotations/retrieval").ok  # no manifest: W holds the images
    report = check_path(real / "data/finetune", fmt="albef-retrieval")
    assert not report.ok and "--image-root" in report.hint  # images/coco is not above: one line says what to pass


def test_check_opens_vqa_v2_images(real: Path, tmp_path: Path) -> None:
    assert check_path(real / "vqav2", image_root=real / "images/coco").ok
    bad = tmp_path / "vqav2"
    bad.mkdir()
    doc = json.loads((real / "vqav2/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    doc["questions"][1]["image_id"] = 999
    _json(bad / "v2_OpenEnded_mscoco_val2014_questions.json", doc)
    report = check_path(bad, image_root=real / "images/coco", skip_bad=True)
    assert [str(e).split(": ")[1] for e in report.errors] == ["question 1"]
    assert "COCO_val2014_000000000999.jpg" in str(report.errors[0])


@pytest.mark.parametrize("task", ["vqa", "nlvr2", "grounding"])
def test_check_names_each_bad_record_of_every_task(real: Path, tmp_path: Path, task: str) -> None:
    finetune = real / "data/finetune"
    if task == "nlvr2":
        lines = [json.loads(x) for x in (finetune / "nlvr_train.json").read_text().splitlines()]
        lines[1]["images"] = ["red.png", "missing.png"]
        lines[3]["label"] = "maybe"
        bad = tmp_path / "nlvr_train.json"
        bad.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        images = real / "images/nlvr2"
    else:
        _official_config(real, "vqa")  # writes vqa_train.json
        name = "vqa_train.json" if task == "vqa" else "refcoco+_train.json"
        records = json.loads((finetune / name).read_text())
        records[1]["image"] = "train2014/missing.jpg"
        records[3]["question" if task == "vqa" else "text"] = ""
        bad = tmp_path / name
        bad.write_text(json.dumps(records))
        images = real / "images/coco"
    layout = DataLayout(tmp_path, DataFiles(train_file=[str(bad)], image_root=str(images), vqa_root=str(images)))
    report = check_layout(layout, task, skip_bad=True)
    expected = ["line 2", "line 4"] if task == "nlvr2" else ["index 1", "index 3"]  # JSON lines: 1-based lines
    assert [str(e).split(": ")[1] for e in report.errors] == expected, report.errors


def test_msrvtt_official_names(tmp_path: Path) -> None:
    folder = tmp_path / "data/finetune"
    for name in ("msrvtt_ret_train7k.json", "msrvtt_ret_test1k.json", "msrvtt_qa_train.json", "train_ans2label.json"):
        _json(folder / name, [])
    layout = DataLayout(tmp_path)
    assert layout.split_files("video_retrieval", "train") == [folder / "msrvtt_ret_train7k.json"]
    assert layout.split_files("video_retrieval", "test") == [folder / "msrvtt_ret_test1k.json"]
    assert layout.split_files("videoqa", "train") == [folder / "msrvtt_qa_train.json"]
    assert layout.ans2label() == folder / "train_ans2label.json"

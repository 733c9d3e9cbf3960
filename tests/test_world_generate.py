"""End-to-end: generate small worlds, check determinism, validate every file, detect corruption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from grainvl.cli import main
from grainvl.data.check import check_path
from grainvl.data.world.generate import WorldConfig, generate_world, split_plan

SMALL = WorldConfig(
    images=24, videos=8, seed=3, resolution=96, text_scenes=60, text_train=20, text_dev=10, dialogues=10
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(SMALL, out)
    return out


def test_split_plan_gives_every_split_an_item() -> None:
    plan = dict(split_plan(10, (0.7, 0.1, 0.1, 0.1)))
    assert plan == {"train": 7, "val": 1, "test": 1, "test_ood": 1}
    assert sum(dict(split_plan(5, (0.7, 0.1, 0.1, 0.1))).values()) == 5
    assert all(n >= 1 for n in dict(split_plan(5, (0.7, 0.1, 0.1, 0.1))).values())


def test_world_has_every_annotation_kind(world: Path) -> None:
    manifest = json.loads((world / "manifest.json").read_text())
    files = manifest["files"]
    for expected in [
        "annotations/pretrain/train/image_text.jsonl",
        "annotations/pretrain/train/region.jsonl",
        "annotations/pretrain/train/video.jsonl",
        "annotations/pretrain/train/para_text.jsonl",
        "annotations/retrieval/coco_test.json",
        "annotations/captioning/coco_karpathy_val_gt.json",
        "annotations/vqa/v2_OpenEnded_mscoco_train_questions.json",
        "annotations/vqa/v2_mscoco_train_annotations.json",
        "annotations/vqa/answer_list.json",
        "annotations/nlvr2/nlvr_train.json",
        "annotations/refcoco+/refcoco+_train.json",
        "annotations/msrvtt/msrvtt_qa_train.jsonl",
        "annotations/vlue/vqa_vlue_test.json",
        "annotations/iglue/xvnli/de/test.jsonl",
        "annotations/iglue/marvl/zh/test.jsonl",
        "dialogue/convai2/train_both_original.txt",
    ]:
        assert expected in files, expected
    assert sum(1 for f in files if f.startswith("text/glue/") and f.endswith("train.tsv")) >= 11
    assert sum(1 for f in files if f.startswith("text/squad/") and f.endswith("train-v1.1.json")) >= 11
    assert manifest["counts"]["test_ood"]["images"] >= 1
    assert manifest["ood"]["held_out_combos"]


def test_world_passes_data_check(world: Path) -> None:
    report = check_path(world)
    assert report.ok, [str(e) for e in report.errors]
    assert len(report.rows) >= 30


def test_same_options_give_identical_manifest_and_workers_do_not_matter(world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_world(SMALL, again, workers=2)
    assert (again / "manifest.json").read_bytes() == (world / "manifest.json").read_bytes()
    other = tmp_path / "other"
    generate_world(WorldConfig(**{**SMALL.__dict__, "seed": 4}), other)
    assert (other / "manifest.json").read_bytes() != (world / "manifest.json").read_bytes()


def test_corrupt_image_and_json_line_are_both_named(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(world, bad)
    image = bad / "images" / "train" / "00000002.jpg"
    image.write_bytes(image.read_bytes()[:200])  # truncated JPEG
    region = bad / "annotations" / "pretrain" / "train" / "region.jsonl"
    lines = region.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:40] + "\n"  # a cut JSON line (line 3)
    region.write_text("".join(lines))

    code = main(["data", "check", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert "region.jsonl: line 3" in err and "malformed JSON" in err
    assert "00000002.jpg" in err
    assert "Traceback" not in err


def test_cli_world_reports_bad_option_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["world", "--out", str(tmp_path / "w"), "--resolution", "20", "--quiet"])
    assert code == 2
    assert "resolution" in capsys.readouterr().err


@pytest.mark.slow
def test_shards_are_written_and_readable(tmp_path: Path) -> None:
    from grainvl.data.formats.webdataset import iter_shard

    cfg = WorldConfig(**{**SMALL.__dict__, "shards": True, "shard_size": 10, "videos": 0})
    generate_world(cfg, tmp_path / "w")
    shards = sorted((tmp_path / "w" / "shards").glob("*.tar"))
    assert len(shards) == 3  # 24 images, 10 per shard
    samples = [s for shard in shards for s in iter_shard(shard)]
    assert len(samples) == 24
    assert samples[0]["json"]["image_id"] == 0 and samples[0]["jpg"][:2] == b"\xff\xd8"

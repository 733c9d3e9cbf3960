"""``check_path``: every recognised file of a folder is read with image checking, errors of
different files are all reported, and the manifest's sha256 list is verified."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from grainvl.data import check
from grainvl.data.formats import convai2, glue, squad, webdataset  # noqa: F401  (registers the formats)
from grainvl.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "formats" / "text"


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (40, 90, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def make_world(root: Path, bad_tsv_lines: str = "", bad_images: int = 0) -> Path:
    """A small world-shaped folder: GLUE, SQuAD and ConvAI2 files, one shard, an image, a manifest."""
    (root / "text/glue/SST-2").mkdir(parents=True)
    tsv = (FIXTURES / "sst2_train.tsv").read_text(encoding="utf-8") + bad_tsv_lines
    (root / "text/glue/SST-2/train.tsv").write_text(tsv, encoding="utf-8")
    (root / "text/squad/scenes").mkdir(parents=True)
    (root / "text/squad/scenes/train-v1.1.json").write_bytes((FIXTURES / "train-v1.1.json").read_bytes())
    (root / "dialogue/convai2").mkdir(parents=True)
    (root / "dialogue/convai2/train_both_original.txt").write_bytes((FIXTURES / "train_both_original.txt").read_bytes())
    (root / "images/train").mkdir(parents=True)
    (root / "images/train/00000001.jpg").write_bytes(jpeg_bytes())
    with webdataset.ShardWriter(str(root / "shards/train-%06d.tar")) as writer:
        for i in range(3):
            jpg = b"\xff\xd8\xff garbage" if i < bad_images else jpeg_bytes()
            writer.write({"__key__": f"{i:08d}", "jpg": jpg, "json": {"image_id": i}})
    (root / ".scratch.tmp").write_text("half-written", encoding="utf-8")
    (root / "README.md").write_text("notes", encoding="utf-8")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    digests = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    (root / "manifest.json").write_text(json.dumps({"seed": 0, "files": digests}), encoding="utf-8")
    return root


def test_clean_folder_is_ok_with_counts_per_file(tmp_path: Path) -> None:
    report = check.check_path(make_world(tmp_path / "W"))
    assert report.ok, check.format_report(report)
    # The manifest row first (it counts the files it lists), then the data files in sorted path order.
    assert [(row.file, row.format, row.records) for row in report.rows] == [
        ("manifest.json", "manifest", 6),
        ("dialogue/convai2/train_both_original.txt", "convai2", 2),
        ("shards/train-000000.tar", "webdataset", 3),
        ("text/glue/SST-2/train.tsv", "glue-tsv", 3),
        ("text/squad/scenes/train-v1.1.json", "squad-v1.1", 5),
    ]
    assert report.unrecognised == ["README.md"]  # images, dot-files and the manifest are not listed
    assert check.format_report(report).splitlines()[-1] == "OK: 5 file(s), 13 record(s), 0 error(s)"


def test_errors_in_different_files_are_all_reported(tmp_path: Path) -> None:
    root = make_world(tmp_path / "W", bad_tsv_lines="only one field\n", bad_images=1)
    report = check.check_path(root)
    assert not report.ok
    assert [(e.record, Path(e.path).name) for e in report.errors] == [
        ("sample 0 (key '00000000')", "train-000000.tar"),
        ("line 5", "train.tsv"),
    ]
    text = check.format_report(report)
    assert "corrupt image member '00000000.jpg'" in text
    assert "train.tsv: line 5: expected 2 tab-separated fields, got 1" in text
    assert text.splitlines()[-1].startswith("FAILED: 5 file(s)")


def test_skip_bad_lists_every_bad_record(tmp_path: Path) -> None:
    root = make_world(tmp_path / "W", bad_tsv_lines="one\n\t1\n", bad_images=2)
    report = check.check_path(root, skip_bad=True)
    assert [e.record for e in report.errors] == [
        "sample 0 (key '00000000')",
        "sample 1 (key '00000001')",
        "line 5",
        "line 6",
    ]
    records = {row.file: row.records for row in report.rows}
    assert records["shards/train-000000.tar"] == 1 and records["text/glue/SST-2/train.tsv"] == 3


def test_manifest_mismatch_and_missing_files(tmp_path: Path) -> None:
    root = make_world(tmp_path / "W")
    (root / "images/train/00000001.jpg").write_bytes(jpeg_bytes() + b"\0")
    (root / "README.md").unlink()
    report = check.check_path(root, skip_bad=True)
    manifest_errors = [(e.record, e.reason.split(":")[0]) for e in report.errors]
    assert manifest_errors == [
        ("file README.md", "listed file is missing"),
        ("file images/train/00000001.jpg", "sha256 mismatch"),
    ]
    assert all(Path(e.path).name == "manifest.json" for e in report.errors)
    (root / "manifest.json").write_text('{"files": {"../outside.txt": "' + "0" * 64 + '"}}', encoding="utf-8")
    [error] = check.check_path(root).errors
    assert "without '..'" in error.reason


def test_single_file_format_from_name_or_flag(tmp_path: Path) -> None:
    report = check.check_path(FIXTURES / "mrpc_dev.tsv")
    assert [(r.file, r.format, r.records) for r in report.rows] == [("mrpc_dev.tsv", "glue-tsv", 2)]
    odd_name = tmp_path / "sst2.data"
    odd_name.write_bytes((FIXTURES / "sst2_train.tsv").read_bytes())
    with pytest.raises(DataError, match=r"sst2.data: unknown format; use --format one of .*glue-tsv"):
        check.check_path(odd_name)
    assert check.check_path(odd_name, fmt="glue-tsv").rows[0].records == 3
    with pytest.raises(DataError, match="unknown format 'csv'"):
        check.check_path(odd_name, fmt="csv")
    with pytest.raises(DataError, match="not found"):
        check.check_path(tmp_path / "missing.tsv")


def test_single_shard_checks_images_and_image_root_is_the_world_root(tmp_path: Path) -> None:
    root = make_world(tmp_path / "W", bad_images=1)
    shard = root / "shards/train-000000.tar"
    [row] = check.check_path(shard).rows
    assert row.records == 0 and "corrupt image member" in row.errors[0].reason
    assert check.image_root_for(root / "text/glue/SST-2/train.tsv") == root.resolve()
    assert check.image_root_for(FIXTURES / "mrpc_dev.tsv") == FIXTURES


def test_format_flag_on_a_folder_limits_the_check(tmp_path: Path) -> None:
    report = check.check_path(make_world(tmp_path / "W"), fmt="squad-v1.1")
    assert [row.file for row in report.rows] == ["manifest.json", "text/squad/scenes/train-v1.1.json"]
    assert report.unrecognised == []


def test_count_records_follows_each_schema() -> None:
    assert check.count_records([{}, {}]) == 2
    assert check.count_records({"columns": ["a"], "rows": [{}, {}, {}]}) == 3
    assert check.count_records({"images": [1, 2], "annotations": [1, 2, 3, 4]}) == 4
    squad_obj = {
        "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [1, 2]}, {"context": "d", "qas": [3]}]}]
    }
    assert check.count_records(squad_obj) == 3

"""Issue 15, data side: bad input is never silent. Each fault is one stderr line naming the file, the record and
the reason (exit status 2, no traceback), or with ``--skip-bad`` a counted, listed skip; a missing or non-regular
stream stops a run before step 1; record paths stay inside their data root.

Every test corrupts a copy of one tiny world (built once per module) and runs the CLI in-process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from grainvl.cli import main
from grainvl.data.formats import webdataset
from grainvl.data.formats.validate import confined_path
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.errors import BadRecords, DataError

PRETRAIN_SETTINGS = [
    "train.progress=false",
    "train.track_energy=false",
    "train.tensorboard=false",
    "data.image_batch_size=4",
    "data.region_images=2",
    "data.video_batch_size=2",
]
FINETUNE_SETTINGS = [
    "data.batch_size=4",
    "train.progress=false",
    "train.tensorboard=false",
    "train.track_energy=false",
    "eval_splits=[test]",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train / 3 val / 2 test / 3 OOD images at 64 px (xvlm-tiny's resolution) and 4 videos; read-only."""
    out = tmp_path_factory.mktemp("faults") / "w"
    cfg = WorldConfig(images=24, videos=4, resolution=64, split_fractions=(16, 3, 2, 3), text_scenes=0, dialogues=0)
    generate_world(cfg, out)
    return out


def copy_world(world: Path, tmp_path: Path, manifest: bool = True) -> Path:
    """A writable copy of the world; without ``manifest`` only the records say what is wrong (no sha256)."""
    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    if not manifest:
        (copy / "manifest.json").unlink()
    return copy


def edit_json(path: Path, change: Callable[[Any], None]) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


def edit_jsonl(path: Path, change: Callable[[list[dict]], None]) -> None:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, list[str]]:
    """``(exit status, stdout, stderr lines)`` of ``grainvl ARGS`` run in-process."""
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def assert_one_error(rc: int, err: list[str], file: Path | str, *needles: str) -> str:
    """Exit 2 and exactly one stderr line, ``error: FILE: ...`` holding every needle (record, reason)."""
    assert rc == 2, err
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith(f"error: {file}: ") and "Traceback" not in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def pretrain(world: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(world), "--out", str(out), "--model", "xvlm-tiny", "--steps", "1", *extra]


def finetune(task: str, world: Path, out: Path, *extra: str) -> list[str]:
    args = ["finetune", task, "--model", "xvlm-tiny", "--world", str(world), "--out", str(out), "--steps", "1"]
    return [*args, *extra]


# ---------------------------------------------------------------------------------------------- streams
def _as_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _as_self_symlink(path: Path) -> None:
    path.unlink()
    os.symlink(path.name, path)  # image_text.jsonl -> image_text.jsonl: a loop


STREAM_FAULTS = {
    "directory": ("image_text.jsonl", _as_directory, "image stream is a directory, not a file"),
    "symlink loop": ("image_text.jsonl", _as_self_symlink, "image stream is a symlink loop"),
    "deleted": ("region.jsonl", Path.unlink, "region stream listed in"),
}


@pytest.mark.parametrize("fault", list(STREAM_FAULTS))
def test_a_vanished_stream_stops_pretrain_before_step_1(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, fault: str
) -> None:
    name, corrupt, reason = STREAM_FAULTS[fault]
    data = copy_world(world, tmp_path)
    stream = data / "annotations" / "pretrain" / "train" / name
    corrupt(stream)
    out = tmp_path / "run"
    rc, _, err = run(pretrain(data, out, "--set", *PRETRAIN_SETTINGS, "eval.splits=[]"), capsys)
    assert_one_error(rc, err, stream, reason)
    assert not (out / "checkpoints").exists()  # nothing trained


@pytest.mark.parametrize("fault", ["directory", "symlink loop"])
def test_data_check_reports_a_stream_that_is_not_a_regular_file(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, fault: str
) -> None:
    name, corrupt, reason = STREAM_FAULTS[fault]
    data = copy_world(world, tmp_path, manifest=False)
    stream = data / "annotations" / "pretrain" / "train" / name
    corrupt(stream)
    rc, out, err = run(["data", "check", str(data)], capsys)
    assert_one_error(rc, err, stream, reason.replace("image stream", "annotation file"))
    assert "FAILED" in out


def test_broken_symlink_is_named(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = copy_world(world, tmp_path, manifest=False)
    target = data / "annotations" / "retrieval" / "coco_test.json"
    target.unlink()
    os.symlink("gone.json", target)
    rc, _, err = run(["data", "check", str(data)], capsys)
    assert_one_error(rc, err, target, "broken symlink", "'gone.json'")


# ---------------------------------------------------------------------------------------------- duplicated ids
def test_duplicate_question_id_stops_finetune_before_step_1_or_is_skipped(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = copy_world(world, tmp_path)
    test_file = data / "annotations" / "vqa" / "vqa_test.json"
    edit_json(test_file, lambda doc: doc[3].__setitem__("question_id", doc[2]["question_id"]))
    out = tmp_path / "run"
    rc, _, err = run(finetune("vqa", data, out, "--set", *FINETUNE_SETTINGS), capsys)
    assert_one_error(rc, err, test_file, "index 3: duplicate question_id", "(first at index 2)")
    assert not (out / "checkpoints").exists()

    skipped = tmp_path / "skipped"
    rc, _, err = run(finetune("vqa", data, skipped, "--skip-bad", "--set", *FINETUNE_SETTINGS), capsys)
    assert rc == 0, err
    assert "finetune: skipped 1 bad record(s):" in err
    assert any(line.strip().startswith(f"{test_file}: index 3: duplicate question_id") for line in err)
    assert json.loads((skipped / "summary.json").read_text())["skipped_records"] == 1
    assert (skipped / "checkpoints").is_dir()  # the same run without the fault trains and checkpoints


def _duplicate(key: str, index: int = 1, first: int = 0) -> Callable[[list[dict]], None]:
    return lambda doc: doc[index].__setitem__(key, doc[first][key])


def _nlvr_identifiers(doc: list[dict]) -> None:
    for i, record in enumerate(doc):
        record["identifier"] = f"test-{i}"
    doc[1]["identifier"] = "test-0"


def _same_ref_other_box(doc: list[dict]) -> None:
    doc[1]["ref_id"] = doc[0]["ref_id"]  # sentences of one ref share its box; this one does not


DUPLICATES = {
    "retrieval image": ("retrieval/coco_test.json", _duplicate("image"), "index 1: duplicate image"),
    "captioning image_id": ("captioning/coco_karpathy_test.json", _duplicate("image_id"), "duplicate image_id"),
    "nlvr2 identifier": ("nlvr2/nlvr_test.json", _nlvr_identifiers, "index 1: duplicate identifier 'test-0'"),
    "grounding ref_id": ("refcoco+/refcoco+_test.json", _same_ref_other_box, "again with another image or box"),
    "video": ("msrvtt/msrvtt_ret_test.json", lambda doc: doc.append(dict(doc[0])), "duplicate video 'video"),
    "vlue question_id": ("vlue/vqa_vlue_test.json", _duplicate("question_id"), "duplicate question_id"),
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_duplicated_ids_are_named_by_data_check(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    relative, corrupt, reason = DUPLICATES[case]
    data = copy_world(world, tmp_path, manifest=False)
    path = data / "annotations" / relative
    edit_json(path, corrupt)
    rc, _, err = run(["data", "check", str(path)], capsys)
    assert_one_error(rc, err, path, reason, "(first at index 0)")
    rc, out, err = run(["data", "check", "--skip-bad", str(path)], capsys)
    assert rc == 2 and "1 error(s)" in out  # data check always fails on bad data; --skip-bad lists every record


def test_refexps_of_one_ref_may_share_its_id(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = copy_world(world, tmp_path, manifest=False)
    path = data / "annotations" / "refcoco+" / "refcoco+_test.json"
    edit_json(path, lambda doc: doc.insert(1, {**doc[0], "text": "another sentence"}))  # same ref, same box
    rc, out, err = run(["data", "check", str(path)], capsys)
    assert rc == 0 and "OK" in out, err


# ---------------------------------------------------------------------------- records checked as the loaders use them
def _region_box(value: float) -> Callable[[list[dict]], None]:
    return lambda rows: rows[2]["elems"][0].__setitem__("bb", [value, 1, 2, 3])


RECORD_FAULTS = {
    "nan region box": ("pretrain/train/region.jsonl", _region_box(float("nan")), "line 3 elems[0]", "non-finite"),
    "inf refexp box": (
        "refcoco+/refcoco+_test.json",
        lambda doc: doc[1].__setitem__("bbox", [1, 1, float("inf"), 3]),
        "index 1",
        "non-finite",
    ),
    "caption of punctuation": (
        "pretrain/train/image_text.jsonl",
        lambda rows: rows[4].__setitem__("caption", ["...", "!?"]),
        "line 5",
        "caption '...' is empty once cleaned",
    ),
    "question of punctuation": (
        "vqa/vqa_train.json",
        lambda doc: doc[2].__setitem__("question", ".!;"),  # pre_question deletes all three ("?" it keeps)
        "index 2",
        "is empty once cleaned",
    ),
    "empty caption list": (
        "retrieval/coco_test.json",
        lambda doc: doc[1].__setitem__("caption", []),
        "index 1",
        "empty list of captions",
    ),
    "empty answer list": (
        "vqa/vqa_train.json",
        lambda doc: doc[1].__setitem__("answer", []),
        "index 1",
        "empty list of answers",
    ),
}


@pytest.mark.parametrize("case", list(RECORD_FAULTS))
def test_data_check_without_manifest_finds_what_only_the_sha256_caught(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    relative, corrupt, record, reason = RECORD_FAULTS[case]
    data = copy_world(world, tmp_path, manifest=False)
    path = data / "annotations" / relative
    (edit_jsonl if path.suffix == ".jsonl" else edit_json)(path, corrupt)
    rc, _, err = run(["data", "check", str(data)], capsys)
    assert_one_error(rc, err, path, f": {record}: ", reason)


def test_a_bad_caption_is_skipped_by_pretrain(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = copy_world(world, tmp_path)
    path = data / "annotations" / "pretrain" / "train" / "image_text.jsonl"
    edit_jsonl(path, lambda rows: rows[4].__setitem__("caption", "..."))
    out = tmp_path / "run"
    rc, _, err = run(pretrain(data, out, "--set", *PRETRAIN_SETTINGS, "eval.splits=[]"), capsys)
    assert_one_error(rc, err, path, "line 5: caption '...' is empty once cleaned")
    assert not (out / "checkpoints").exists()

    skipped = tmp_path / "skipped"
    rc, _, err = run(pretrain(data, skipped, "--skip-bad", "--set", *PRETRAIN_SETTINGS, "eval.splits=[]"), capsys)
    assert rc == 0, err
    assert err[:2] == ["pretrain: skipped 1 bad record(s):", f"  {path}: line 5: caption '...' is empty once cleaned "
                       "(punctuation only)"]  # fmt: skip
    assert json.loads((skipped / "summary.json").read_text())["skipped_records"] == 1


# ---------------------------------------------------------------------------------------------- image sizes
def _shrink_images(folder: Path, size: tuple[int, int] = (100, 80)) -> None:
    for image in folder.glob("*.jpg"):
        Image.new("RGB", size, "gray").save(image)


def test_image_smaller_than_its_record_says_is_named(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = copy_world(world, tmp_path, manifest=False)
    _shrink_images(data / "images" / "test")
    path = data / "annotations" / "refcoco+" / "refcoco+_test.json"
    rc, _, err = run(["data", "check", str(path)], capsys)
    assert_one_error(rc, err, path, "index 0: image images/test/", "is 100x80, record says 64x64")


def test_grounding_refuses_an_image_of_another_size(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = copy_world(world, tmp_path)
    _shrink_images(data / "images" / "train")  # every refexp's image: the first sample fails, whichever it is
    rc, _, err = run(finetune("grounding", data, tmp_path / "run", "--set", *FINETUNE_SETTINGS), capsys)
    assert_one_error(rc, err, data / "annotations" / "refcoco+" / "refcoco+_train.json", "is 100x80, record says 64x64")


def test_pretrain_refuses_a_region_image_of_another_size(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = copy_world(world, tmp_path)
    _shrink_images(data / "images" / "train")
    out = tmp_path / "run"
    rc, _, err = run(pretrain(data, out, "--set", *PRETRAIN_SETTINGS, "eval.splits=[]"), capsys)
    region = data / "annotations" / "pretrain" / "train" / "region.jsonl"
    assert_one_error(rc, err, region, "is 100x80, record says 64x64")


# ---------------------------------------------------------------------------------- encodings and unreadable files
def _latin1_line(path: Path, line: int) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b"a", b"\xe9", 1)  # a latin-1 e-acute: not UTF-8
    path.write_bytes(b"\n".join(lines))


def test_a_latin1_byte_costs_one_line(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = copy_world(world, tmp_path)
    path = data / "annotations" / "pretrain" / "train" / "image_text.jsonl"
    total = len(path.read_text(encoding="utf-8").splitlines())
    _latin1_line(path, 7)
    out = tmp_path / "run"
    rc, _, err = run(pretrain(data, out, "--set", *PRETRAIN_SETTINGS, "eval.splits=[]"), capsys)
    assert_one_error(rc, err, path, "line 7: not UTF-8 text")
    assert not (out / "checkpoints").exists()

    skipped = tmp_path / "skipped"
    rc, _, err = run(pretrain(data, skipped, "--skip-bad", "--set", *PRETRAIN_SETTINGS, "eval.splits=[]"), capsys)
    assert rc == 0 and err[0] == "pretrain: skipped 1 bad record(s):", err
    rc, out_text, _ = run(["data", "check", "--skip-bad", str(path)], capsys)
    assert f"{total - 1} record(s), 1 error(s)" in out_text  # only the bad line is lost


def test_a_utf16_file_is_one_file_level_error(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = copy_world(world, tmp_path, manifest=False)
    for path in (data / "annotations" / "pretrain" / "val" / "image_text.jsonl", data / "annotations/vqa/vqa_val.json"):
        path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))
        rc, _, err = run(["data", "check", "--skip-bad", str(path)], capsys)
        line = assert_one_error(rc, err, path, "not UTF-8 (looks like UTF-16")
        assert line.startswith(f"error: {path}: not UTF-8")  # the file, not one error per line


def test_an_unreadable_listed_file_is_named_by_the_manifest_check(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = copy_world(world, tmp_path)
    locked = data / "annotations" / "nlvr2" / "nlvr_val.json"
    real_open = Path.open

    def open_as_without_permission(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == locked:  # chmod 000 does not stop root, who runs these tests in containers
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_as_without_permission)
    rc, out, err = run(["data", "check", str(data)], capsys)
    assert rc == 2 and "Traceback" not in out
    assert err == [
        f"error: {data / 'manifest.json'}: file annotations/nlvr2/nlvr_val.json: cannot read: permission denied",
        f"error: {locked}: cannot read: permission denied",
    ]


# ---------------------------------------------------------------------------------------------- confinement
CONFINEMENT = {
    "system file": "/etc/passwd",
    "dot-dot": "../../../etc/passwd",
}


@pytest.mark.parametrize("case", list(CONFINEMENT))
def test_record_paths_outside_the_data_root_are_refused(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    data = copy_world(world, tmp_path, manifest=False)
    path = data / "annotations" / "retrieval" / "coco_test.json"
    edit_json(path, lambda doc: doc[1].__setitem__("image", CONFINEMENT[case]))
    rc, _, err = run(["data", "check", str(data)], capsys)
    assert_one_error(rc, err, path, "index 1: path", "leads outside", "allow_outside_root")


def test_a_symlinked_image_out_of_the_root_is_refused_unless_allowed(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = copy_world(world, tmp_path, manifest=False)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(data / "images" / "test", elsewhere)
    os.symlink(elsewhere, data / "images" / "test")  # a real image, but through a link out of the root
    rc, _, err = run(["data", "check", str(data / "annotations" / "retrieval")], capsys)
    assert_one_error(rc, err, data / "annotations" / "retrieval" / "coco_test.json", "index 0", "leads outside")
    rc, out, err = run(["data", "check", "--allow-outside-root", str(data / "annotations" / "retrieval")], capsys)
    assert rc == 0 and "OK" in out, err


def test_pretrain_refuses_an_evaluation_image_outside_the_root_before_step_1(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = copy_world(world, tmp_path)
    path = data / "annotations" / "pretrain" / "test" / "image_text.jsonl"
    outside = str((world / "images" / "test").resolve() / next(p.name for p in (world / "images/test").iterdir()))
    edit_jsonl(path, lambda rows: rows[0].__setitem__("image", outside))  # a real image, in another world
    out = tmp_path / "run"
    rc, _, err = run(pretrain(data, out, "--set", *PRETRAIN_SETTINGS, "eval.splits=[test]"), capsys)
    assert_one_error(rc, err, path, "line 1: path", "leads outside")
    assert not (out / "checkpoints").exists()
    allowed = tmp_path / "allowed"
    rc, _, err = run(
        pretrain(data, allowed, "--set", *PRETRAIN_SETTINGS, "eval.splits=[test]", "files.allow_outside_root=true"),
        capsys,
    )
    assert rc == 0, err


def _shard(path: Path, names: list[str]) -> Path:
    buffer = BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    with tarfile.open(path, "w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(buffer.getvalue())
            tar.addfile(info, BytesIO(buffer.getvalue()))
    return path


def test_webdataset_members_out_of_the_shard_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shard = _shard(tmp_path / "train-000000.tar", ["000001.jpg", "../../evil.jpg", "/etc/evil.jpg", "000002.jpg"])
    rc, _, err = run(["data", "check", str(shard)], capsys)
    assert_one_error(rc, err, shard, "member 1: path '../../evil.jpg' leads outside")
    bad = BadRecords(skip_bad=True)
    samples = webdataset.read_shard(shard, bad)
    assert [s["__key__"] for s in samples] == ["000001", "000002"]
    assert [e.record for e in bad.errors] == ["member 1", "member 2"]
    assert "'/etc/evil.jpg' leads outside" in str(bad.errors[1])


def test_confined_path_follows_symlinks_and_allows_on_request(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "images" / "link.jpg")
    assert confined_path(root, "images/a.jpg", "f.json", "index 0") == root / "images" / "a.jpg"
    assert confined_path(root, str(root / "images" / "a.jpg"), "f.json", 0) == root / "images" / "a.jpg"
    with pytest.raises(DataError, match="leads outside"):
        confined_path(root, "images/link.jpg", "f.json", "index 0")
    os.symlink("loop.jpg", root / "loop.jpg")
    with pytest.raises(DataError, match="symlink loop"):
        confined_path(root, "loop.jpg", "f.json", "index 0")
    assert confined_path(root, "images/link.jpg", "f.json", "index 0", allow_outside=True) == root / "images/link.jpg"


# ------------------------------------------------------------------ fileio: whole-JSON and JSON-lines bytes
def test_read_json_names_the_line_of_a_bad_byte_and_says_utf16(tmp_path: Path) -> None:
    from grainvl.utils.fileio import iter_jsonl, read_json

    path = tmp_path / "vqa_test.json"
    path.write_bytes(b'[\n  {"question": "ok"},\n  {"question": "caf\xe9"}\n]\n')
    with pytest.raises(DataError) as error:
        read_json(path)
    assert (error.value.record, error.value.reason) == (
        "line 3",
        "not UTF-8 text (invalid continuation byte at byte 43)",
    )
    path.write_bytes('[{"question": "ok"}]'.encode("utf-16"))
    with pytest.raises(DataError, match="looks like UTF-16"):
        read_json(path)
    # JSON lines: one bad byte costs its line only when skipping.
    lines = tmp_path / "captions.jsonl"
    lines.write_bytes(b'{"a": 1}\n{"a": "\xe9"}\n{"a": 3}\n')
    bad = BadRecords(skip_bad=True)
    assert [obj["a"] for _, obj in iter_jsonl(lines, bad)] == [1, 3]
    assert [e.record for e in bad.errors] == ["line 2"]

"""MSR-VTT: the official video/sentence index, X²-VLM-style retrieval json, and MSRVTT-QA.

* ``train_val_videodatainfo.json`` / ``test_videodatainfo.json`` (official)::

      {"info"?: {...},
       "videos": [{"category": int, "url": str, "video_id": "video0", "start time": float,
                   "end time": float, "split": str, "id": int}, ...],
       "sentences": [{"caption": str, "video_id": "video0", "sen_id": int}, ...]}

  (the official splits are train/validate/test; the world writes its own split names). Videos are
  referred to by id only (the release ships mp4 files), so ``image_root`` is not used.
* retrieval ``msrvtt_ret_{split}.json`` (ALBEF/X²-VLM style; ``msrvtt_ret_train7k`` / ``train9k`` / ``test1k``
  as the official splits ship)::

      [{"video": name, "caption": str (train) | [str] (val/test), ...}, ...]

* QA ``msrvtt_qa_{split}.jsonl`` (ClipBERT / X²-VLM; ``msrvtt_qa_{split}.json``: the same records as one JSON list)::

      {"video_id": "video7010", "question": str, "answer": str, "answer_type"?: str}

  plus ``ans2label.json`` ``{answer: label}`` with labels 0..N-1 (1,500 answers for MSRVTT-QA);
  an answer outside it is legal (the official code gives it label -100).

A video ``name`` (``video`` or ``video_id``) is resolved under ``image_root`` as a folder of frame
images (the world: ``videos/{split}/video{id}/00.jpg``) or a JSON list of base64 frames
``name`` / ``name.json`` (X²-VLM's ``video_{id}.json``); every frame is decoded when checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grainvl.data.formats import validate
from grainvl.data.formats.registry import FormatSpec, register
from grainvl.errors import BadRecords, DataError
from grainvl.utils import fileio

Record = dict[str, Any]
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_FIELDS: dict[str, type | tuple[type, ...]] = {
    "category": int,
    "url": str,
    "video_id": str,
    "start time": (int, float),
    "end time": (int, float),
    "split": str,
    "id": int,
}


# ------------------------------------------------------------------------------------ videos
class VideoChecker:
    """Decodes every frame of each video named by an annotation file, once per video."""

    def __init__(self, annotation_path: Path, image_root: Path | None) -> None:
        self.annotation_path = annotation_path
        self.frames = validate.ImageChecker(annotation_path, image_root)
        self._checked: set[str] = set()

    def claim(self, kind: str, key: Any, where: str) -> None:
        """Ids of the file, as :meth:`grainvl.data.formats.validate.ImageChecker.claim`."""
        self.frames.claim(kind, key, where)

    def check(self, name: str, where: str) -> None:
        root = self.frames.image_root
        if root is None or name in self._checked:
            return
        folder = validate.confined_path(root, name, self.annotation_path, where)
        if not folder.exists() and not folder.with_name(folder.name + ".json").exists() and "/" not in name:
            # A bare official id ("video7010") is also looked up in a conventional videos/ folder,
            # which is where the world (and most MSR-VTT copies) keep one folder of frames per video.
            folder = validate.confined_path(root, f"videos/{name}", self.annotation_path, where)
        if folder.is_dir():
            self._check_folder(folder, name, where)
        else:
            json_path = folder if folder.suffix == ".json" else folder.with_name(folder.name + ".json")
            if not json_path.is_file():
                reason = f"video not found: {folder} (neither a folder of frames nor a .json of base64 frames)"
                raise DataError(self.annotation_path, where, reason)
            self._check_base64_frames(json_path, where)
        self._checked.add(name)

    def _check_folder(self, folder: Path, name: str, where: str) -> None:
        frames = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not frames:
            raise DataError(self.annotation_path, where, f"video folder {folder} has no frame images")
        relative = folder.relative_to(self.frames.image_root).as_posix() if self.frames.image_root else name
        for frame in frames:
            self.frames.check(f"{relative}/{frame}", where)

    def _check_base64_frames(self, json_path: Path, where: str) -> None:
        frames = fileio.read_json(json_path)
        if not isinstance(frames, list) or not frames:
            raise DataError(self.annotation_path, where, f"{json_path} should hold a non-empty list of base64 frames")
        for k, frame in enumerate(frames):
            validate.check_image_base64(frame, self.annotation_path, where, what=f"frame {k} of {json_path}")


# ------------------------------------------------------------------------------------ videodatainfo
def _video_checker(path: Path, seen: dict[str, str]) -> validate.RecordCheck:
    def check(video: Any, where: str) -> None:
        validate.require_fields(video, VIDEO_FIELDS, path, where)
        validate.require_text(video["video_id"], "video_id", path, where)
        validate.require_text(video["split"], "split", path, where)
        if video["end time"] < video["start time"]:
            raise DataError(path, where, f"end time {video['end time']} is before start time {video['start time']}")
        validate.claim_unique(seen, video["video_id"], "duplicate video_id {key}", path, where)

    return check


def _sentence_checker(path: Path, video_ids: set[str], seen: dict[int, str]) -> validate.RecordCheck:
    def check(sentence: Any, where: str) -> None:
        validate.require_fields(sentence, {"caption": str, "video_id": str, "sen_id": int}, path, where)
        validate.require_text(sentence["caption"], "caption", path, where)
        if sentence["video_id"] not in video_ids:
            raise DataError(path, where, f"video_id {sentence['video_id']} is not in 'videos'")
        validate.claim_unique(seen, sentence["sen_id"], "duplicate sen_id {key}", path, where)

    return check


def _validated_info(doc: Any, path: Path, bad: BadRecords) -> Record:
    if not isinstance(doc, dict):
        raise DataError(path, None, f"expected a JSON object with 'videos' and 'sentences', got {type(doc).__name__}")
    validate.require_fields(doc, {"videos": list, "sentences": list}, path, "header")
    videos = validate.collect_valid(enumerate(doc["videos"]), "videos index", _video_checker(path, {}), bad)
    video_ids = {v["video_id"] for v in videos}
    checker = _sentence_checker(path, video_ids, {})
    sentences = validate.collect_valid(enumerate(doc["sentences"]), "sentences index", checker, bad)
    return {**doc, "videos": videos, "sentences": sentences}


def read_videodatainfo(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> Record:
    path = Path(path)
    return _validated_info(fileio.read_json(path), path, bad or BadRecords())


def write_videodatainfo(path: str | Path, doc: Record) -> None:
    _validated_info(doc, Path(path), BadRecords())
    fileio.write_json(path, doc)


# ------------------------------------------------------------------------------------ retrieval, QA
# ``videos`` is a VideoChecker when reading, the no-op ImageChecker(None) that validate_all passes when writing.
def check_retrieval_record(record: Any, path: Path, where: str, videos: VideoChecker | validate.ImageChecker) -> None:
    validate.require_fields(record, {"video": str, "caption": (str, list)}, path, where)
    validate.require_text(record["video"], "video", path, where)
    validate.require_texts(record["caption"], "caption", path, where, validate.caption_cleaning)
    videos.check(record["video"], where)
    if isinstance(record["caption"], list):  # an evaluation record: one per video, or the gallery merges them
        videos.claim("video", record["video"], where)


def check_qa_record(record: Any, path: Path, where: str, videos: VideoChecker | validate.ImageChecker) -> None:
    validate.require_fields(record, {"video_id": str, "question": str, "answer": str}, path, where)
    validate.require_text(record["video_id"], "video_id", path, where)
    validate.require_text(record["question"], "question", path, where, validate.question_cleaning)
    validate.require_text(record["answer"], "answer", path, where)
    videos.check(record["video_id"], where)


def read_retrieval(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    path = Path(path)
    videos = VideoChecker(path, image_root)
    return validate.read_json_records(path, lambda r, where: check_retrieval_record(r, path, where, videos), bad)


def write_retrieval(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_retrieval_record)


def read_qa(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    path = Path(path)
    videos = VideoChecker(path, image_root)
    check = lambda r, where: check_qa_record(r, path, where, videos)  # noqa: E731
    with path.open("rb") as f:
        is_list = f.read(4096).lstrip().startswith(b"[")  # msrvtt_qa_*.json: one JSON list
    return validate.read_json_records(path, check, bad) if is_list else validate.read_jsonl_records(path, check, bad)


def write_qa(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_jsonl(path, rows, check_qa_record)


# ------------------------------------------------------------------------------------ ans2label
def _validated_ans2label(doc: Any, path: Path, bad: BadRecords) -> dict[str, int]:
    """Answers are non-empty; labels are distinct ints covering 0..N-1 (the classifier's rows)."""
    if not isinstance(doc, dict):
        raise DataError(path, None, f"expected a JSON object {{answer: label}}, got {type(doc).__name__}")
    kept: dict[str, int] = {}
    owner: dict[int, str] = {}
    for answer, label in doc.items():
        where = f"answer {answer!r}"
        try:
            validate.require_text(answer, "answer", path, where)
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise DataError(path, where, f"label should be a non-negative int, got {label!r}")
            if label in owner:
                raise DataError(path, where, f"label {label} is also the label of {owner[label]!r}")
        except DataError as e:
            bad.handle(e)
            continue
        kept[answer], owner[label] = label, answer
    missing = sorted(set(range(len(kept))) - set(owner))
    if missing:
        bad.handle(DataError(path, None, f"labels should be 0..{len(kept) - 1}; missing {missing[:5]}"))
    return kept


def read_ans2label(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> dict[str, int]:
    path = Path(path)
    return _validated_ans2label(fileio.read_json(path), path, bad or BadRecords())


def write_ans2label(path: str | Path, ans2label: dict[str, int]) -> None:
    _validated_ans2label(ans2label, Path(path), BadRecords())
    fileio.write_json(path, ans2label)


register(
    FormatSpec(
        "msrvtt-videodatainfo",
        "MSR-VTT video and sentence index (train_val_videodatainfo.json)",
        ("*videodatainfo*.json",),
        read_videodatainfo,
    )
)
register(FormatSpec("msrvtt-retrieval", "MSR-VTT video-text retrieval json", ("msrvtt_ret_*.json",), read_retrieval))
register(
    FormatSpec(
        "msrvtt-qa",
        "MSRVTT-QA JSON lines {video_id, question, answer}",
        ("msrvtt_qa_*.jsonl", "msrvtt_qa_*.json"),
        read_qa,
    )
)
register(
    FormatSpec("msrvtt-ans2label", "video-QA answer vocabulary {answer: label}", ("*ans2label.json",), read_ans2label)
)

"""X-VLM / X²-VLM / CCLM pre-training JSON-lines (xvlm.md §3.1), one JSON object per line.

* image–text (``image_text*.jsonl``)::

      {"image": path | "binary": base64 JPEG, "caption" | "desc": str | [str] | {lang: str | [str]}}

  a list holds paraphrases (one is drawn per step), a dict holds translations (CCLM).
* region (``region*.jsonl``)::

      {"image" | "binary", "caption"?: ..., "width"?: int, "height"?: int,
       "elems": [{"caption": str | [str], "attributes"?: str | [str], "bb": [x, y, w, h]}, ...]}

  boxes are pixels and must lie inside the image (``width``/``height`` when given, else the
  decoded image's size when images are checked).
* video (``video*.jsonl``)::

      {"video_frames": [frame, ...] | [[frame, ...] per clip], "text": str | [str],
       "is_continuous": bool}

  with one text per clip when frames are grouped in clips. The official files hold base64 JPEG
  frames; **the synthetic world writes frame paths relative to its root instead**. A frame string
  containing "." is a path (the base64 alphabet has no "."), anything else is base64; with
  ``image_root`` both kinds are decoded.
* parallel text (``para_text*.jsonl``)::

      {"source_text": str, "target_text": str, "source_lang"?: str, "target_lang"?: str}

With ``image_root`` every path is opened relative to it and every base64 image decoded, so a
truncated JPEG fails here and not in the middle of training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from grainvl.data.formats import validate
from grainvl.data.formats.registry import FormatSpec, register
from grainvl.errors import BadRecords, DataError
from grainvl.utils import fileio

Record = dict[str, Any]


# ------------------------------------------------------------------------------------ field checks
def check_caption_value(value: Any, name: str, path: Path, where: str) -> None:
    """A caption: a string, a list of paraphrases, or ``{language: str | [str]}``; none empty once cleaned."""
    if not isinstance(value, dict):
        validate.require_texts(value, name, path, where, validate.caption_cleaning)
        return
    if not value:
        raise DataError(path, where, f"empty {name} dict (no languages)")
    for lang, text in value.items():
        validate.require_texts(text, f"{name}[{lang}]", path, where, validate.caption_cleaning)


def _image_size(record: Any, path: Path, where: str, images: validate.ImageChecker) -> tuple[int, int] | None:
    """Check the ``image`` path or ``binary`` base64 field; the decoded size when images are checked."""
    if not isinstance(record, dict):
        raise DataError(path, where, f"expected a JSON object, got {type(record).__name__}")
    if "image" in record:
        validate.require_text(record["image"], "image", path, where)
        return images.check(record["image"], where)
    if "binary" in record:
        validate.require_text(record["binary"], "binary", path, where)
        return validate.check_image_base64(record["binary"], path, where) if images.enabled else None
    raise DataError(path, where, "missing field 'image' (path) or 'binary' (base64)")


def _caption_key(record: Record) -> str | None:
    """X²-VLM image data says "desc", X-VLM and region data "caption"."""
    return next((key for key in ("caption", "desc") if key in record), None)


def is_frame_path(frame: str) -> bool:
    """True for a frame path, False for a base64 frame (base64 never contains ".")."""
    return "." in frame


def _check_frame(frame: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    if not isinstance(frame, str) or not frame:
        raise DataError(path, where, f"video frame should be a path or base64 string, got {frame!r:.40}")
    if not images.enabled:
        return
    if is_frame_path(frame):
        images.check(frame, where)
    else:
        validate.check_image_base64(frame, path, where, what="base64 video frame")


# ------------------------------------------------------------------------------------ record checks
def check_image_text(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    _image_size(record, path, where, images)
    key = _caption_key(record)
    if key is None:
        raise DataError(path, where, "missing field 'caption' (or 'desc')")
    check_caption_value(record[key], key, path, where)


def check_region(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    actual = _image_size(record, path, where, images)
    key = _caption_key(record)
    if key is not None:
        check_caption_value(record[key], key, path, where)
    image = record.get("image", "(binary)")
    width, height = validate.image_bounds(record, path, where, image, actual) or (None, None)
    validate.require_fields(record, {"elems": list}, path, where)
    if not record["elems"]:
        raise DataError(path, where, "empty 'elems' list")
    for k, elem in enumerate(record["elems"]):
        _check_elem(elem, path, f"{where} elems[{k}]", width, height)


def _check_elem(elem: Any, path: Path, where: str, width: int | None, height: int | None) -> None:
    validate.require_fields(elem, {"caption": (str, list), "bb": list}, path, where)
    validate.require_texts(elem["caption"], "caption", path, where, validate.caption_cleaning)
    attributes = elem.get("attributes", [])
    if not isinstance(attributes, (str, list)) or not all(isinstance(a, str) for a in _as_list(attributes)):
        raise DataError(path, where, f"attributes should be a string or a list of strings, got {attributes!r}")
    validate.check_box(elem["bb"], path, where, width, height)


def _as_list(value: str | list[Any]) -> list[Any]:
    return [value] if isinstance(value, str) else value


def check_video(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    validate.require_fields(record, {"video_frames": list, "text": (str, list), "is_continuous": bool}, path, where)
    frames = record["video_frames"]
    if not frames:
        raise DataError(path, where, "empty 'video_frames' list")
    texts = validate.require_texts(record["text"], "text", path, where, validate.caption_cleaning)
    grouped = all(isinstance(f, list) for f in frames)  # [[frame, ...] per clip]
    clips = frames if grouped else [frames]
    if grouped and (not isinstance(record["text"], list) or len(texts) != len(clips)):
        # FrameTextDataset pairs clip k with text k
        raise DataError(path, where, f"{len(clips)} clips need a list of {len(clips)} texts, got {len(texts)}")
    for clip in clips:
        if not clip:
            raise DataError(path, where, "empty clip in 'video_frames'")
        for frame in clip:
            _check_frame(frame, path, where, images)


def check_para_text(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    validate.require_fields(record, {"source_text": str, "target_text": str}, path, where)
    validate.require_text(record["source_text"], "source_text", path, where)
    validate.require_text(record["target_text"], "target_text", path, where)
    for key in ("source_lang", "target_lang"):
        if key in record:
            validate.require_text(record[key], key, path, where)


# ------------------------------------------------------------------------------------ read / write
KIND_CHECKS: dict[str, validate.Validator] = {
    "image_text": check_image_text,
    "region": check_region,
    "video": check_video,
    "para_text": check_para_text,
}


class LineWriter:
    """The writer of every pre-training kind: one file, written record by record (bounded memory).

    Each record is checked as its reader will check it before it is written, so no file is produced
    that the reader rejects. Lines go to a temp file next to ``path`` that :meth:`close` renames into
    place, so a crash (or a bad record) never leaves a half-written file under the real name.
    """

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._check = KIND_CHECKS[kind]
        self._images = validate.ImageChecker(self.path, None)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._file: IO[str] | None = self._tmp.open("w", encoding="utf-8")
        self.count = 0

    def write(self, record: Record) -> None:
        assert self._file is not None
        try:
            self._check(record, self.path, f"line {self.count + 1}", self._images)
        except DataError:
            self.discard()
            raise
        self._file.write(fileio.dumps(record) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            os.replace(self._tmp, self.path)

    def discard(self) -> None:
        """Drop what was written so far; the real path is left untouched."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink()


def read_image_text(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_jsonl(path, check_image_text, bad, image_root)


def read_region(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_jsonl(path, check_region, bad, image_root)


def read_video(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_jsonl(path, check_video, bad, image_root)


def read_para_text(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_jsonl(path, check_para_text, bad, image_root)


register(FormatSpec("xvlm-image-text", "X-VLM image-caption lines", ("image_text*.jsonl",), read_image_text))
register(FormatSpec("xvlm-region", "X-VLM region lines (elems with boxes)", ("region*.jsonl",), read_region))
register(FormatSpec("xvlm-video", "X²-VLM video lines (video_frames, text)", ("video*.jsonl",), read_video))
register(FormatSpec("xvlm-para-text", "CCLM parallel sentence pairs", ("para_text*.jsonl",), read_para_text))

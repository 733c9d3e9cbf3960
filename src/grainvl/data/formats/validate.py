"""Record validation shared by the format readers: required fields, ids, texts, boxes and images,
and reading whole files of validated records (file I/O itself is :mod:`grainvl.utils.fileio`).

Every reader goes through these so that bad input always becomes a :class:`DataError` that names
the file, the record and the reason.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from grainvl.errors import BadRecords, DataError
from grainvl.utils.fileio import iter_jsonl, read_json, write_json, write_jsonl


def require_list(obj: Any, path: str | Path) -> list[Any]:
    if not isinstance(obj, list):
        raise DataError(path, None, f"expected a JSON list at top level, got {type(obj).__name__}")
    return obj


def require_fields(record: Any, fields: dict[str, type | tuple[type, ...]], path: str | Path, where: str) -> None:
    """Check that ``record`` is a dict with each field present and of the given type(s)."""
    if not isinstance(record, dict):
        raise DataError(path, where, f"expected a JSON object, got {type(record).__name__}")
    for name, types in fields.items():
        if name not in record:
            raise DataError(path, where, f"missing field '{name}'")
        if not isinstance(record[name], types) or (isinstance(record[name], bool) and bool not in _as_tuple(types)):
            expected = "/".join(t.__name__ for t in _as_tuple(types))
            raise DataError(path, where, f"field '{name}' should be {expected}, got {type(record[name]).__name__}")


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def claim_unique(seen: dict[Any, str], key: Any, label: str, path: str | Path, where: str) -> None:
    """Record ``key`` as first seen at ``where``; a repeat is a DataError naming both positions.

    ``label`` is a ``str.format`` pattern with ``{key}`` (e.g. ``"duplicate image id {key}"``), only
    rendered on error so that the per-record cost stays a dict lookup.
    """
    if key in seen:
        raise DataError(path, where, f"{label.format(key=key)} (first at {seen[key]})")
    seen[key] = where


def require_text(value: Any, name: str, path: str | Path, where: str) -> str:
    """A non-empty string (captions, questions, sentences)."""
    if not isinstance(value, str):
        raise DataError(path, where, f"field '{name}' should be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, where, f"empty {name}")
    return value


def check_box(
    box: Any, path: str | Path, where: str, width: float | None = None, height: float | None = None
) -> list[float]:
    """Validate an ``[x, y, w, h]`` box: four numbers, positive size, inside the image if known."""
    if not isinstance(box, (list, tuple)) or len(box) < 4 or not all(_is_number(v) for v in box[:4]):
        raise DataError(path, where, f"box should be [x, y, w, h] numbers, got {box!r}")
    x, y, w, h = (float(v) for v in box[:4])
    if w <= 0 or h <= 0:
        raise DataError(path, where, f"box {box!r} has non-positive size")
    if x < 0 or y < 0:
        raise DataError(path, where, f"box {box!r} starts outside the image")
    if width is not None and height is not None and (x + w > width + 1e-6 or y + h > height + 1e-6):
        raise DataError(path, where, f"box {box!r} extends outside the {width:g}x{height:g} image")
    return [x, y, w, h]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_image(image_path: str | Path, record_file: str | Path, where: str) -> tuple[int, int]:
    """Open and fully decode an image; return ``(width, height)``.

    A missing file, truncated bytes or an undecodable file is a DataError naming the annotation
    file and record that refer to it, and the image path.
    """

    image_path = Path(image_path)
    if not image_path.exists():
        raise DataError(record_file, where, f"image not found: {image_path}")
    try:
        with Image.open(image_path) as im:
            im.load()  # forces a full decode: truncated files fail here, not at training time
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(record_file, where, f"corrupt image {image_path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Record loops and image checks shared by the vision-language formats (albef, coco_caption,
# vqa_v2, msrvtt, iglue, vlue, xvlm_pretrain).

RecordCheck = Callable[[Any, str], object]  # check(record, where); raises DataError when bad


def collect_valid(numbered: Iterable[tuple[int, Any]], label: str, check: RecordCheck, bad: BadRecords) -> list[Any]:
    """Keep the records that pass ``check(record, f"{label} {number}")``; hand the rest to ``bad``."""
    kept = []
    for number, record in numbered:
        try:
            check(record, f"{label} {number}")
        except DataError as e:
            bad.handle(e)
            continue
        kept.append(record)
    return kept


def read_json_records(path: str | Path, check: RecordCheck, bad: BadRecords | None = None) -> list[Any]:
    """A JSON list whose elements are validated one by one (positions are 0-based "index N")."""
    records = require_list(read_json(path), path)
    return collect_valid(enumerate(records), "index", check, bad or BadRecords())


def read_jsonl_records(path: str | Path, check: RecordCheck, bad: BadRecords | None = None) -> list[Any]:
    """A JSON-lines file whose lines are validated one by one (positions are 1-based "line N")."""
    bad = bad or BadRecords()
    return collect_valid(iter_jsonl(path, bad), "line", check, bad)


def require_texts(value: Any, name: str, path: str | Path, where: str) -> list[str]:
    """A non-empty string or a non-empty list of non-empty strings (captions given as paraphrases)."""
    if isinstance(value, list):
        if not value:
            raise DataError(path, where, f"empty list of {name}s")
        return [require_text(v, name, path, where) for v in value]
    return [require_text(value, name, path, where)]


def check_image_base64(text: Any, record_file: str | Path, where: str, what: str = "base64 image") -> tuple[int, int]:
    """Decode a base64-encoded image (X-VLM's ``binary`` field) and return ``(width, height)``."""

    if not isinstance(text, str) or not text:
        raise DataError(record_file, where, f"{what} should be a non-empty base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(record_file, where, f"{what} is not valid base64: {e}") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(record_file, where, f"corrupt {what}: {e}") from None


class ImageChecker:
    """Opens the images an annotation file refers to, relative to ``image_root``, once each.

    With ``image_root`` None every call is a no-op returning None, so readers can call it
    unconditionally. Sizes are cached per path: a retrieval file that names each image five
    times decodes it once.
    """

    def __init__(self, annotation_path: str | Path, image_root: str | Path | None) -> None:
        self.annotation_path = Path(annotation_path)
        self.image_root = None if image_root is None else Path(image_root)
        self._sizes: dict[Path, tuple[int, int]] = {}

    @property
    def enabled(self) -> bool:
        return self.image_root is not None

    def check(self, relative: str, where: str) -> tuple[int, int] | None:
        """``(width, height)`` of ``image_root / relative``, or None when images are not checked."""
        if self.image_root is None:
            return None
        path = self.image_root / relative
        if path not in self._sizes:
            self._sizes[path] = check_image(path, self.annotation_path, where)
        return self._sizes[path]


def require_id(record: dict[str, Any], name: str, path: str | Path, where: str, required: bool = True) -> None:
    """Ids are ints or strings (COCO uses ints, ALBEF "coco_391895"-style strings); never bools."""
    if name not in record:
        if required:
            raise DataError(path, where, f"missing field '{name}'")
        return
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(path, where, f"field '{name}' should be int/str, got {type(value).__name__}")


def require_positive_int(record: dict[str, Any], name: str, path: str | Path, where: str) -> int:
    """A pixel size or count: a positive int."""
    require_fields(record, {name: int}, path, where)
    if record[name] <= 0:
        raise DataError(path, where, f"field '{name}' should be positive, got {record[name]}")
    return record[name]


def check_image_field(
    record: dict[str, Any], name: str, path: str | Path, where: str, images: ImageChecker
) -> tuple[int, int] | None:
    """A non-empty relative image path; its ``(width, height)`` when images are checked."""
    require_fields(record, {name: str}, path, where)
    require_text(record[name], name, path, where)
    return images.check(record[name], where)


# validator(record, annotation_path, where, images) raises DataError when the record is bad
Validator = Callable[[Any, Path, str, ImageChecker], object]


def bound_validator(path: Path, validator: Validator, image_root: str | Path | None) -> RecordCheck:
    """``validator`` as a :data:`RecordCheck` of one file (its images checked when ``image_root`` is set)."""
    images = ImageChecker(path, image_root)
    return lambda record, where: validator(record, path, where, images)


def read_validated_json(
    path: str | Path, validator: Validator, bad: BadRecords | None = None, image_root: str | Path | None = None
) -> list[Any]:
    """A JSON list checked record by record (and each record's images when ``image_root`` is set)."""
    return read_json_records(path, bound_validator(Path(path), validator, image_root), bad)


def read_validated_jsonl(
    path: str | Path, validator: Validator, bad: BadRecords | None = None, image_root: str | Path | None = None
) -> list[Any]:
    """A JSON-lines file checked line by line (and each line's images when ``image_root`` is set)."""
    return read_jsonl_records(path, bound_validator(Path(path), validator, image_root), bad)


def validate_records(rows: Iterable[Any], validator: Validator, path: str | Path, lines: bool = False) -> None:
    """Check records before a writer writes them, so no writer produces a file its reader rejects.

    Raises the first DataError; positions are "line N" (1-based) for JSON lines, else "index N".
    """
    numbered = enumerate(rows, 1) if lines else enumerate(rows)
    label = "line" if lines else "index"
    collect_valid(numbered, label, bound_validator(Path(path), validator, None), BadRecords())


def write_validated_json(path: str | Path, rows: Sequence[Any], validator: Validator) -> None:
    """The JSON-list writer of every record format: checked as its reader checks, then written atomically."""
    validate_records(rows, validator, path)
    write_json(path, list(rows))


def write_validated_jsonl(path: str | Path, rows: Sequence[Any], validator: Validator) -> None:
    """The JSON-lines writer of every record format: checked line by line, then written atomically."""
    validate_records(rows, validator, path, lines=True)
    write_jsonl(path, rows)


def image_bounds(
    record: dict[str, Any], path: str | Path, where: str, image: str, actual: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The ``(width, height)`` boxes must fit in: the record's ``width``/``height`` when it has them
    (they must then agree with the decoded image), else the decoded size, else None (unknown)."""
    if "width" not in record and "height" not in record:
        return actual
    declared = (require_positive_int(record, "width", path, where), require_positive_int(record, "height", path, where))
    if actual is not None and tuple(actual) != declared:
        says = f"{declared[0]}x{declared[1]}"
        raise DataError(path, where, f"image {image} is {actual[0]}x{actual[1]}, record says {says}")
    return declared

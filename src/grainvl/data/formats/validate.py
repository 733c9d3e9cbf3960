"""Record validation shared by the format readers: required fields, ids, texts, boxes and images,
and reading whole files of validated records (file I/O itself is :mod:`grainvl.utils.fileio`).

Every reader goes through these so that bad input always becomes a :class:`DataError` that names
the file, the record and the reason. Three rules live here and nowhere else:

* :func:`require_regular_file`: a file a layout or a config names must be a regular file (not a
  folder, a broken symlink or a symlink loop);
* :func:`confined_path`: a file a *record* names must resolve inside its data root (not an absolute
  path elsewhere, no ``..`` out of it, no symlink out of it), unless the root was opened with
  :func:`allow_outside_root` (the configs' ``allow_outside_root`` field);
* :func:`skipping_bad_records`: inside the block, readers called without their own
  :class:`BadRecords` hand bad records to the block's collector (``--skip-bad`` of a whole run).
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import io
import math
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from grainvl.data.masking import pre_caption, pre_question
from grainvl.errors import BadRecords, DataError, os_reason
from grainvl.utils.fileio import check_utf8_start, iter_jsonl, read_json, write_json, write_jsonl

# ---------------------------------------------------------------------------------------------
# Files: regular files only, record paths confined to their root, whole-run skip collectors


def require_regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a regular file (symlinks followed); else the one-line DataError saying what it is.

    A folder, a broken symlink, a symlink loop or a special file under an annotation file's name would
    otherwise be skipped by ``is_file()`` checks, and its records silently missing from the run.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        broken = path.is_symlink()
        reason = f"is a broken symlink (its target {os.readlink(path)!r} does not exist)" if broken else "not found"
        raise DataError(path, None, f"{what} {reason}") from None
    except OSError as e:  # ELOOP: a symlink loop; EACCES on a parent folder
        reason = "is a symlink loop" if e.errno == errno.ELOOP else f"cannot be opened: {_os_reason(e)}"
        raise DataError(path, None, f"{what} {reason}") from None
    if stat.S_ISDIR(mode):
        raise DataError(path, None, f"{what} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise DataError(path, None, f"{what} is not a regular file")
    return path


def _os_reason(error: OSError | RuntimeError) -> str:
    """An OS error in words; ELOOP ("Too many levels of symbolic links") reads better as what it means.

    ``Path.resolve`` raises RuntimeError for a loop before Python 3.13, OSError(ELOOP) from 3.13.
    """
    if isinstance(error, RuntimeError) or error.errno == errno.ELOOP:
        return "symlink loop"
    return os_reason(error)


def is_present(path: Path) -> bool:
    """Whether anything (a file, a folder, a link, even a broken one) has this name."""
    return path.exists() or path.is_symlink()


_OUTSIDE_ALLOWED: set[Path] = set()  # resolved roots whose records may name files anywhere


def allow_outside_root(root: str | Path) -> None:
    """Let records read against ``root`` name files outside it (absolute paths, ``..``, symlinked folders).

    Called by the recipes and ``data check`` when the config's ``allow_outside_root`` is true, for
    every image root of the run; it lasts for the process.
    """
    _OUTSIDE_ALLOWED.add(_resolved_root(str(root)))


@functools.lru_cache(maxsize=256)
def _resolved_root(root: str) -> Path:
    return Path(root).resolve()


def confined_path(
    root: str | Path, relative: str, file: str | Path, record: str | int | None, allow_outside: bool | None = None
) -> Path:
    """``root / relative`` when it resolves (symlinks followed) inside ``root``; else a DataError naming
    ``file`` and ``record`` (the annotation file and the record that named the path).

    The one rule for every file a record names: images, video frames and folders, WebDataset members.
    ``allow_outside`` None: as :func:`allow_outside_root` set it for ``root``. The path returned is the
    joined one (not resolved), so messages show the path as the record wrote it under its root.
    """
    path = Path(root) / relative
    real_root = _resolved_root(str(root))
    configurable = allow_outside is None  # the config decides: say how to allow it
    if allow_outside if allow_outside is not None else real_root in _OUTSIDE_ALLOWED:
        return path
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise DataError(file, record, f"{relative!r}: {_os_reason(e)}") from None
    if not real.is_relative_to(real_root):
        to = "" if str(real) == relative else f" (to {real})"
        hint = f"; {_ALLOW_HINT}" if configurable else ""
        raise DataError(file, record, f"path {relative!r} leads outside {root}{to}{hint}")
    return path


_ALLOW_HINT = "to allow it, set files.allow_outside_root=true (data check: --allow-outside-root)"


class RunBadRecords(BadRecords):
    """A whole run's collector: a file read twice (an evaluation split, then the latency measurement on it)
    lists each bad record once."""

    def __init__(self, skip_bad: bool = False) -> None:
        super().__init__(skip_bad=skip_bad)
        self._seen: set[str] = set()

    def handle(self, error: DataError) -> None:
        if self.skip_bad and str(error) in self._seen:
            return
        self._seen.add(str(error))
        super().handle(error)


_SKIP_COLLECTOR: ContextVar[BadRecords | None] = ContextVar("grainvl_skip_collector", default=None)


@contextmanager
def skipping_bad_records(skip_bad: bool) -> Iterator[BadRecords]:
    """Inside the block, a reader given no :class:`BadRecords` of its own uses the block's collector.

    A run's ``skip_bad`` reaches every reader of every task this way (training and evaluation files
    alike) without each task passing it on; the run then reports the collector's ``errors``. Without
    ``skip_bad`` the collector raises the first error, as a reader's default does.
    """
    bad = RunBadRecords(skip_bad=skip_bad)
    token = _SKIP_COLLECTOR.set(bad)
    try:
        yield bad
    finally:
        _SKIP_COLLECTOR.reset(token)


def records_handler(bad: BadRecords | None) -> BadRecords:
    """``bad``, else the collector of the enclosing :func:`skipping_bad_records`, else one that raises."""
    if bad is not None:
        return bad
    return _SKIP_COLLECTOR.get() or BadRecords()


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


Cleaning = Callable[[str], str]  # a loader's text normalisation; ValueError when nothing is left


def caption_cleaning(text: str) -> str:
    """:func:`pre_caption` without truncation: what every loader does to a caption, sentence or refexp."""
    return pre_caption(text, sys.maxsize)


def question_cleaning(text: str) -> str:
    """:func:`pre_question` without truncation: what the VQA and video-QA loaders do to a question."""
    return pre_question(text, sys.maxsize)


def require_text(value: Any, name: str, path: str | Path, where: str, clean: Cleaning | None = None) -> str:
    """A non-empty string (captions, questions, sentences); with ``clean``, non-empty after that cleaning too.

    A caption of punctuation only passes ``strip()`` but is empty after :func:`pre_caption`; checking it
    here makes it a bad record of its file instead of an error at a training sample.
    """
    if not isinstance(value, str):
        raise DataError(path, where, f"field '{name}' should be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, where, f"empty {name}")
    if clean is not None:
        try:
            clean(value)
        except ValueError:
            raise DataError(path, where, f"{name} {value!r} is empty once cleaned (punctuation only)") from None
    return value


def check_box(
    box: Any, path: str | Path, where: str, width: float | None = None, height: float | None = None
) -> list[float]:
    """Validate an ``[x, y, w, h]`` box: four numbers, positive size, inside the image if known."""
    if not isinstance(box, (list, tuple)) or len(box) < 4 or not all(_is_number(v) for v in box[:4]):
        raise DataError(path, where, f"box should be [x, y, w, h] numbers, got {box!r}")
    if not all(math.isfinite(v) for v in box[:4]):  # JSON readers accept NaN / Infinity; no comparison catches NaN
        raise DataError(path, where, f"box {box!r} has a non-finite number")
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
    if not image_path.is_file():
        what = "is not a file" if is_present(image_path) else "not found"
        raise DataError(record_file, where, f"image {what}: {image_path}")
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
    """A JSON list whose elements are validated one by one (positions are 0-based "index N").

    ``bad`` None: the collector of an enclosing :func:`skipping_bad_records`, else the first error raises.
    """
    path = Path(path)
    check_utf8_start(path)
    try:
        records = require_list(read_json(path), path)
    except OSError as e:  # a folder, a permission: one line, not a traceback
        raise DataError(path, None, f"cannot read: {_os_reason(e)}") from None
    return collect_valid(enumerate(records), "index", check, records_handler(bad))


def read_jsonl_records(path: str | Path, check: RecordCheck, bad: BadRecords | None = None) -> list[Any]:
    """A JSON-lines file whose lines are validated one by one (positions are 1-based "line N").

    Lines are decoded one by one, so a byte that is not UTF-8 makes its line bad (skipped with
    ``skip_bad``), not the whole file; a UTF-16 file is one file-level error.
    """
    path = Path(path)
    bad = records_handler(bad)
    check_utf8_start(path)
    try:
        return collect_valid(iter_jsonl(path, bad), "line", check, bad)
    except OSError as e:  # a folder, a permission: one line, not a traceback
        raise DataError(path, None, f"cannot read: {_os_reason(e)}") from None


def require_texts(value: Any, name: str, path: str | Path, where: str, clean: Cleaning | None = None) -> list[str]:
    """A non-empty string or a non-empty list of non-empty strings (captions given as paraphrases)."""
    if isinstance(value, list):
        if not value:
            raise DataError(path, where, f"empty list of {name}s")
        return [require_text(v, name, path, where, clean) for v in value]
    return [require_text(value, name, path, where, clean)]


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
    """The per-file state of a record check: the images an annotation file refers to, opened relative
    to ``image_root`` once each, and the ids its records claim (:meth:`claim`).

    With ``image_root`` None every image check is a no-op returning None, so readers can call it
    unconditionally. Sizes are cached per path: a retrieval file that names each image five
    times decodes it once. Ids are checked whether images are or not.
    """

    def __init__(self, annotation_path: str | Path, image_root: str | Path | None) -> None:
        self.annotation_path = Path(annotation_path)
        self.image_root = None if image_root is None else Path(image_root)
        self._sizes: dict[Path, tuple[int, int]] = {}
        self._claimed: dict[str, dict[Any, tuple[str, Any]]] = {}  # kind -> id -> (where, shared value)

    @property
    def enabled(self) -> bool:
        return self.image_root is not None

    def check(self, relative: str, where: str) -> tuple[int, int] | None:
        """``(width, height)`` of ``image_root / relative``, or None when images are not checked."""
        if self.image_root is None:
            return None
        path = confined_path(self.image_root, relative, self.annotation_path, where)
        if path not in self._sizes:
            self._sizes[path] = check_image(path, self.annotation_path, where)
        return self._sizes[path]

    def claim(self, kind: str, key: Any, where: str, shared: tuple[str, Any] | None = None) -> None:
        """Record that ``where`` holds ``kind`` ``key``; another record with it is a DataError naming both.

        The official evaluators key results by these ids, so a repeat would silently drop or merge a
        record's score. ``shared`` = ``(what, value)`` allows repeats that agree on ``value``: several
        sentences may share one RefCOCO ``ref_id`` and its box.
        """
        seen = self._claimed.setdefault(kind, {})
        if key not in seen:
            seen[key] = (where, shared[1] if shared else None)
            return
        first, value = seen[key]
        if shared is None:
            raise DataError(self.annotation_path, where, f"duplicate {kind} {key!r} (first at {first})")
        if shared[1] != value:
            raise DataError(
                self.annotation_path, where, f"{kind} {key!r} again with another {shared[0]} (first at {first})"
            )


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
    if actual is not None:
        check_size(actual, declared, image, path, where)
    return declared


def declared_size(record: dict[str, Any]) -> tuple[int, int] | None:
    """The ``(width, height)`` a validated record states (RefCOCO+, region lines), else None."""
    if "width" in record and "height" in record:
        return int(record["width"]), int(record["height"])
    return None


def check_size(
    actual: tuple[int, int], declared: tuple[int, int] | None, image: str, path: str | Path, where: str
) -> None:
    """The image's real size must be the one its record states: boxes are in the stated pixels."""
    if declared is not None and tuple(actual) != tuple(declared):
        says = f"{declared[0]}x{declared[1]}"
        raise DataError(path, where, f"image {image} is {actual[0]}x{actual[1]}, record says {says}")

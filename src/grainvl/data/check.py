"""``grainvl data check``: validate dataset files (or a whole world folder) with the format readers.

Every file is read by its registered reader with image checking on, so a malformed record, a
broken reference and a corrupt image all surface here rather than hours into training. Checking
goes on file by file after an error, so one run lists the problems of every file: the first error
of each file, or every bad record with ``skip_bad``. When the folder has a ``manifest.json`` with
``{"files": {"relative/path": "<sha256 hex>"}}``, every listed file is also hashed and compared.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from grainvl.data.formats.registry import FORMATS, FormatSpec, load_all, sniff
from grainvl.data.formats.validate import ImageChecker, is_present, require_regular_file
from grainvl.data.layout import (
    FILE_NAMES,
    MANIFEST,
    DataFiles,
    DataLayout,
    as_list,
    files_from_official,
    manifest_files,
    vqa_v2_records,
)
from grainvl.errors import BadRecords, DataError, os_reason
from grainvl.utils.fileio import read_json

# Images are data that records point to; the readers open the ones referenced.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
COCO_SUBTYPE = re.compile(r"[a-z-]+20\d\d/")  # train2014/, val2014/, test2015/: COCO image folders


@dataclass
class FileCheck:
    """One checked file: ``file`` as shown (relative to the checked folder), the number of valid
    records read (0 when the file could not be read), and its errors."""

    file: str
    format: str
    records: int
    errors: list[DataError] = field(default_factory=list)


@dataclass
class CheckReport:
    root: Path  # the folder that shown file names are relative to
    rows: list[FileCheck] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)  # files below the folder no format claims
    hint: str = ""  # one line on how to make the images resolve (they were not found from the data root)

    @property
    def errors(self) -> list[DataError]:
        return [error for row in self.rows for error in row.errors]

    @property
    def ok(self) -> bool:
        return not self.errors


# The task whose image root a format's records use (the same root the trainer opens them from).
FORMAT_TASKS = {
    "albef-retrieval": "retrieval",
    "albef-karpathy": "captioning",
    "albef-vqa": "vqa",
    "albef-nlvr2": "nlvr2",
    "albef-refcoco": "grounding",
    "msrvtt-retrieval": "video_retrieval",
    "msrvtt-qa": "videoqa",
}


def check_path(
    path: str | Path,
    fmt: str | None = None,
    skip_bad: bool = False,
    image_root: str | Path | None = None,
    allow_outside: bool = False,
) -> CheckReport:
    """Check one file or every recognised file below a folder; see the module docstring.

    For a file, ``fmt`` names its format (else it is sniffed from the file name; an unknown one is
    a DataError). For a folder, ``fmt`` limits the check to files whose names that format matches.
    A missing path is a DataError; bad data never raises, it is reported. ``allow_outside``: records
    may name images outside the image root (the configs' ``allow_outside_root``).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "not found")
    load_all()
    files = DataFiles(image_root=str(image_root) if image_root else "", allow_outside_root=allow_outside)
    start = path if path.is_dir() else path.parent
    data_files = [path] if path.is_file() else [f for f in _data_files(path) if f.is_file()]
    root, hint = (start, "") if image_root else find_data_root(start, data_files)
    layout = DataLayout(root, files)
    layout.permit_outside()
    if path.is_dir():
        report = _check_directory(path, fmt, skip_bad, layout)
    else:
        spec = _format_for(path, fmt)
        report = CheckReport(root=path.parent, rows=[_check_file(path, path.name, spec, skip_bad, layout)])
    report.hint = hint if not report.ok else ""
    return report


def find_data_root(start: Path, files: list[Path]) -> tuple[Path, str]:
    """The folder the image paths of ``files`` resolve from, as the trainer's data root, and a hint line.

    The nearest folder at or above ``start`` holding ``manifest.json`` (a world); else the nearest one
    (``start`` itself, then up to five folders above it) under which the first records' images exist,
    so that ``W/annotations/retrieval`` or ``D/data/finetune`` checks against ``W`` / ``D``. When no
    folder resolves them: ``start`` and a line saying to pass ``--image-root``.
    """
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / MANIFEST).is_file():
            return folder, ""
    refs = [ref for ref in (_first_reference(f) for f in files[:20]) if ref]
    if not refs:
        return start, ""
    for folder in (start, *start.parents)[:6]:
        if any(_resolves(folder, ref) for ref in refs):
            return folder, ""
    return start, (
        f"images such as {refs[0]!r} are not under {start} or the folders above it: pass --image-root FOLDER "
        "(the folder the image paths in the files are relative to, as the official image_root / vqa_root)"
    )


def _first_reference(file: Path) -> str:
    """The image (or video) the first record of an annotation file names; "" when there is none to read."""
    try:
        if file.name.endswith("_questions.json"):
            records = vqa_v2_records(file, None)
            return records[0]["image"] if records else ""
        with file.open("rb") as f:  # a bad byte further down must not hide where the images are
            head = f.read(1 << 16).decode("utf-8", errors="replace").lstrip()
        if head.startswith("["):
            doc = read_json(file)
            record = doc[0] if isinstance(doc, list) and doc else None
        else:
            record = json.loads(head.splitlines()[0]) if head else None
    except (DataError, ValueError, OSError, KeyError, TypeError, IndexError):
        return ""
    if not isinstance(record, dict):
        return ""
    images = record.get("images")
    value = record.get("image") or (images[0] if isinstance(images, list) and images else None)
    value = value or record.get("video") or record.get("video_id")
    return value if isinstance(value, str) else ""


def _resolves(folder: Path, ref: str) -> bool:
    path = folder / ref
    return path.exists() or path.with_name(path.name + ".json").exists() or (folder / "videos" / ref).exists()


def check_layout(layout: DataLayout, task: str | None = None, skip_bad: bool = False) -> CheckReport:
    """Check every file a run on ``layout`` reads (a fine-tuning config's files, or what the official names
    find below its root), each with the image root the trainer uses."""
    load_all()
    layout.permit_outside()
    report = CheckReport(root=layout.root)
    seen: set[Path] = set()
    for name in [task] if task else list(FILE_NAMES):
        try:
            splits = list(layout.explicit_splits()) or ["train", "val", "test", "test_ood", "dev", "testA", "testB"]
        except DataError as error:  # a configured file that is a folder or a broken link
            report.rows.append(FileCheck(file=error.path, format="-", records=0, errors=[error]))
            break
        for split in splits:
            for file in _split_files(layout, name, split, report):
                if file in seen:
                    continue
                seen.add(file)
                spec = sniff(file) or (FORMATS.get(f"albef-{name}") if name != "task" else None)
                if spec is None:
                    report.unrecognised.append(str(file))
                    continue
                report.rows.append(_check_file(file, str(file), spec, skip_bad, layout, name))
    answers = layout.answer_list() if task in (None, "vqa") else None
    if answers is not None and answers not in seen:
        report.rows.append(_check_file(answers, str(answers), FORMATS["albef-answer-list"], skip_bad, layout))
    if not report.rows:
        raise DataError(layout.root, None, f"no {task or 'task'} files found (see docs/formats.md for the names)")
    return report


def validate_split_files(files: list[Path], task: str) -> None:
    """Read every record of a task's split files with their format readers (no image is opened), raising the
    first DataError: an evaluation file with a bad record or a duplicated id fails before training, not after."""
    load_all()
    for file in files:
        spec = sniff(file) or FORMATS.get(f"albef-{task}")
        if spec is not None:
            spec.read(file, bad=BadRecords())


def _split_files(layout: DataLayout, task: str, split: str, report: CheckReport) -> list[Path]:
    """``layout.split_files``; a declared file that is missing or not a regular file becomes a report row."""
    try:
        return layout.split_files(task, split)
    except DataError as error:
        report.rows.append(FileCheck(file=error.path, format="-", records=0, errors=[error]))
        return []


def layout_from_config(tree: dict[str, Any]) -> tuple[DataLayout, str | None]:
    """The layout and task of a fine-tuning config mapping: grainvl's (``task``, ``world``, ``files``) or an
    official X-VLM / X²-VLM one (``train_file``, ``image_root``, ...: relative to the working directory)."""
    if "files" in tree or "world" in tree:
        files = DataFiles(**(tree.get("files") or {}))
        return DataLayout(Path(tree.get("world", ".")), files), tree.get("task")
    files = files_from_official({k: v for k, v in tree.items() if v})
    names = " ".join(as_list(files.train_file) + as_list(files.test_file))
    task = next((t for t, pats in FILE_NAMES.items() if any(p.split("{")[0] in names for p in pats)), None)
    return DataLayout(Path("."), files), task


def data_root_of(file: Path) -> Path:
    """The data root of a lone annotation file: the folder of the nearest ``manifest.json`` above it (a
    world), else the file's own folder."""
    for folder in file.resolve().parents:
        if (folder / MANIFEST).is_file():
            return folder
    return file.parent


def _format_for(path: Path, fmt: str | None) -> FormatSpec:
    spec = FORMATS.get(fmt) if fmt is not None else sniff(path)
    if spec is None:
        what = f"unknown format {fmt!r}" if fmt is not None else "unknown format"
        raise DataError(path, None, f"{what}; use --format one of {', '.join(sorted(FORMATS))}")
    return spec


def _check_directory(root: Path, fmt: str | None, skip_bad: bool, layout: DataLayout) -> CheckReport:
    only = _format_for(root, fmt) if fmt is not None else None
    report = CheckReport(root=root)
    if (root / MANIFEST).is_file():
        report.rows.append(_check_manifest(root, skip_bad))
    for file in _data_files(root):
        shown = file.relative_to(root).as_posix()
        spec = (only if only.matches(file) else None) if only is not None else sniff(file)
        if spec is not None:
            report.rows.append(_check_file(file, shown, spec, skip_bad, layout))
        elif only is None and file.is_file():
            report.unrecognised.append(shown)
        elif only is None:  # a broken link, a loop, a FIFO: whatever it was meant to be, it is not readable
            report.rows.append(_not_a_file(file, shown))
    return report


def _not_a_file(file: Path, shown: str) -> FileCheck:
    """The row of an entry that is not a regular file, with the error saying what it is."""
    row = FileCheck(file=shown, format="-", records=0)
    try:
        require_regular_file(file, "entry")
    except DataError as error:
        row.errors.append(error)
    return row


def _data_files(root: Path) -> list[Path]:
    """Files below ``root`` in sorted path order, without dot-files, manifests and images.

    Entries that are not regular files are listed too, when they are not plain folders: a broken
    symlink, a symlink loop, a FIFO, and a folder whose name a format claims (``image_text.jsonl/``).
    Each becomes an error of the report, since a reader would silently never see its records.
    """
    files = []
    for file in root.rglob("*"):
        parts = file.relative_to(root).parts
        if any(part.startswith(".") for part in parts):
            continue  # hidden files and folders hold temp files and VCS data, not records
        if file.name == MANIFEST or file.suffix.lower() in IMAGE_SUFFIXES:
            continue
        if file.is_dir() and (file.is_symlink() or sniff(file) is None):
            continue  # a folder of files (or a link to one: rglob does not descend into it)
        files.append(file)
    return sorted(files, key=lambda f: f.relative_to(root).parts)


image_root_for = data_root_of  # the name earlier releases used


def _check_file(
    file: Path, shown: str, spec: FormatSpec, skip_bad: bool, layout: DataLayout, task: str | None = None
) -> FileCheck:
    """Read ``file`` with its images opened from the root the trainer opens them from (``layout.image_root``)."""
    bad = BadRecords(skip_bad=skip_bad)
    row = FileCheck(file=shown, format=spec.name, records=0)
    try:
        require_regular_file(file, "annotation file")  # a folder or a broken link under a format's name
        image_root = layout.image_root(task or FORMAT_TASKS.get(spec.name, ""))
        row.records = count_records(spec.read(file, bad=bad, image_root=image_root))
        if spec.name == "vqa-v2-questions":  # the pair names images by COCO id: open them like the trainer
            _check_vqa_v2_images(file, layout.image_root("vqa"), bad)
    except DataError as error:
        row.errors.append(error)
    except OSError as error:  # a permission, an I/O error: this file's one line
        row.errors.append(DataError(file, None, f"cannot read: {os_reason(error)}"))
    except Exception as error:  # a reader bug must not hide the files after it; report it as this file's error
        row.errors.append(DataError(file, None, f"reader failed: {type(error).__name__}: {error}"))
    row.errors[:0] = bad.errors  # skipped records came before whatever stopped the read
    return row


def _check_vqa_v2_images(questions: Path, image_root: Path, bad: BadRecords) -> None:
    """Open every image a VQA v2 questions file names (``{subtype}/COCO_{subtype}_{image_id:012d}.jpg``).

    Only COCO subtypes (``train2014``, ``val2014``, ``test2015``, ...) name images; the world's pair
    (``world_val``) mirrors its ``vqa_{split}.json``, whose own image paths are checked there.
    """
    images = ImageChecker(questions, image_root)
    for i, record in enumerate(vqa_v2_records(questions, None)):
        if not COCO_SUBTYPE.match(record["image"]):
            return
        try:
            images.check(record["image"], f"question {i}")
        except DataError as error:
            bad.handle(error)


def count_records(result: Any) -> int:
    """How many records a reader returned, whatever shape its official schema has.

    A list counts its items; a TSV table its rows; a SQuAD object its questions; another JSON
    object (COCO, VQA) its longest top-level list (annotations, questions).
    """
    if isinstance(result, (list, tuple)):
        return len(result)
    if not isinstance(result, dict):
        return 1
    if isinstance(result.get("rows"), list):
        return len(result["rows"])
    data = result.get("data")
    if isinstance(data, list) and all(isinstance(a, dict) and "paragraphs" in a for a in data):
        return sum(len(p["qas"]) for a in data for p in a["paragraphs"])
    lists = [len(v) for v in result.values() if isinstance(v, list)]
    return max(lists) if lists else len(result)  # a flat mapping (ans2label) counts its entries


def _check_manifest(root: Path, skip_bad: bool) -> FileCheck:
    """Compare the sha256 of every file ``manifest.json`` lists against the file on disk."""
    manifest_path = root / MANIFEST
    del skip_bad  # every changed file is reported: each listed file is a separate fact worth naming
    bad = BadRecords(skip_bad=True)
    row = FileCheck(file=MANIFEST, format="manifest", records=0)
    try:
        listed = manifest_files(manifest_path)
        row.records = len(listed)
        for relative, expected in sorted(listed.items()):
            try:
                _check_listed_file(root, manifest_path, relative, expected)
            except DataError as error:
                bad.handle(error)
    except DataError as error:
        row.errors.append(error)
    row.errors[:0] = bad.errors
    return row


def _check_listed_file(root: Path, manifest_path: Path, relative: str, expected: Any) -> None:
    where = f"file {relative}"
    if not isinstance(expected, str) or not SHA256_HEX.fullmatch(expected):
        raise DataError(manifest_path, where, f"expected a 64-digit lowercase sha256 hex digest, got {expected!r}")
    relative_path = PurePosixPath(relative)
    if relative_path.is_absolute() or ".." in relative_path.parts:
        raise DataError(manifest_path, where, "path should be relative to the manifest's folder, without '..'")
    file = root / relative_path
    if not is_present(file):
        raise DataError(manifest_path, where, "listed file is missing")
    try:
        require_regular_file(file, "listed file")
        with file.open("rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
    except DataError as error:
        raise DataError(manifest_path, where, error.reason) from None
    except OSError as error:  # unreadable (permissions): named, and the other files still hashed
        raise DataError(manifest_path, where, f"cannot read: {os_reason(error)}") from None
    if actual != expected:
        raise DataError(
            manifest_path, where, f"sha256 mismatch: manifest has {expected[:12]}…, file has {actual[:12]}…"
        )


def format_report(report: CheckReport, by_format: bool = False) -> str:
    """A plain-text table (file, format, records, errors), one line per error, and a summary line.

    With ``by_format`` the table has one row per format (files, records, errors) instead of one per file.
    """
    if by_format:
        groups: dict[str, list[int]] = {}
        for r in report.rows:
            files_records_errors = groups.setdefault(r.format, [0, 0, 0])
            files_records_errors[0] += 1
            files_records_errors[1] += r.records
            files_records_errors[2] += len(r.errors)
        header = ("format", "files", "records", "errors")
        cells = [header] + [(name, str(f), str(n), str(e)) for name, (f, n, e) in sorted(groups.items())]
    else:
        header = ("file", "format", "records", "errors")
        cells = [header] + [(r.file, r.format, str(r.records), str(len(r.errors))) for r in report.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 - by_format else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    errors = report.errors
    if errors:
        lines += ["", f"{len(errors)} error(s):"] + [f"  {error}" for error in errors]
    if report.unrecognised:
        shown = ", ".join(report.unrecognised[:5]) + (", ..." if len(report.unrecognised) > 5 else "")
        lines += ["", f"{len(report.unrecognised)} file(s) in no known format, not checked: {shown}"]
    records = sum(r.records for r in report.rows if r.format != "manifest")  # manifest rows count files, not records
    if report.hint:
        lines += ["", f"hint: {report.hint}"]
    verdict = "OK" if report.ok else "FAILED"
    lines += ["", f"{verdict}: {len(report.rows)} file(s), {records} record(s), {len(errors)} error(s)"]
    return "\n".join(line.rstrip() for line in lines)


@dataclass
class CheckConfig:
    """``grainvl data check``: what to validate and how to report it."""

    path: str = ""  # a dataset file or folder (a world or real data in the official formats)
    image_root: str | None = None  # image paths are relative to this (default: the checked folder / data root)
    format: str | None = None  # force a format for a single file; None: sniff it
    skip_bad: bool = False  # list every bad record instead of the first per file
    by_format: bool = False  # one table row per format instead of one per file
    allow_outside_root: bool = False  # records may name images outside the image root (absolute, ``..``, links out)

"""X-VLM / ALBEF fine-tuning JSON files: retrieval, Karpathy captioning, VQA, NLVR2, RefCOCO+.

Each file is one JSON list of flat records (the X-VLM Google-Drive bundle; xvlm.md §3.2):

* retrieval ``coco_{split}.json`` / ``flickr30k_{split}.json`` and captioning
  ``coco_karpathy_{split}.json``: ``{"image", "caption", "image_id"?}``; train files have one
  caption string per record, val/test files a list of captions per image.
* VQA ``vqa_{split}.json`` / ``vg_qa.json``: ``{"question_id", "question", "image",
  "answer"?: [str] | str, "dataset"?: "vqa" | "vg" | "gqa"}`` (test files carry no answers) and
  ``answer_list.json``, the candidate answers the ranking head scores (unique strings).
* NLVR2 ``nlvr_{split}.json``: ``{"images": [left, right], "sentence", "label"}``; the label is a
  bool or the string "True"/"False", as the official dataset code accepts, anything else is bad.
* RefCOCO+ ``refcoco+_{split}.json``: ``{"image", "text", "ref_id", "bbox"?: [x, y, w, h],
  "height"?, "width"?, "dets"?: [[x, y, w, h, ...]]}``; boxes are COCO pixels.

Image paths are relative to ``image_root`` (the world writes them relative to its root folder).
Extra fields are kept as they are; readers return the records unchanged so that
``read(write(x)) == x``.
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

VQA_SOURCES = ("vqa", "vg", "gqa")  # X-VLM's vqa_dataset branches on these
NLVR_LABELS: dict[Any, bool] = {True: True, False: False, "True": True, "False": False}


# ------------------------------------------------------------------------------------ shared checks
def nlvr_label(value: Any, path: Path, where: str) -> bool:
    """The NLVR2 label as a bool: True/False or "True"/"False" (the official code's two spellings)."""
    if isinstance(value, (bool, str)) and value in NLVR_LABELS:
        return NLVR_LABELS[value]
    raise DataError(path, where, f'label should be true/false or "True"/"False", got {value!r}')


# ------------------------------------------------------------------------------------ record checks
def check_caption_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    """Retrieval and Karpathy captioning: one caption (train) or a list of captions (val/test).

    A record with a list of captions is one image of an evaluation file: its image (and ``image_id``)
    must not come back in another record, or the gallery and the caption results would merge them.
    """
    validate.require_fields(record, {"image": str, "caption": (str, list)}, path, where)
    validate.require_texts(record["caption"], "caption", path, where, validate.caption_cleaning)
    validate.require_id(record, "image_id", path, where, required=False)
    validate.check_image_field(record, "image", path, where, images)
    if isinstance(record["caption"], list):
        images.claim("image", record["image"], where)
        if "image_id" in record:
            images.claim("image_id", record["image_id"], where)


def check_vqa_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    validate.require_fields(record, {"question": str, "image": str}, path, where)
    validate.require_id(record, "question_id", path, where)
    validate.require_text(record["question"], "question", path, where, validate.question_cleaning)
    if "answer" in record:
        validate.require_texts(record["answer"], "answer", path, where)
    if "dataset" in record and record["dataset"] not in VQA_SOURCES:
        raise DataError(path, where, f"dataset should be one of {', '.join(VQA_SOURCES)}, got {record['dataset']!r}")
    validate.check_image_field(record, "image", path, where, images)
    images.claim("question_id", record["question_id"], where)  # results are keyed by it (VQA evaluator)


def check_nlvr_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    validate.require_fields(record, {"images": list, "sentence": str}, path, where)
    if "label" not in record:
        raise DataError(path, where, "missing field 'label'")
    nlvr_label(record["label"], path, where)
    validate.require_text(record["sentence"], "sentence", path, where, validate.caption_cleaning)
    pair = record["images"]
    if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
        raise DataError(path, where, f"images should be two paths [left, right], got {pair!r}")
    for image in pair:
        images.check(image, where)
    if "identifier" in record:  # NLVR2's own files: the leaderboard keys predictions by it
        validate.require_id(record, "identifier", path, where)
        images.claim("identifier", record["identifier"], where)


def check_refcoco_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    """RefCOCO+ expression; the box (and candidate ``dets``) must lie inside the image.

    The image size comes from ``width``/``height`` when the record has them (and must then agree
    with the decoded image), else from the decoded image when images are checked.
    """
    validate.require_fields(record, {"image": str, "text": str}, path, where)
    validate.require_id(record, "ref_id", path, where)
    validate.require_text(record["text"], "text", path, where, validate.caption_cleaning)
    actual = validate.check_image_field(record, "image", path, where, images)
    width, height = validate.image_bounds(record, path, where, record["image"], actual) or (None, None)
    if "bbox" in record:
        box = validate.check_box(record["bbox"], path, where, width, height)
        # Sentences of one referred object share its ref_id; the scorer looks the box up by it.
        images.claim("ref_id", record["ref_id"], where, ("image or box", (record["image"], box)))
    for det in _dets(record, path, where):
        validate.check_box(det, path, where, width, height)


def _dets(record: Record, path: Path, where: str) -> list[Any]:
    dets = record.get("dets", [])
    if not isinstance(dets, list):
        raise DataError(path, where, f"field 'dets' should be a list of boxes, got {type(dets).__name__}")
    return dets


def answer_checker(path: Path) -> validate.RecordCheck:
    """Candidate answers are non-empty, unique strings (a duplicate would split one answer's score)."""
    seen: dict[str, str] = {}

    def check(answer: Any, where: str) -> None:
        validate.require_text(answer, "answer", path, where)
        validate.claim_unique(seen, answer, "duplicate answer {key!r}", path, where)

    return check


# ------------------------------------------------------------------------------------ read / write
def read_retrieval(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_json(path, check_caption_record, bad, image_root)


def write_retrieval(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_caption_record)


def read_karpathy(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_json(path, check_caption_record, bad, image_root)


def write_karpathy(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_caption_record)


def read_vqa(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_json(path, check_vqa_record, bad, image_root)


def write_vqa(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_vqa_record)


def read_answer_list(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[str]:
    """The candidate answers; with skip-bad a duplicate or empty entry is dropped (first one kept)."""
    return validate.read_json_records(path, answer_checker(Path(path)), bad)


def write_answer_list(path: str | Path, answers: Sequence[str]) -> None:
    validate.collect_valid(enumerate(answers), "index", answer_checker(Path(path)), BadRecords())
    fileio.write_json(path, list(answers))


def read_nlvr2(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    """A JSON list, or JSON lines (positions ``line N``) as NLVR2's own ``{split}.json`` files come."""
    with Path(path).open("rb") as f:
        lines = not f.read(4096).lstrip().startswith(b"[")
    read = validate.read_validated_jsonl if lines else validate.read_validated_json
    return read(path, check_nlvr_record, bad, image_root)


def write_nlvr2(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_nlvr_record)


def read_refcoco(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_json(path, check_refcoco_record, bad, image_root)


def write_refcoco(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_refcoco_record)


# Patterns name the splits explicitly: a bare "coco_*.json" would also catch coco_karpathy_*.json,
# and "vqa_*.json" / "refcoco+_*.json" the VLUE files (*_vlue_test.json) that vlue.py reads.
_SPLITS = ("train", "val", "test", "test_ood", "dev", "restval", "testA", "testB")
register(
    FormatSpec(
        "albef-retrieval",
        "X-VLM/ALBEF image-text retrieval json (coco_{split}.json, flickr30k_{split}.json)",
        tuple(f"{d}_{s}.json" for d in ("coco", "flickr30k") for s in _SPLITS),
        read_retrieval,
    )
)
register(
    FormatSpec(
        "albef-karpathy",
        "COCO Karpathy captioning json (coco_karpathy_{split}.json)",
        tuple(f"coco_karpathy_{s}.json" for s in _SPLITS),
        read_karpathy,
    )
)
register(
    FormatSpec(
        "albef-vqa",
        "X-VLM VQA json (vqa_{split}.json, vg_qa.json)",
        (*(f"vqa_{s}.json" for s in _SPLITS), "vg_qa.json"),
        read_vqa,
    )
)
register(FormatSpec("albef-answer-list", "X-VLM VQA candidate answers", ("answer_list.json",), read_answer_list))
register(FormatSpec("albef-nlvr2", "X-VLM NLVR2 json (nlvr_{split}.json)", ("nlvr_*.json",), read_nlvr2))
register(
    FormatSpec(
        "albef-refcoco",
        "X-VLM RefCOCO+ grounding json (refcoco+_{split}.json)",
        tuple(f"refcoco+_{s}.json" for s in _SPLITS),
        read_refcoco,
    )
)

"""VLUE out-of-distribution test files (davinci_cclm_vlue.md §C.2), stricter than their ID twins.

| file | record |
|---|---|
| ``itr_vlue_test.json`` | ``{"image", "caption": [str, ...]}`` |
| ``caption_vlue_test.json`` | ``{"image", "caption": [str, ...], "image_id": int}`` |
| ``nlvr2_vlue_test.json`` | ``{"sentence", "images": [left, right], "label": "True" | "False"}`` (strings only) |
| ``vqa_vlue_test.json`` | ``{"question_id": int, "question", "image", "answer": str}`` (one answer) |
| ``refcoco+_vlue_test.json`` | ``{"ref_id", "image", "text", "bbox": [x, y, w, h], "height", "width"}`` |
| ``refcoco+_bbox100_vlue_test.json`` | the same plus ``"dets": [[x, y, w, h, ...], ...]`` proposals |

``caption_vlue_test_gt.json`` is COCO caption ground truth (``coco_caption.read_caption_gt``).
VLUE scores VQA by exact match against the single answer and maps NLVR labels "True"/"False" to
1/0, raising on anything else; these readers reject what those scripts would stop on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grainvl.data.formats import validate
from grainvl.data.formats.albef import (
    check_caption_record,
    check_nlvr_record,
    check_refcoco_record,
    check_vqa_record,
)
from grainvl.data.formats.registry import FormatSpec, register
from grainvl.errors import BadRecords, DataError

Record = dict[str, Any]


def check_itr_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    validate.require_fields(record, {"image": str, "caption": list}, path, where)
    check_caption_record(record, path, where, images)


def check_caption_test_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    validate.require_fields(record, {"image": str, "caption": list, "image_id": int}, path, where)
    check_caption_record(record, path, where, images)


def check_nlvr2_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    if isinstance(record, dict) and "label" in record and record["label"] not in ("True", "False"):
        raise DataError(path, where, f'label should be the string "True" or "False", got {record["label"]!r}')
    check_nlvr_record(record, path, where, images)


def check_vqa_test_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    validate.require_fields(record, {"question_id": int, "question": str, "image": str, "answer": str}, path, where)
    check_vqa_record(record, path, where, images)


def check_refcoco_test_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    fields = {"ref_id": (int, str), "image": str, "text": str, "bbox": list, "height": int, "width": int}
    validate.require_fields(record, fields, path, where)
    check_refcoco_record(record, path, where, images)


def check_refcoco_bbox100_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    validate.require_fields(record, {"dets": list}, path, where)
    check_refcoco_test_record(record, path, where, images)


def read_vlue_itr(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_json(path, check_itr_record, bad, image_root)


def write_vlue_itr(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_itr_record)


def read_vlue_caption(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_json(path, check_caption_test_record, bad, image_root)


def write_vlue_caption(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_caption_test_record)


def read_vlue_nlvr2(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_json(path, check_nlvr2_record, bad, image_root)


def write_vlue_nlvr2(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_nlvr2_record)


def read_vlue_vqa(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_json(path, check_vqa_test_record, bad, image_root)


def write_vlue_vqa(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_vqa_test_record)


def read_vlue_refcoco(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_json(path, check_refcoco_test_record, bad, image_root)


def write_vlue_refcoco(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_json(path, rows, check_refcoco_test_record)


def read_vlue_refcoco_bbox100(
    path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None
) -> list[Record]:
    return validate.read_validated_json(path, check_refcoco_bbox100_record, bad, image_root)


register(FormatSpec("vlue-itr", "VLUE OOD image-text retrieval test", ("itr_vlue_test.json",), read_vlue_itr))
register(FormatSpec("vlue-caption", "VLUE OOD captioning test", ("caption_vlue_test.json",), read_vlue_caption))
register(FormatSpec("vlue-nlvr2", "VLUE OOD NLVR2 test", ("nlvr2_vlue_test.json",), read_vlue_nlvr2))
register(FormatSpec("vlue-vqa", "VLUE OOD VQA test (one answer each)", ("vqa_vlue_test.json",), read_vlue_vqa))
register(FormatSpec("vlue-refcoco", "VLUE OOD RefCOCO+ test", ("refcoco+_vlue_test.json",), read_vlue_refcoco))
register(
    FormatSpec(
        "vlue-refcoco-bbox100",
        "VLUE OOD RefCOCO+ test with detection proposals",
        ("refcoco+_bbox100_vlue_test.json",),
        read_vlue_refcoco_bbox100,
    )
)

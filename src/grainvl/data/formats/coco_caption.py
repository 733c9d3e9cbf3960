"""COCO caption ground truth and caption results, the files pycocotools/pycocoevalcap read.

Ground truth (``captions_val2014.json``, ``coco_karpathy_{split}_gt.json``,
``caption_vlue_test_gt.json``)::

    {"info": {...}, "licenses": [...], "type": "captions",
     "images": [{"id": int, "file_name"?: str, "width"?: int, "height"?: int}, ...],
     "annotations": [{"image_id": int, "id": int, "caption": str}, ...]}

Only ``images[].id`` is required of an image (the Karpathy GT files carry nothing else);
``file_name`` is relative to ``image_root``. Image ids and annotation ids must be unique: pycocotools
indexes them in dicts, so a duplicate would silently replace an earlier entry. Every annotation
must name an image of the file.

Results (``captions_val2014_fakecap_results.json``-style)::

    [{"image_id": int, "caption": str}, ...]

one caption per image (pycocoevalcap's BLEU asserts exactly one hypothesis per image). An empty
generated caption is allowed: it is a model output that should score zero, not a data error.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from grainvl.data.formats import validate
from grainvl.data.formats.registry import FormatSpec, register
from grainvl.errors import BadRecords, DataError
from grainvl.utils import fileio

Record = dict[str, Any]


def _check_gt_header(gt: Any, path: Path) -> None:
    if not isinstance(gt, dict):
        raise DataError(path, None, f"expected a JSON object with images and annotations, got {type(gt).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(gt.get(key), list):
            raise DataError(path, None, f"missing list '{key}'")
    if "type" in gt and gt["type"] != "captions":
        raise DataError(path, None, f"'type' should be \"captions\", got {gt['type']!r}")


def _gt_image_checker(path: Path, images: validate.ImageChecker, seen: dict[int, str]) -> validate.RecordCheck:
    def check(image: Any, where: str) -> None:
        validate.require_fields(image, {"id": int}, path, where)
        if image["id"] in seen:  # checked first, recorded last: a skipped bad image does not claim its id
            validate.claim_unique(seen, image["id"], "duplicate image id {key}", path, where)
        actual = validate.check_image_field(image, "file_name", path, where, images) if "file_name" in image else None
        validate.image_bounds(image, path, where, image.get("file_name", f"id {image['id']}"), actual)
        seen[image["id"]] = where

    return check


def _gt_annotation_checker(path: Path, image_ids: Collection[int], seen: dict[int, str]) -> validate.RecordCheck:
    def check(ann: Any, where: str) -> None:
        validate.require_fields(ann, {"image_id": int, "id": int, "caption": str}, path, where)
        validate.require_text(ann["caption"], "caption", path, where)
        if ann["image_id"] not in image_ids:
            raise DataError(path, where, f"image_id {ann['image_id']} is not in 'images'")
        validate.claim_unique(seen, ann["id"], "duplicate annotation id {key}", path, where)

    return check


def _validated_gt(gt: Any, path: Path, bad: BadRecords, images: validate.ImageChecker) -> Record:
    """The GT with bad images/annotations handed to ``bad`` (and dropped when skipping)."""
    _check_gt_header(gt, path)
    image_positions: dict[int, str] = {}
    kept_images = validate.collect_valid(
        enumerate(gt["images"]), "images index", _gt_image_checker(path, images, image_positions), bad
    )
    kept_ids = {image["id"] for image in kept_images}
    kept_anns = validate.collect_valid(
        enumerate(gt["annotations"]), "annotations index", _gt_annotation_checker(path, kept_ids, {}), bad
    )
    return {**gt, "images": kept_images, "annotations": kept_anns}


def read_caption_gt(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> Record:
    path = Path(path)
    return _validated_gt(fileio.read_json(path), path, bad or BadRecords(), validate.ImageChecker(path, image_root))


def write_caption_gt(path: str | Path, gt: Record) -> None:
    _validated_gt(gt, Path(path), BadRecords(), validate.ImageChecker(path, None))
    fileio.write_json(path, gt)


def _result_checker(path: Path, gt_image_ids: Collection[int] | None) -> validate.RecordCheck:
    seen: dict[int, str] = {}

    def check(result: Any, where: str) -> None:
        validate.require_fields(result, {"image_id": int, "caption": str}, path, where)
        image_id = result["image_id"]
        if image_id in seen:
            raise DataError(path, where, f"second caption for image_id {image_id} (first at {seen[image_id]})")
        if gt_image_ids is not None and result["image_id"] not in gt_image_ids:
            raise DataError(path, where, f"image_id {result['image_id']} is not in the ground truth")
        seen[result["image_id"]] = where

    return check


def read_caption_results(
    path: str | Path,
    bad: BadRecords | None = None,
    image_root: Path | None = None,
    gt_image_ids: Collection[int] | None = None,
) -> list[Record]:
    """Generated captions; with ``gt_image_ids`` every result must name a ground-truth image
    (pycocotools' ``loadRes`` would otherwise stop on a bare assertion)."""
    path = Path(path)
    return validate.read_json_records(path, _result_checker(path, gt_image_ids), bad)


register(
    FormatSpec(
        "coco-caption-gt",
        "COCO caption ground truth for pycocoevalcap (*_gt.json, captions_{train,val}20XX.json)",
        ("*_gt.json", "captions_train20??.json", "captions_val20??.json", "captions_test20??.json"),
        read_caption_gt,
    )
)
register(
    FormatSpec(
        "coco-caption-results",
        "COCO caption results [{image_id, caption}] (captions_*_results.json, *caption*_result*.json)",
        ("captions_*_results.json", "*caption*_result.json", "*caption*_results.json"),
        read_caption_results,
    )
)

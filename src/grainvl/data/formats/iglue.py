"""IGLUE benchmark files (davinci_cclm_vlue.md §B.6), as released in e-bug/iglue ``datasets/``.

* XVNLI ``XVNLI/annotations/{lang}/test.jsonl`` (world: ``iglue/xvnli/{lang}/{split}.jsonl``)::

      {"gold_label": "entailment"|"neutral"|"contradiction"|"-", "sentence1": str,
       "sentence2": str, "captionID": str, "pairID": str, "Flikr30kID": str}

  ``Flikr30kID`` keeps the official misspelling. The image is the premise, so ``sentence1`` (the
  Flickr caption) may be empty; ``sentence2`` (the hypothesis) may not. ``"-"`` is SNLI's
  no-consensus marker, present in the official test files: it is read, and tasks should drop it.
* xGQA, two layouts of the same questions: the LXMERT/volta list
  ``[{"img_id", "label": {answer: score}, "question_id", "sent"}]`` (world:
  ``iglue/xgqa/{lang}/{split}.json``) and GQA's question dict ``{question_id: {"imageId",
  "question", "answer"?, ...}}`` (``xGQA/annotations/few_shot/{lang}/dev.json``). The reader
  returns what the file holds (list or dict).
* MaRVL ``marvl-{lang}.jsonl`` (world: ``iglue/marvl/{lang}/{split}.jsonl``)::

      {"concept", "language", "caption", "left_img", "right_img", "label": bool, "chapter",
       "id", "annotator_info": {...}}

  and its X-VLM conversion (``utils/marvl_preproc.py``) ``marvl-{lang}.json``, an NLVR2 list
  ``[{"sentence", "label", "images": [left, right]}]`` (see :func:`marvl_to_xvlm`).
* xFlickr&CO ``xFlickrCO/annotations/{lang}/test.jsonl`` (world: ``iglue/xflickrco/...``)::

      {"sentences": [str, ...], "id": str, "img_path": str}

Images, relative to ``image_root``: an id with an image suffix is a path, otherwise Flickr30k and
GQA name files ``{id}.jpg``; a MaRVL image name without "/" lives at
``{language}/images/{concept}/{name}`` as in the MaRVL release, one with "/" is a path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grainvl.data.formats import validate
from grainvl.data.formats.albef import check_nlvr_record
from grainvl.data.formats.registry import FormatSpec, register
from grainvl.errors import BadRecords, DataError
from grainvl.utils import fileio

Record = dict[str, Any]
XVNLI_LABELS = ("entailment", "neutral", "contradiction", "-")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MARVL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "concept": str,
    "language": str,
    "caption": str,
    "left_img": str,
    "right_img": str,
    "label": bool,
    "chapter": str,
    "id": str,
    "annotator_info": dict,
}


def image_file(image_id: str) -> str:
    """Flickr30k/GQA ids name ``{id}.jpg``; an id that already has an image suffix is a path."""
    return image_id if image_id.lower().endswith(IMAGE_SUFFIXES) else f"{image_id}.jpg"


def marvl_image_path(record: Record, name: str) -> str:
    """Where a MaRVL image lies under the image root (the release layout, or a path as given)."""
    if "/" in name:
        return name
    return f"{record['language']}/images/{record['concept']}/{name}"


# ------------------------------------------------------------------------------------ record checks
def check_xvnli_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    fields = dict.fromkeys(("gold_label", "sentence1", "sentence2", "captionID", "pairID", "Flikr30kID"), str)
    validate.require_fields(record, fields, path, where)
    if record["gold_label"] not in XVNLI_LABELS:
        raise DataError(
            path, where, f"gold_label should be one of {', '.join(XVNLI_LABELS)}, got {record['gold_label']!r}"
        )
    validate.require_text(record["sentence2"], "sentence2", path, where)
    validate.require_text(record["Flikr30kID"], "Flikr30kID", path, where)
    images.check(image_file(record["Flikr30kID"]), where)


def check_xgqa_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    """The LXMERT/volta layout; ``label`` maps answers to scores in [0, 1]."""
    validate.require_fields(record, {"img_id": str, "question_id": str, "sent": str}, path, where)
    validate.require_text(record["sent"], "sent", path, where)
    validate.require_text(record["img_id"], "img_id", path, where)
    label = record.get("label", {})
    if not isinstance(label, dict) or not all(_is_score(v) for v in label.values()):
        raise DataError(path, where, f"label should map answers to scores in [0, 1], got {label!r:.80}")
    for answer in label:
        validate.require_text(answer, "answer", path, where)
    images.check(image_file(record["img_id"]), where)


def _is_score(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def check_gqa_question(question: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    """One entry of GQA's ``{question_id: {...}}`` dict (test questions may lack ``answer``)."""
    validate.require_fields(question, {"imageId": str, "question": str}, path, where)
    validate.require_text(question["question"], "question", path, where)
    if "answer" in question:
        validate.require_text(question["answer"], "answer", path, where)
    images.check(image_file(question["imageId"]), where)


def check_marvl_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    validate.require_fields(record, MARVL_FIELDS, path, where)
    validate.require_text(record["caption"], "caption", path, where)
    for key in ("left_img", "right_img", "language", "concept"):
        validate.require_text(record[key], key, path, where)
    images.check(marvl_image_path(record, record["left_img"]), where)
    images.check(marvl_image_path(record, record["right_img"]), where)


def check_xflickrco_record(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
    validate.require_fields(record, {"sentences": list, "id": str, "img_path": str}, path, where)
    validate.require_texts(record["sentences"], "sentence", path, where)
    validate.require_text(record["img_path"], "img_path", path, where)
    images.check(record["img_path"], where)


# ------------------------------------------------------------------------------------ read / write
def read_xvnli(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_jsonl(path, check_xvnli_record, bad, image_root)


def write_xvnli(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_jsonl(path, rows, check_xvnli_record)


def _validated_xgqa(doc: Any, path: Path, bad: BadRecords, images: validate.ImageChecker) -> list[Record] | Record:
    if isinstance(doc, list):
        return validate.collect_valid(enumerate(doc), "index", lambda r, w: check_xgqa_record(r, path, w, images), bad)
    if not isinstance(doc, dict):
        raise DataError(
            path, None, f"expected a JSON list or a {{question_id: question}} object, got {type(doc).__name__}"
        )
    kept = validate.collect_valid(
        ((qid, (qid, q)) for qid, q in doc.items()),
        "question_id",
        lambda item, w: check_gqa_question(item[1], path, w, images),
        bad,
    )
    return dict(kept)


def read_xgqa(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record] | Record:
    path = Path(path)
    return _validated_xgqa(fileio.read_json(path), path, bad or BadRecords(), validate.ImageChecker(path, image_root))


def write_xgqa(path: str | Path, doc: list[Record] | Record) -> None:
    _validated_xgqa(doc, Path(path), BadRecords(), validate.ImageChecker(path, None))
    fileio.write_json(path, doc)


def read_marvl(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_jsonl(path, check_marvl_record, bad, image_root)


def write_marvl(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_jsonl(path, rows, check_marvl_record)


def marvl_to_xvlm(records: Sequence[Record]) -> list[Record]:
    """MaRVL lines as X-VLM NLVR2 records ``{"sentence", "label", "images": [left, right]}``.

    Image paths follow :func:`marvl_image_path` so they resolve under the same image root.
    """
    return [
        {
            "sentence": r["caption"],
            "label": r["label"],
            "images": [marvl_image_path(r, r["left_img"]), marvl_image_path(r, r["right_img"])],
        }
        for r in records
    ]


def read_marvl_xvlm(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_json(path, check_nlvr_record, bad, image_root)


def read_xflickrco(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[Record]:
    return validate.read_validated_jsonl(path, check_xflickrco_record, bad, image_root)


def write_xflickrco(path: str | Path, rows: Sequence[Record]) -> None:
    validate.write_validated_jsonl(path, rows, check_xflickrco_record)


# The official XVNLI and xFlickr&CO files are both ``{lang}/test.jsonl``: only the folder tells
# them apart, hence the folder patterns (registry matches "a/b/c" against trailing components).
register(
    FormatSpec(
        "iglue-xvnli",
        "IGLUE XVNLI visual entailment JSON lines",
        ("xvnli/*/*.jsonl", "XVNLI/annotations/*/*.jsonl", "XVNLI/annotations_machine-translate/*/*.jsonl"),
        read_xvnli,
    )
)
register(
    FormatSpec(
        "iglue-xgqa",
        "IGLUE xGQA questions (volta list or GQA question dict)",
        ("xgqa/*/*.json", "xGQA/annotations/*/*/*.json", "testdev_balanced_questions_*.json"),
        read_xgqa,
    )
)
register(FormatSpec("iglue-marvl", "IGLUE MaRVL JSON lines", ("marvl-*.jsonl", "marvl/*/*.jsonl"), read_marvl))
register(FormatSpec("iglue-marvl-xvlm", "MaRVL converted to X-VLM NLVR2 json", ("marvl-*.json",), read_marvl_xvlm))
register(
    FormatSpec(
        "iglue-xflickrco",
        "IGLUE xFlickr&CO retrieval JSON lines",
        ("xflickrco/*/*.jsonl", "xFlickrCO/annotations/*/*.jsonl", "xFlickrCO/annotations_machine-translate/*/*.jsonl"),
        read_xflickrco,
    )
)

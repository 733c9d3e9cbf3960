"""VQA v2 official question and annotation files.

Questions (``v2_OpenEnded_mscoco_{subtype}_questions.json``)::

    {"info": {...}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
     "license": {...}, "questions": [{"image_id": int, "question": str, "question_id": int}, ...]}

Annotations (``v2_mscoco_{subtype}_annotations.json``)::

    {"info": {...}, "license": {...}, "data_type": "mscoco", "data_subtype": "val2014",
     "annotations": [{"question_type": str, "multiple_choice_answer": str,
                      "answers": [{"answer": str, "answer_confidence": "yes"|"maybe"|"no",
                                   "answer_id": int}, ...],  # the 10 annotators
                      "image_id": int, "answer_type": "yes/no"|"number"|"other",
                      "question_id": int}, ...]}

These files name images by COCO id only, so ``image_root`` is not used here: the X-VLM
``vqa_{split}.json`` that training reads carries the image paths and is checked by ``albef``.
Question ids must be unique within a file (the evaluation indexes by them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from grainvl.data.formats import validate
from grainvl.data.formats.registry import FormatSpec, register
from grainvl.errors import BadRecords, DataError
from grainvl.utils import fileio

Record = dict[str, Any]

ANSWER_TYPES = ("yes/no", "number", "other")
ANSWER_CONFIDENCES = ("yes", "maybe", "no")
QUESTIONS_HEADER: dict[str, type] = {
    "info": dict,
    "task_type": str,
    "data_type": str,
    "data_subtype": str,
    "license": dict,
}
ANNOTATIONS_HEADER: dict[str, type] = {"info": dict, "data_type": str, "data_subtype": str, "license": dict}


def _check_header(doc: Any, header: dict[str, type], list_key: str, path: Path) -> None:
    if not isinstance(doc, dict):
        raise DataError(path, None, f"expected a JSON object with '{list_key}', got {type(doc).__name__}")
    validate.require_fields(doc, {**header, list_key: list}, path, "header")


def _unique_question_id(path: Path, seen: dict[int, str], record: Record, where: str) -> None:
    validate.claim_unique(seen, record["question_id"], "duplicate question_id {key}", path, where)


def _question_checker(path: Path) -> validate.RecordCheck:
    seen: dict[int, str] = {}

    def check(question: Any, where: str) -> None:
        validate.require_fields(question, {"image_id": int, "question": str, "question_id": int}, path, where)
        validate.require_text(question["question"], "question", path, where)
        _unique_question_id(path, seen, question, where)

    return check


def _check_answers(answers: list[Any], path: Path, where: str) -> None:
    if not answers:
        raise DataError(path, where, "empty 'answers' list")
    for k, answer in enumerate(answers):
        validate.require_fields(answer, {"answer": str, "answer_confidence": str, "answer_id": int}, path, where)
        if answer["answer_confidence"] not in ANSWER_CONFIDENCES:
            conf = answer["answer_confidence"]
            raise DataError(path, where, f"answers[{k}]: answer_confidence should be yes/maybe/no, got {conf!r}")


def _annotation_checker(path: Path) -> validate.RecordCheck:
    seen: dict[int, str] = {}
    fields = {
        "question_type": str,
        "multiple_choice_answer": str,
        "answers": list,
        "image_id": int,
        "answer_type": str,
        "question_id": int,
    }

    def check(ann: Any, where: str) -> None:
        validate.require_fields(ann, fields, path, where)
        if ann["answer_type"] not in ANSWER_TYPES:
            raise DataError(path, where, f"answer_type should be one of {ANSWER_TYPES}, got {ann['answer_type']!r}")
        _check_answers(ann["answers"], path, where)
        _unique_question_id(path, seen, ann, where)

    return check


def _validated(doc: Any, path: Path, kind: str, bad: BadRecords) -> Record:
    """``kind`` is "questions" or "annotations": the list key, checked record by record."""
    header, make_checker = _KINDS[kind]
    _check_header(doc, header, kind, path)
    return {**doc, kind: validate.collect_valid(enumerate(doc[kind]), f"{kind} index", make_checker(path), bad)}


_KINDS = {"questions": (QUESTIONS_HEADER, _question_checker), "annotations": (ANNOTATIONS_HEADER, _annotation_checker)}


def read_vqa_questions(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> Record:
    path = Path(path)
    return _validated(fileio.read_json(path), path, "questions", bad or BadRecords())


def write_vqa_questions(path: str | Path, doc: Record) -> None:
    _validated(doc, Path(path), "questions", BadRecords())
    fileio.write_json(path, doc)


def read_vqa_annotations(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> Record:
    path = Path(path)
    return _validated(fileio.read_json(path), path, "annotations", bad or BadRecords())


def write_vqa_annotations(path: str | Path, doc: Record) -> None:
    _validated(doc, Path(path), "annotations", BadRecords())
    fileio.write_json(path, doc)


def join_questions_annotations(questions: Record, annotations: Record, annotations_path: str | Path) -> list[Record]:
    """One record per annotation with its question text: ``{question_id, image_id, question, ...}``.

    An annotation whose question is missing, or whose image differs from its question's, is a
    DataError naming the annotation file and the annotation's position.
    """
    by_id = {q["question_id"]: q for q in questions["questions"]}
    joined = []
    for i, ann in enumerate(annotations["annotations"]):
        question = by_id.get(ann["question_id"])
        where = f"annotations index {i}"
        if question is None:
            raise DataError(annotations_path, where, f"question_id {ann['question_id']} has no question")
        if question["image_id"] != ann["image_id"]:
            raise DataError(annotations_path, where, f"image_id {ann['image_id']} differs from the question's")
        joined.append({**ann, "question": question["question"]})
    return joined


def vqa_answer_list(annotations: Record | Iterable[Record], size: int | None = None) -> list[str]:
    """The ``size`` most frequent ``multiple_choice_answer``s, X-VLM ``answer_list.json`` style.

    Ties are broken alphabetically so the list does not depend on annotation order.
    """
    records = annotations["annotations"] if isinstance(annotations, dict) else annotations
    counts = Counter(ann["multiple_choice_answer"] for ann in records)
    ranked = sorted(counts, key=lambda answer: (-counts[answer], answer))
    return ranked if size is None else ranked[:size]


# "*mscoco_*" keeps xGQA's testdev_balanced_questions_{lang}.json (iglue.py) out of these patterns.
register(
    FormatSpec(
        "vqa-v2-questions",
        "VQA v2 questions (v2_OpenEnded_mscoco_{subtype}_questions.json)",
        ("*mscoco_*_questions.json",),
        read_vqa_questions,
    )
)
register(
    FormatSpec(
        "vqa-v2-annotations",
        "VQA v2 annotations (v2_mscoco_{subtype}_annotations.json)",
        ("*mscoco_*_annotations.json",),
        read_vqa_annotations,
    )
)

"""SQuAD v1.1 extractive question answering JSON (``train-v1.1.json``, ``dev-v1.1.json``).

Schema::

    {"version": "1.1",
     "data": [{"title": str,
               "paragraphs": [{"context": str,
                               "qas": [{"id": str, "question": str,
                                        "answers": [{"text": str, "answer_start": int}]}]}]}]}

``answer_start`` is a character offset (not a byte or token offset) into ``context``, and every
answer must be the exact span ``context[answer_start : answer_start + len(text)]``. Ids are unique
across the file. Dev files list several answers per question (possibly repeated); train files one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grainvl.data.formats.registry import FormatSpec, register
from grainvl.data.formats.validate import require_fields, require_text
from grainvl.errors import BadRecords, DataError
from grainvl.utils.fileio import read_json, write_json


def write_squad(path: str | Path, obj: dict) -> None:
    """Validate ``obj`` as SQuAD v1.1 and write it as compact JSON, atomically.

    A record that the reader would reject is a ValueError here, so a written file always reads back.
    """
    try:
        _validate(obj, Path(path), BadRecords())
    except DataError as error:
        raise ValueError(f"not valid SQuAD v1.1: {error}") from None
    write_json(path, obj)


def read_squad(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> dict:
    """Read and validate a SQuAD v1.1 file; return the object in the official schema.

    Errors name the record by its position (``data[i].paragraphs[j].qas[k]``) and, for questions,
    the qa id. With ``bad.skip_bad`` each bad article, paragraph or question is recorded and left
    out of the returned object. ``image_root`` is ignored (SQuAD has no images).
    """
    path = Path(path)
    return _validate(read_json(path), path, bad or BadRecords())


def _validate(obj: Any, path: Path, bad: BadRecords) -> dict:
    """Return a copy of ``obj`` holding only the valid articles, paragraphs and questions."""
    if not isinstance(obj, dict):
        raise DataError(path, None, f"expected a JSON object at top level, got {type(obj).__name__}")
    if not isinstance(obj.get("data"), list):
        raise DataError(path, None, "missing list field 'data'")
    if "version" in obj and not isinstance(obj["version"], str):
        raise DataError(path, None, f"field 'version' should be a string, got {type(obj['version']).__name__}")
    seen_ids: set[str] = set()
    articles = []
    for a, article in enumerate(obj["data"]):
        where = f"data[{a}]"
        try:
            require_fields(article, {"title": str, "paragraphs": list}, path, where)
        except DataError as error:
            bad.handle(error)
            continue
        paragraphs = _valid_paragraphs(article["paragraphs"], path, where, seen_ids, bad)
        articles.append({**article, "paragraphs": paragraphs})
    return {**obj, "data": articles}


def _valid_paragraphs(paragraphs: list, path: Path, where: str, seen_ids: set[str], bad: BadRecords) -> list[dict]:
    kept = []
    for p, paragraph in enumerate(paragraphs):
        here = f"{where}.paragraphs[{p}]"
        try:
            require_fields(paragraph, {"context": str, "qas": list}, path, here)
            require_text(paragraph["context"], "context", path, here)
        except DataError as error:
            bad.handle(error)
            continue
        qas = []
        for q, qa in enumerate(paragraph["qas"]):
            try:
                qas.append(_check_qa(qa, paragraph["context"], path, f"{here}.qas[{q}]", seen_ids))
            except DataError as error:
                bad.handle(error)
        kept.append({**paragraph, "qas": qas})
    return kept


def _check_qa(qa: Any, context: str, path: Path, where: str, seen_ids: set[str]) -> dict:
    require_fields(qa, {"id": str, "question": str, "answers": list}, path, where)
    qid = qa["id"]
    where = f"{where} (id {qid})"
    if qid in seen_ids:
        raise DataError(path, where, f"duplicate qa id {qid!r}")
    require_text(qa["question"], "question", path, where)
    if not qa["answers"]:
        raise DataError(path, where, f"qa id {qid!r} has no answers (SQuAD v1.1 questions are all answerable)")
    for n, answer in enumerate(qa["answers"]):
        require_fields(answer, {"text": str, "answer_start": int}, path, f"{where}.answers[{n}]")
        text, start = answer["text"], answer["answer_start"]
        span = context[start : start + len(text)] if start >= 0 else None
        if not text or span != text:
            raise DataError(
                path,
                where,
                f"qa id {qid!r}: answer {text!r} does not match context[{start}:{start + len(text)}] = {span!r}",
            )
    seen_ids.add(qid)
    return qa


def squad_examples(obj: dict) -> list[dict]:
    """Flatten a SQuAD object into one dict per question, in the Hugging Face ``datasets`` layout.

    Each example is ``{"id", "title", "context", "question", "answers": {"text": [str],
    "answer_start": [int]}}``, in file order.
    """
    examples = []
    for article in obj["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = {
                    "text": [a["text"] for a in qa["answers"]],
                    "answer_start": [a["answer_start"] for a in qa["answers"]],
                }
                examples.append(
                    {
                        "id": qa["id"],
                        "title": article["title"],
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": answers,
                    }
                )
    return examples


SPEC = register(
    FormatSpec(
        name="squad-v1.1",
        description="SQuAD v1.1 extractive QA JSON: data > paragraphs (context) > qas (id, question, answers)",
        patterns=("*-v1.1.json",),
        read=read_squad,
    )
)

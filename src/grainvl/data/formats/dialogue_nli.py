"""Dialogue NLI (Welleck et al. 2019): ``dialogue_nli_{train,dev,test}.jsonl`` and friends.

Despite the ``.jsonl`` name each official file is ONE JSON list (the release's ``print_dtypes.py``
reads it with a single ``jsonlines.Reader(...).read()``) of::

    {"label": "positive" | "neutral" | "negative", "sentence1": str, "sentence2": str,
     "triple1": [subject, relation, object], "triple2": [...], "dtype": str, "id": str}

In the utterance-persona types (``*_up``) ``sentence1`` is a dialogue utterance and ``sentence2`` a
persona sentence; a sentence that states no fact has the triple ``["<none>", "<none>", "<none>"]``.
ParlAI maps the labels to NLI's: positive -> entailment, negative -> contradiction.

A pair is ``{"utterance": sentence1, "persona": sentence2, "label": "entail" | "neutral" |
"contradict", "triple1", "triple2", "dtype", "id"}``; the writer takes the same dicts and fills
the last four when they are missing (``<none>`` triples, dtype ``"<none>"``, id the position).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grainvl.data.formats.registry import FormatSpec, register
from grainvl.data.formats.validate import (
    ImageChecker,
    read_validated_json,
    require_fields,
    require_text,
    write_validated_json,
)
from grainvl.errors import BadRecords, DataError

LABELS = {"positive": "entail", "neutral": "neutral", "negative": "contradict"}  # official -> ours
OFFICIAL_LABELS = {ours: official for official, ours in LABELS.items()}
NO_TRIPLE = ["<none>", "<none>", "<none>"]


def read_dialogue_nli(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[dict]:
    """Read and validate a Dialogue NLI file into pairs (module docstring); errors name ``index N``.

    ``image_root`` is ignored.
    """
    return [_pair(record) for record in read_validated_json(path, _check_record, bad)]


def write_dialogue_nli(path: str | Path, pairs: list[dict]) -> None:
    """Write ``pairs`` as one official JSON list, atomically.

    An unknown label is a ValueError; any other pair the reader would reject a DataError naming ``index N``.
    """
    write_validated_json(path, [_official(pair, i) for i, pair in enumerate(pairs)], _check_record)


def _check_record(record: Any, path: Path, where: str, images: ImageChecker) -> None:
    require_fields(record, {"label": str, "sentence1": str, "sentence2": str}, path, where)
    if record["label"] not in LABELS:
        raise DataError(path, where, f"label {record['label']!r} should be one of {', '.join(LABELS)}")
    require_text(record["sentence1"], "sentence1", path, where)
    require_text(record["sentence2"], "sentence2", path, where)
    for name in ("triple1", "triple2"):
        triple = record.get(name, NO_TRIPLE)
        if not isinstance(triple, list) or len(triple) != 3 or not all(isinstance(x, str) for x in triple):
            raise DataError(path, where, f"{name} should be [subject, relation, object] strings, got {triple!r}")
    for name in ("dtype", "id"):
        if not isinstance(record.get(name, ""), str):
            raise DataError(path, where, f"field '{name}' should be a string, got {type(record[name]).__name__}")


def _pair(record: dict) -> dict:
    return {
        "utterance": record["sentence1"],
        "persona": record["sentence2"],
        "label": LABELS[record["label"]],
        "triple1": record.get("triple1", NO_TRIPLE),
        "triple2": record.get("triple2", NO_TRIPLE),
        "dtype": record.get("dtype", "<none>"),
        "id": record.get("id", ""),
    }


def _official(pair: dict, index: int) -> dict:
    """The official record (key order as released) of one pair."""
    if pair.get("label") not in OFFICIAL_LABELS:
        raise ValueError(f"pair {index}: label {pair.get('label')!r} should be one of {', '.join(OFFICIAL_LABELS)}")
    return {
        "label": OFFICIAL_LABELS[pair["label"]],
        "sentence1": pair["utterance"],
        "sentence2": pair["persona"],
        "triple1": list(pair.get("triple1", NO_TRIPLE)),
        "triple2": list(pair.get("triple2", NO_TRIPLE)),
        "dtype": pair.get("dtype", "<none>"),
        "id": pair.get("id") or str(index),
    }


register(
    FormatSpec(
        name="dialogue-nli",
        description="Dialogue NLI: one JSON list of labelled utterance-persona pairs (dialogue_nli_*.jsonl)",
        patterns=("dialogue_nli_*.jsonl",),
        read=read_dialogue_nli,
    )
)

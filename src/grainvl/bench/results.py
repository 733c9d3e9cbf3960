"""The one results schema: ``results.jsonl`` holds one JSON object per evaluation with the long schema
of DESIGN.md (:data:`RESULT_FIELDS`); tables and plots are derived from it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from grainvl.utils.fileio import append_jsonl_line

RESULT_FIELDS = (
    "model",
    "task",
    "dataset",
    "split",
    "metric",
    "value",
    "params_M",
    "gflops",
    "latency_ms",
    "throughput",
    "peak_mem_MB",
    "energy_kWh",
    "co2_g",
    "hardware",
    "torch",
    "commit",
    "seed",
    "lang",
)
"""``lang`` is optional: set on rows of one test language (IGLUE-style tasks, per-language zero-shot retrieval);
a row without it is the task's score (for IGLUE-style tasks the mean over the non-English languages)."""
LANGUAGE_SEPARATOR = "@"


LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:[-_][A-Za-z]{2,4})?")  # ISO 639-1/3, optionally a region: de, zh-CN


def metric_language(name: str) -> tuple[str, str | None]:
    """``"acc@de"`` → ``("acc", "de")``; a plain metric name → ``(name, None)``.

    Per-language tasks return their metrics keyed ``metric@lang`` (``tasks.iglue``); rows carry the two
    parts as ``metric`` and ``lang``.
    """
    metric, sep, lang = name.rpartition(LANGUAGE_SEPARATOR)
    # Only a language code splits: grounding's "acc@0.5" (an IoU threshold) stays one metric name.
    return (metric, lang) if sep and metric and LANGUAGE_CODE.fullmatch(lang) else (name, None)


def with_language(row: dict[str, Any]) -> dict[str, Any]:
    """A results row whose ``metric`` is ``metric@lang`` split into ``metric`` and ``lang`` (others unchanged)."""
    metric, lang = metric_language(str(row.get("metric", "")))
    return {**row, "metric": metric, "lang": lang} if lang is not None else row


def append_result(path: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append one evaluation result to ``path`` (results.jsonl) with every :data:`RESULT_FIELDS` key.

    Missing fields are written as null, in schema order. An unknown key is an error (a misspelt
    ``energy_kwh`` would otherwise vanish from every table). Returns the written record.
    """
    unknown = sorted(set(record) - set(RESULT_FIELDS))
    if unknown:
        raise ValueError(f"unknown result field(s) {unknown}; the schema is {list(RESULT_FIELDS)}")
    full = {name: record.get(name) for name in RESULT_FIELDS}
    append_jsonl_line(Path(path), full)
    return full

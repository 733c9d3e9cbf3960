"""Sentences of a world (or of a plain text file) for tokenizer training and text pre-training."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from grainvl.errors import DataError
from grainvl.utils import fileio


def world_sentences(path: str | Path) -> Iterator[str]:
    """Captions (every language), region phrases and parallel text of a world; or lines of a text file."""
    path = Path(path)
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            yield from (line.strip() for line in f if line.strip())
        return
    pretrain = path / "annotations" / "pretrain"
    if not pretrain.is_dir():
        raise DataError(path, None, "not a world folder (no annotations/pretrain) and not a text file")
    for split_dir in sorted(p for p in pretrain.iterdir() if p.is_dir()):
        yield from _jsonl_texts(split_dir / "image_text_multilingual.jsonl", "caption")
        yield from _jsonl_texts(split_dir / "image_text.jsonl", "caption")
        for _, rec in _maybe_jsonl(split_dir / "region.jsonl"):
            yield from (e["caption"] for e in rec["elems"])
        for _, rec in _maybe_jsonl(split_dir / "para_text.jsonl"):
            yield rec["source_text"]
            yield rec["target_text"]


def _maybe_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    if path.exists():
        yield from fileio.iter_jsonl(path)


def _jsonl_texts(path: Path, key: str) -> Iterator[str]:
    for _, rec in _maybe_jsonl(path):
        value = rec[key]
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from value
        elif isinstance(value, dict):
            yield from value.values()

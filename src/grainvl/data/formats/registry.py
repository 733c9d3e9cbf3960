"""Registry of dataset formats: how ``grainvl data check`` finds and validates each file.

Each format module registers a :class:`FormatSpec` at import time. ``read`` returns the records as
plain dicts in the official schema (the same dicts the matching writer takes), validating them;
with ``image_root`` set it also opens every referenced image (or video frame) relative to it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grainvl.data import formats  # noqa: F401 (formats/__init__.py imports all modules)
from grainvl.errors import BadRecords

Reader = Callable[..., Any]  # read(path, bad: BadRecords | None = None, image_root: Path | None = None)


@dataclass(frozen=True)
class FormatSpec:
    name: str  # e.g. "vqa-v2-questions"; what --format takes
    description: str  # one line for --help and docs
    patterns: tuple[str, ...]  # file-name globs this format uses, e.g. ("*_questions.json",)
    read: Reader

    def matches(self, path: Path) -> bool:
        return any(_matches(path, p) for p in self.patterns)


def _matches(path: Path, pattern: str) -> bool:
    """Match the file name; a pattern with "/" matches that many trailing path components.

    Folder patterns exist because some official names say nothing on their own: IGLUE ships
    ``XVNLI/annotations/de/test.jsonl`` and ``xFlickrCO/annotations/de/test.jsonl``.
    """
    if "/" not in pattern:
        return fnmatch.fnmatch(path.name, pattern)
    depth = pattern.count("/") + 1
    return len(path.parts) >= depth and fnmatch.fnmatch("/".join(path.parts[-depth:]), pattern)


FORMATS: dict[str, FormatSpec] = {}


def register(spec: FormatSpec) -> FormatSpec:
    if spec.name in FORMATS:
        raise ValueError(f"format {spec.name!r} registered twice")
    FORMATS[spec.name] = spec
    return spec


def sniff(path: Path) -> FormatSpec | None:
    """The first registered format whose file-name pattern matches ``path``."""
    load_all()
    for spec in FORMATS.values():
        if spec.matches(path):
            return spec
    return None


def load_all() -> None:
    """Import every format module so that each registers itself."""


__all__ = ["FORMATS", "BadRecords", "FormatSpec", "register", "sniff"]

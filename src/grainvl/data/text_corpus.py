"""Text corpora for text-encoder pre-training (MLM, TACO): plain text, JSON lines, a world, built-in English.

A corpus is a list of *documents* (str). :func:`load_corpus` takes one spec:

* ``builtin:english`` — real English prose that ships with the installed Python: the docstrings of
  the standard library's modules, classes and functions (tests and private modules left out), cut
  into paragraphs and kept when they read as prose (:func:`builtin_english`). It is extracted by
  parsing the source files (nothing is imported or executed), in sorted file order, so the same
  Python version always gives the same corpus (~0.6 MB, ~3.6k paragraphs on CPython 3.11).
* a world folder — its English training text (:func:`world_english`): image captions of the
  ``train`` split, the text columns of every ``text/glue/*/train.tsv`` and the contexts and
  questions of every ``text/squad/*/train-v1.1.json``. Dev/test text is never read, so fine-tuning on
  the world's GLUE dev sets stays clean.
* ``*.jsonl`` — one ``{"text": ...}`` object per line (:func:`read_jsonl_corpus`).
* anything else — plain UTF-8 text (:func:`read_text_corpus`): one document per line, or, when the
  file has blank lines, blank-line separated documents whose lines are joined with spaces.

Bad records are :class:`~grainvl.errors.DataError` naming the file and the line.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from grainvl.data.formats.glue import read_tsv
from grainvl.data.formats.squad import read_squad, squad_examples
from grainvl.errors import BadRecords, DataError
from grainvl.utils import fileio

BUILTIN_ENGLISH = "builtin:english"
TextLayout = Literal["auto", "lines", "blocks"]

# Standard-library trees that are tests, demos, vendored or machine-generated code, not documentation.
_SKIP_PARTS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__", "ensurepip"}
)
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_CODE_HINTS = (">>>", "::", "==", "->", "{", "}", "()", "[]", "__", "\\", "...")


# ---------------------------------------------------------------------------------------------- readers
def read_text_corpus(path: str | Path, layout: TextLayout = "auto", bad: BadRecords | None = None) -> list[str]:
    """Documents of a UTF-8 text file: one per line (``lines``) or blank-line separated (``blocks``).

    ``auto`` picks ``blocks`` when the file has a blank line between two non-blank lines. Whitespace
    runs become single spaces. A line that is not UTF-8 is a DataError (or skipped with ``bad``);
    a file without any text is a DataError.
    """
    if layout not in ("auto", "lines", "blocks"):
        raise ValueError(f"layout must be 'auto', 'lines' or 'blocks', got {layout!r}")
    lines = [text for _, text in fileio.iter_text_lines(path, bad)]
    if layout == "auto":
        layout = "blocks" if _has_inner_blank_line(lines) else "lines"
    documents: list[str] = []
    if layout == "lines":
        documents = [_squash(line) for line in lines if line.strip()]
    else:
        block: list[str] = []
        for line in [*lines, ""]:
            if line.strip():
                block.append(line)
            elif block:
                documents.append(_squash(" ".join(block)))
                block = []
    if not documents:
        raise DataError(path, None, "no text: the corpus file is empty or blank")
    return documents


def read_jsonl_corpus(path: str | Path, field: str = "text", bad: BadRecords | None = None) -> list[str]:
    """Documents of a JSON-lines file, one object ``{"text": str, ...}`` per line.

    A line that is not UTF-8, not JSON, not an object, lacks ``field`` or holds an empty / non-string value
    is a DataError naming the line (with ``bad.skip_bad`` it is counted and left out); a UTF-16 file is one
    file-level DataError.
    """
    bad = bad or BadRecords()
    documents: list[str] = []
    fileio.check_utf8_start(Path(path))
    for lineno, record in fileio.iter_jsonl(Path(path), bad):
        where = f"line {lineno}"
        if not isinstance(record, dict):
            bad.handle(
                DataError(path, where, f"expected a JSON object with a {field!r} field, got {type(record).__name__}")
            )
            continue
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            got = "missing" if field not in record else f"{type(value).__name__} {value!r}"[:80]
            bad.handle(DataError(path, where, f"field {field!r} must be a non-empty string ({got})"))
            continue
        documents.append(_squash(value))
    if not documents:
        raise DataError(path, None, f"no documents: expected JSON lines with a {field!r} field")
    return documents


def world_english(world: str | Path) -> list[str]:
    """English *training* text of a world folder (captions, GLUE train sentences, SQuAD train text)."""

    world = Path(world)
    if not (world / "annotations" / "pretrain").is_dir() and not (world / "text").is_dir():
        raise DataError(world, None, "not a world folder (no annotations/pretrain/ and no text/)")
    documents: list[str] = []
    captions = world / "annotations" / "pretrain" / "train" / "image_text.jsonl"
    if captions.is_file():
        for lineno, record in fileio.iter_jsonl(captions, BadRecords()):
            caption = record.get("caption") if isinstance(record, dict) else None
            texts = [caption] if isinstance(caption, str) else caption
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise DataError(captions, f"line {lineno}", "caption must be a string or a list of strings")
            documents.extend(texts)
    for tsv in sorted((world / "text" / "glue").glob("*/train.tsv")):
        table = read_tsv(tsv)
        columns = [c for c in table["columns"] if c.startswith(("sentence", "question", "text"))]
        documents.extend(row[c] for row in table["rows"] for c in columns)
    for squad in sorted((world / "text" / "squad").glob("*/train-v1.1.json")):
        contexts: dict[str, None] = {}  # ordered set: each context once, however many questions
        for example in squad_examples(read_squad(squad)):
            contexts.setdefault(example["context"], None)
            documents.append(example["question"])
        documents.extend(contexts)
    documents = [_squash(d) for d in documents if d.strip()]
    if not documents:
        raise DataError(world, None, "no English training text found in this world")
    return documents


# ---------------------------------------------------------------------------------------------- built-in English
def builtin_english(min_words: int = 12) -> list[str]:
    """Prose paragraphs of the Python standard library's docstrings, in a fixed order.

    Every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]`` (sorted by path; tests, IDLE,
    lib2to3, demos and every file named ``_*`` -- private modules and package ``__init__`` files --
    left out) is parsed with :mod:`ast`; the docstrings of the module and of every class and
    function are split at blank lines; a paragraph is kept when
    it has >= ``min_words`` words, no code markers (``>>>``, ``::``, braces, ...), and at least 80% of
    its whitespace-separated tokens are plain words. Duplicates keep their first occurrence.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: the standard library sources are not installed; use another corpus")
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not _SKIP_PARTS.intersection(p.relative_to(root).parts[:-1]) and not p.name.startswith("_")
    )
    seen: dict[str, None] = {}
    for path in files:
        for doc in _docstrings(path):
            for paragraph in re.split(r"\n\s*\n", doc):
                text = _squash(paragraph)
                if _is_prose(text, min_words):
                    seen.setdefault(text, None)
    if not seen:
        raise ValueError(f"{root}: no docstring prose found")
    return list(seen)


def builtin_english_fingerprint(documents: Iterable[str]) -> str:
    """sha256 of the corpus (documents joined by newlines) and the Python version it came from."""
    digest = hashlib.sha256("\n".join(documents).encode("utf-8")).hexdigest()[:16]
    return f"python-{sys.version_info.major}.{sys.version_info.minor}-sha256:{digest}"


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []  # a few stdlib files are templates or use other encodings: not documentation
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for node in ast.walk(tree) if isinstance(node, nodes) and (d := ast.get_docstring(node))]


def _is_prose(text: str, min_words: int) -> bool:
    tokens = text.split()
    if len(tokens) < min_words or any(hint in text for hint in _CODE_HINTS):
        return False
    words = sum(1 for token in tokens if _WORD.fullmatch(token.strip(".,;:!?()\"'")))
    return words >= 0.8 * len(tokens)


# ---------------------------------------------------------------------------------------------- dispatch
def load_corpus(spec: str | Path, layout: TextLayout = "auto", bad: BadRecords | None = None) -> list[str]:
    """Documents of ``builtin:english``, a world folder, a ``.jsonl`` file or a plain text file."""
    if str(spec) == BUILTIN_ENGLISH:
        return builtin_english()
    if str(spec).startswith("builtin:"):
        raise ValueError(f"unknown built-in corpus {str(spec)!r}; available: {BUILTIN_ENGLISH}")
    path = Path(spec)
    if path.is_dir():
        return world_english(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: corpus not found (a text/.jsonl file, a world folder or {BUILTIN_ENGLISH})")
    if path.suffix in (".jsonl", ".json"):
        return read_jsonl_corpus(path, bad=bad)
    return read_text_corpus(path, layout, bad)


def load_corpora(specs: Iterable[str | Path], layout: TextLayout = "auto") -> list[str]:
    """The documents of several corpus specs, concatenated in order."""
    documents: list[str] = []
    for spec in specs:
        documents.extend(load_corpus(spec, layout))
    return documents


def _squash(text: str) -> str:
    return " ".join(text.split())


def _has_inner_blank_line(lines: list[str]) -> bool:
    filled = [bool(line.strip()) for line in lines]
    if True not in filled:
        return False
    first, last = filled.index(True), len(filled) - 1 - filled[::-1].index(True)
    return not all(filled[first : last + 1])


__all__ = [
    "BUILTIN_ENGLISH",
    "builtin_english",
    "builtin_english_fingerprint",
    "load_corpora",
    "load_corpus",
    "read_jsonl_corpus",
    "read_text_corpus",
    "world_english",
]

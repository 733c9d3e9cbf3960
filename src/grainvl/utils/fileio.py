"""Files at the bottom of every layer: atomic writes, JSON and JSON lines with record positions in
errors, safetensors with tied tensors stored once, and strict-JSON plain values.

Everything grainvl writes goes through :func:`atomic_write_bytes` or :func:`atomic_file` (a temp file in
the same folder, then a rename), so a crash leaves the old file or the new one, never half of one.

Tied weights: safetensors refuses tensors that share memory. :func:`save_model_safetensors` stores
each shared tensor once and records the other names in the file's metadata (``grainvl.aliases``);
:func:`load_model_safetensors` puts the aliases back, so ``model.load_state_dict`` sees every key.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from grainvl.errors import BadRecords, DataError

if TYPE_CHECKING:
    import torch

ALIASES_KEY = "grainvl.aliases"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; datasets are shared, so honour the umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps(obj: Any) -> str:
    """Canonical JSON text: UTF-8 characters kept, key order as given (deterministic output)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, dumps(obj))


def write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(dumps(r) + "\n" for r in records))


def open_input(path: Path, mode: str = "r") -> IO[Any]:
    """``path`` opened for reading (UTF-8 in text mode); a missing file is the DataError "file not found"."""
    try:
        return path.open(mode, encoding=None if "b" in mode else "utf-8")
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None


def read_json(path: str | Path) -> Any:
    """Load a whole JSON file; a missing file or a syntax error becomes a DataError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {e.lineno}", f"malformed JSON: {e.msg} (column {e.colno})") from None


def iter_jsonl(path: str | Path, bad: BadRecords | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-empty line (1-based line numbers)."""
    path = Path(path)
    bad = bad or BadRecords()
    with open_input(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                bad.handle(DataError(path, f"line {lineno}", f"malformed JSON line: {e.msg} (column {e.colno})"))


def iter_text_lines(path: str | Path, bad: BadRecords | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line of a UTF-8 text file (1-based, empty lines kept).

    Lines split on ``\\n`` only, so a stray ``\\r`` inside a field stays visible to the caller; a
    trailing ``\\r`` (CRLF files) and a leading byte-order mark are dropped. Bytes that are not
    UTF-8 are a DataError for that line, so one bad line does not hide the rest of the file.
    """
    path = Path(path)
    bad = bad or BadRecords()
    with open_input(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.handle(DataError(path, f"line {lineno}", f"not UTF-8 text ({e.reason} at byte {e.start})"))


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _dedupe_shared(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per identical view of shared memory; clone partial overlaps.

    Returns ``(tensors, aliases)`` where ``aliases`` maps each dropped name to the kept one (the
    alphabetically first name of the group, so the choice does not depend on dict order).
    """
    by_view: dict[tuple[Any, ...], list[str]] = {}
    for name in sorted(state_dict):
        t = state_dict[name]
        view = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        by_view.setdefault(view, []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    storages_seen: set[tuple[Any, int]] = set()
    for (device, ptr, *_), names in by_view.items():
        kept = names[0]
        tensor = state_dict[kept].detach()
        # A different view of a storage already stored (a slice of a fused weight): store a copy.
        if tensor.numel() and (device, ptr) in storages_seen:
            tensor = tensor.clone()
        storages_seen.add((device, ptr))
        tensors[kept] = tensor.contiguous().cpu()
        aliases.update({other: kept for other in names[1:]})
    return tensors, aliases


def save_model_safetensors(
    path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write ``state_dict`` to ``path`` (safetensors) atomically; tied tensors stored once (see module doc)."""
    tensors, aliases = _dedupe_shared(state_dict)
    meta = dict(metadata or {})
    meta["format"] = "pt"
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    with atomic_file(Path(path)) as tmp:
        # Imported here: safetensors.torch loads torch, which world generation and `data check` never need.
        from safetensors.torch import save_file

        save_file(tensors, str(tmp), metadata=meta)


def load_model_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_model_safetensors` (or any safetensors file); aliases restored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such safetensors file")
    # Imported here: safetensors loads torch, which world generation and `data check` never need.
    from safetensors import safe_open
    from safetensors.torch import load_file  # safetensors.torch imports torch: see above

    tensors = load_file(str(path), device=str(device))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    for alias, kept in json.loads(metadata.get(ALIASES_KEY, "{}")).items():
        tensors[alias] = tensors[kept]
    return tensors


def to_plain(value: Any) -> Any:
    """A strict-JSON-ready value: tensors and numpy scalars become numbers/lists, non-finite floats
    become null, tuples become lists, paths become strings; dict keys become strings."""
    if hasattr(value, "detach") and hasattr(value, "numel"):  # a torch tensor (duck-typed: no torch import here)
        value = value.detach().cpu().item() if value.numel() == 1 else value.detach().cpu().tolist()
    elif hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def append_jsonl_line(path: str | Path, record: dict[str, Any]) -> None:
    """Append one strict-JSON line with a single write (O_APPEND keeps concurrent short lines whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(to_plain(record), ensure_ascii=False, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()

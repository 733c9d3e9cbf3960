"""Files at the bottom of every layer: atomic writes, JSON and JSON lines with record positions in
errors, safetensors with tied tensors stored once, and strict-JSON plain values.

Everything grainvl writes goes through :func:`atomic_write_bytes` or :func:`atomic_file` (a temp file in
the same folder, then a rename), so a crash leaves the old file or the new one, never half of one.
A folder is assembled by :func:`staged_dir` beside its final name and swapped in the same way.

Outputs fail in one line (:class:`~grainvl.errors.OutputError`, ``PATH: reason``), never as a traceback:
:func:`require_writable_dir` / :func:`require_writable_file` check an output before any work is done, and
every writer here names the final path (not its temp file) when the write fails, a full disk included
(torch and safetensors report it without saying so; :func:`_disk_full` tells).

Files and folders follow the umask, temp ones included: ``mkstemp``/``mkdtemp`` make 0600/0700 and are
widened to ``0o666``/``0o777`` minus the umask, so checkpoints and datasets share like any other file.

Never destroy what we did not make: :func:`check_output_dir` refuses a non-empty folder that is not the
kind of folder its writer makes unless ``overwrite`` is set (the CLI's ``--overwrite``).

Tied weights: safetensors refuses tensors that share memory. :func:`save_model_safetensors` stores
each shared tensor once and records the other names in the file's metadata (``grainvl.aliases``);
:func:`load_model_safetensors` puts the aliases back, so ``model.load_state_dict`` sees every key.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from grainvl.errors import BadRecords, DataError, OutputError, os_reason

if TYPE_CHECKING:
    import torch

ALIASES_KEY = "grainvl.aliases"
NO_SPACE = "no space left on device"
# Free bytes under which a failed write is blamed on the disk: a write that filled it leaves ~0 free
# while its partial temp file still exists (the check runs before the temp file is removed).
DISK_FULL_BYTES = 8 * 2**20


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file; mkstemp's 0600 is widened to it
DIR_MODE = 0o777 & ~_UMASK  # what mkdir() gives a new folder; mkdtemp's 0700 is widened to it


# ---------------------------------------------------------------------------------------------- output checks
def _named(path: Path) -> Path:
    """``path`` with a real last component to put a sibling beside: ``.``, ``..`` and a symbolic link resolved
    (a link to a folder on another disk is replaced there, not turned into a folder here)."""
    return path.resolve() if path.name in ("", ".", "..") or path.is_symlink() else path


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` at worst)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def require_writable_dir(path: str | Path) -> Path:
    """Make ``path`` (with parents) when missing and check a file can be created in it.

    Raises :class:`OutputError` naming the path: "is a file, not a folder" (``path`` or an ancestor),
    "permission denied", "read-only file system", ... Returns the folder.
    """
    path = Path(path)
    blocker = _first_existing(path)
    if blocker.exists() and not blocker.is_dir():
        raise OutputError(blocker, "is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".grainvl-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(path, os_reason(error)) from None
    return path


def require_writable_file(path: str | Path) -> Path:
    """Check ``path`` can be (re)written or appended to: not a folder, writable if it exists, in a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(path, "permission denied")
    require_writable_dir(path.parent)
    return path


def check_output_dir(
    path: str | Path, overwrite: bool = False, replaceable: Callable[[Path], bool] | None = None
) -> None:
    """Refuse to replace what we did not make: ``path`` may be missing, empty, a folder ``replaceable`` accepts
    (the kind its writer makes: a model folder, a world, ...) or anything when ``overwrite``; never a file.

    Also checks the parent folder is writable, so a command fails here, before any work.
    """
    path = _named(Path(path))
    if path.exists() and not path.is_dir():
        raise OutputError(path, "is a file, not a folder")
    if path.is_dir() and not overwrite and any(path.iterdir()) and not (replaceable and replaceable(path)):
        raise OutputError(path, "folder is not empty and was not written by this command; --overwrite replaces it")
    require_writable_dir(path.parent)


def is_weights_folder(path: Path) -> bool:
    """A ``save_pretrained``-style folder (``config.json`` + ``model.safetensors``): what the model writers make."""
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def is_grainvl_folder(path: Path) -> bool:
    """A folder grainvl wrote: a model folder (:func:`is_weights_folder`) or a training run's folder (``metrics.jsonl``
    or ``checkpoints/``, e.g. a compress stage, whose run folder is also where its model is saved)."""
    return is_weights_folder(path) or (path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir()


# ---------------------------------------------------------------------------------------------- write faults
def _disk_full(folder: Path) -> bool:
    """Whether ``folder``'s file system is (nearly) full: torch.save / safetensors failures say nothing of it."""
    try:
        return shutil.disk_usage(_first_existing(folder)).free < DISK_FULL_BYTES
    except OSError:
        return False


def _final_name(named: Path | None, path: Path, temp: Path | None) -> Path | None:
    """The path a user knows for ``named``: ``path`` for the temp file itself, ``path/rel`` for a file inside a
    temp folder, None when ``named`` is about something else (an input read while writing)."""
    if named is None or named in (path, temp):
        return path
    if temp is not None and temp in named.parents:
        return path / named.relative_to(temp)
    return None


@contextmanager
def output_errors(path: Path, temp: Path | None = None) -> Iterator[None]:
    """Turn a failed write of ``path`` (through ``temp``, a temp file or folder) into one :class:`OutputError`.

    The error names the final path, never the temp one: an ``OSError`` (or an inner OutputError) about ``temp``
    or a file inside it is reworded for ``path``, with its reason (ENOSPC: "no space left on device"). Any other
    exception is blamed on the disk when it is full (torch.save's ``unexpected pos`` RuntimeError, safetensors'
    own error type) and passes unchanged otherwise.
    """
    try:
        yield
    except OutputError as error:
        final = _final_name(Path(error.path), path, temp)
        if final is None or final == Path(error.path):
            raise
        raise OutputError(final, error.reason) from error
    except DataError:
        raise
    except OSError as error:
        named = Path(error.filename) if isinstance(error.filename, (str, os.PathLike)) else None
        final = _final_name(named, path, temp)
        if error.errno == errno.ENOSPC:
            raise OutputError(final or named or path, NO_SPACE) from error
        if final is None or error.errno is None:  # about another file, or already worded by its raiser
            raise
        raise OutputError(final, os_reason(error)) from error
    except Exception as error:
        if _disk_full(path.parent):
            raise OutputError(path, NO_SPACE) from error
        raise


# ---------------------------------------------------------------------------------------------- atomic writes
def _temp_beside(path: Path, folder: bool = False) -> Path:
    """A new hidden temp file (or folder) next to ``path`` with umask permissions; a failure names ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            temp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
            os.chmod(temp, DIR_MODE)  # mkdtemp makes 0700: a checkpoint or model folder is shared like any other
        else:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            temp = Path(name)
            os.chmod(temp, FILE_MODE)  # mkstemp makes 0600: every file grainvl writes follows the umask
    except OSError as error:
        raise OutputError(path, os_reason(error)) from None
    return temp


def make_temp_dir_beside(final: str | Path) -> Path:
    """An empty hidden folder next to ``final`` (same file system, so it renames into place) with umask
    permissions (``0o777 & ~umask``, not mkdtemp's 0700): where a folder is assembled before :func:`swap_in_dir`."""
    return _temp_beside(Path(final), folder=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path`` (umask permissions), on error it is
    removed and the error names ``path`` (:func:`output_errors`)."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with output_errors(path, tmp):
            yield tmp
            os.chmod(tmp, FILE_MODE)  # again: a writer may have re-created it (safetensors makes 0600 files)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    with atomic_file(Path(path)) as tmp:
        tmp.write_bytes(data)


def swap_in_dir(staged: Path, final: Path) -> None:
    """Put the folder ``staged`` at ``final``.

    Missing ``final``: one rename. An empty ``final`` (perhaps the working folder or a mount point) keeps its
    identity and receives ``staged``'s entries. A non-empty ``final`` is first renamed aside and deleted only once
    the new folder is in place, so at every moment one of the two is whole on disk (put back on failure).
    """
    with output_errors(final, staged):
        if not final.exists():
            os.rename(staged, final)
            return
        if final.is_dir() and not any(final.iterdir()):
            for entry in sorted(staged.iterdir()):
                os.rename(entry, final / entry.name)
            staged.rmdir()
            return
        aside = _temp_beside(final, folder=True)
        try:
            os.rename(final, aside)  # renaming a folder onto an empty one replaces it (POSIX)
        except BaseException:
            aside.rmdir()
            raise
        try:
            os.rename(staged, final)
        except BaseException:
            os.rename(aside, final)
            raise
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def staged_dir(
    final: str | Path, *, overwrite: bool = False, replaceable: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield an empty temp folder beside ``final``; when the block succeeds it becomes ``final`` (:func:`swap_in_dir`),
    when it fails it is removed and ``final`` is untouched.

    ``final`` is checked first (:func:`check_output_dir`): a non-empty folder is replaced only when ``replaceable``
    accepts it (the kind of folder this writer makes) or ``overwrite`` is set.
    """
    final = _named(Path(final))
    check_output_dir(final, overwrite, replaceable)
    staged = make_temp_dir_beside(final)
    try:
        with output_errors(final, staged):
            yield staged
        swap_in_dir(staged, final)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


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


UTF16_REASON = "not UTF-8 (looks like UTF-16: convert it, e.g. iconv -f UTF-16 -t UTF-8)"


def looks_like_utf16(head: bytes) -> bool:
    """A UTF-16/32 byte-order mark or a NUL byte in the first bytes of a text file: not UTF-8 text."""
    return head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head[:4096]


def check_utf8_start(path: Path) -> None:
    """A file-level DataError when a text file is UTF-16 (or UTF-32): a BOM or NUL bytes in its first 4 KiB.

    Decoding such a file line by line would report every line; one line saying what the file is helps more.
    """
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except OSError as e:
        raise DataError(path, None, f"cannot read: {os_reason(e)}") from None
    if looks_like_utf16(head):
        raise DataError(path, None, UTF16_REASON)


def read_json(path: str | Path) -> Any:
    """Load a whole JSON file; a missing file, bytes that are not UTF-8 (with their line) or a syntax error
    become a DataError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if looks_like_utf16(data):
            raise DataError(path, None, UTF16_REASON) from None
        line = data[: e.start].count(b"\n") + 1
        raise DataError(path, f"line {line}", f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {e.lineno}", f"malformed JSON: {e.msg} (column {e.colno})") from None


def iter_jsonl(path: str | Path, bad: BadRecords | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line (1-based line numbers).

    Lines are decoded one by one (:func:`iter_text_lines`), so an undecodable or malformed line goes to ``bad``
    (skipped with ``skip_bad``) without costing the rest of the file.
    """
    path = Path(path)
    bad = bad or BadRecords()
    for lineno, line in iter_text_lines(path, bad):
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


# ---------------------------------------------------------------------------------------------- checksums
CHECKSUM_FILE = "checksums.json"
CHECKSUM_FORMAT = 1


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_checksums(folder: Path) -> None:
    """Record the size and sha256 of every file in ``folder`` in ``checksums.json`` (call it last: a folder with
    a manifest was written completely)."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != CHECKSUM_FILE
    }
    write_json(folder / CHECKSUM_FILE, {"format": CHECKSUM_FORMAT, "algorithm": "sha256", "files": files})


def read_checksums(folder: Path, required: Iterable[str]) -> dict[str, dict[str, Any]] | str:
    """The manifest's ``{file: {"bytes", "sha256"}}``, or why it cannot be used (``required`` must be listed)."""
    try:
        manifest = json.loads((folder / CHECKSUM_FILE).read_text(encoding="utf-8"))
        files = manifest["files"]
        ok = all(isinstance(e["bytes"], int) and isinstance(e["sha256"], str) for e in files.values())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return f"{CHECKSUM_FILE}: unreadable"
    # A name with a folder in it would point outside the folder; the files the reader needs must be listed.
    if not ok or any(Path(name).name != name for name in files) or not set(required) <= set(files):
        return f"{CHECKSUM_FILE}: unreadable"
    return files


def checksum_problem(folder: Path, required: Iterable[str], hash_files: bool = True) -> str | None:
    """Why the files of ``folder`` do not match its ``checksums.json`` (``"model.safetensors: sha256 mismatch"``),
    or None. Missing files and sizes are checked first (cheap), then each file's sha256 unless ``hash_files`` is
    False. The caller decides what a folder without a manifest means."""
    files = read_checksums(folder, required)
    if isinstance(files, str):
        return files
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name}: missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            kind = "truncated" if size < entry["bytes"] else "wrong size"
            return f"{name}: {kind} ({size} bytes, {entry['bytes']} written)"
    if hash_files:
        for name, entry in files.items():
            if sha256_file(folder / name) != entry["sha256"]:
                return f"{name}: sha256 mismatch"
    return None


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

    try:
        tensors = load_file(str(path), device=str(device))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:  # safetensors' own error type (a Rust exception) for a truncated or corrupt file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(path, None, f"not a valid safetensors file (truncated or corrupt): {reason}") from None
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
    line = json.dumps(to_plain(record), ensure_ascii=False, allow_nan=False) + "\n"
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

"""One error type for bad input (and its kin for outputs), and a collector for ``--skip-bad``.

Every reader raises :class:`DataError` with the file, the record (line number or index) and the
reason, so the CLI can print a single line and exit non-zero instead of a traceback. An output that
cannot be written (a file where a folder goes, no permission, a full disk, a folder in use) is an
:class:`OutputError`, printed the same way; :func:`describe_os_error` words any other ``OSError``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

EXIT_BAD_INPUT = 2  # exit status of every command that stops on bad input or a bad configuration


class DataError(Exception):
    """Bad input: ``<path>: record <record>: <reason>``.

    ``record`` is a 1-based line number for line formats ("line 7"), an index into a JSON list
    ("index 3"), a key ("question_id 12"), or None when the whole file is bad.
    """

    def __init__(self, path: str | Path, record: str | int | None, reason: str) -> None:
        self.path = str(path)
        self.record = record
        self.reason = reason
        where = f"{self.path}: {record}: " if record is not None else f"{self.path}: "
        super().__init__(where + reason)


class OutputError(DataError):
    """An output grainvl cannot or must not write: ``<path>: <reason>`` (one line, exit status 2)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(path, None, reason)


# Plain words for the faults an output meets; the rest use the system's own text.
_OS_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a folder",
    errno.ENOTDIR: "not a folder",
    errno.EEXIST: "already exists",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}


def os_reason(error: OSError) -> str:
    """The reason of an ``OSError`` in lower-case words ("permission denied", "no space left on device")."""
    if error.errno in _OS_REASONS:
        return _OS_REASONS[error.errno]
    text = error.strerror or (os.strerror(error.errno) if error.errno else str(error))
    return text[:1].lower() + text[1:]


def describe_os_error(error: OSError) -> str:
    """``PATH: reason`` for an ``OSError`` that names a file; otherwise its own message (our raises carry the
    path in the message, e.g. ``FileNotFoundError("x.th: no such checkpoint file")``)."""
    if error.filename is None or error.errno is None:
        return str(error)
    where = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{where}: {os_reason(error)}"


@dataclass
class BadRecords:
    """Collects DataErrors when ``skip_bad`` is on; re-raises the first one otherwise."""

    skip_bad: bool = False
    errors: list[DataError] = field(default_factory=list)

    def handle(self, error: DataError) -> None:
        if not self.skip_bad:
            raise error
        self.errors.append(error)

    def summary(self) -> str:
        if not self.errors:
            return "skipped 0 bad records"
        lines = [f"skipped {len(self.errors)} bad record(s):"] + [f"  {e}" for e in self.errors]
        return "\n".join(lines)

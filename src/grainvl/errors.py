"""One error type for bad input, and a collector for ``--skip-bad``.

Every reader raises :class:`DataError` with the file, the record (line number or index) and the
reason, so the CLI can print a single line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

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

"""GLUE tab-separated files (``SST-2/train.tsv``, ``MRPC/dev.tsv``, ...), as the GLUE release ships them.

Layout: one header line naming the columns, then one row per line, fields separated by a tab,
UTF-8, no quoting (GLUE sentences contain bare ``"`` characters, which is why readers of these
files use ``quoting=QUOTE_NONE``). Because there is no quoting, a field can never hold a tab or a
newline; the writer refuses such values instead of writing a file that reads back differently.

Which columns must be filled is decided by name, using the GLUE column names: text columns
(``sentence``, ``sentence1``, ``question1``, ``#1 String``, ...) must be non-empty, and so must the
label column (``label``, ``gold_label``, ``is_duplicate``, ``Quality``, ``score``) where the file has
one (GLUE test files have none).
"""

from __future__ import annotations

from pathlib import Path

from grainvl.data.formats.registry import FormatSpec, register
from grainvl.errors import BadRecords, DataError
from grainvl.utils.fileio import atomic_write_text, iter_text_lines

TEXT_COLUMNS = frozenset(
    {"sentence", "sentence1", "sentence2", "question", "question1", "question2", "#1 String", "#2 String"}
    | {"premise", "hypothesis", "text", "text_a", "text_b"}
)
LABEL_COLUMNS = frozenset({"label", "gold_label", "is_duplicate", "Quality", "score"})


def write_tsv(path: str | Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    """Write a header line and one line per row, atomically.

    Every row must have exactly the keys in ``columns`` with string values; a tab, newline or
    carriage return in a column name or value is a ValueError (the format cannot hold it).
    """
    _check_writable(columns, "column name", "header")
    if len(set(columns)) != len(columns):
        raise ValueError(f"duplicate column names in {columns!r}")
    lines = ["\t".join(columns)]
    for index, row in enumerate(rows):
        if set(row) != set(columns):
            missing, extra = sorted(set(columns) - set(row)), sorted(set(row) - set(columns))
            raise ValueError(f"row {index}: keys differ from columns (missing {missing}, extra {extra})")
        values = [row[c] for c in columns]
        _check_writable(values, "value", f"row {index}")
        lines.append("\t".join(values))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _check_writable(values: list[str], what: str, where: str) -> None:
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"{where}: {what} {value!r} should be a string, got {type(value).__name__}")
        if any(ch in value for ch in "\t\n\r"):
            raise ValueError(f"{where}: {what} {value!r} contains a tab or line break, which TSV cannot hold")


def read_tsv(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> dict:
    """Read a GLUE TSV file into ``{"columns": [str], "rows": [{column: str}]}``.

    Each data row is validated (field count, non-empty text and label fields); errors name the
    1-based line number. With ``bad.skip_bad`` a bad row is recorded and left out. ``image_root``
    is accepted for the common reader signature and ignored (GLUE has no images).
    """
    path = Path(path)
    bad = bad or BadRecords()
    lines = iter_text_lines(path, bad)
    columns: list[str] | None = None
    rows: list[dict[str, str]] = []
    for lineno, line in lines:
        if columns is None:
            columns = _parse_header(line, path, lineno)
            continue
        if not line:
            continue  # a blank line (usually a trailing one) holds no row
        try:
            rows.append(_parse_row(line, columns, path, lineno))
        except DataError as error:
            bad.handle(error)
    if columns is None:
        raise DataError(path, None, "empty file: expected a header line naming the columns")
    return {"columns": columns, "rows": rows}


def _parse_header(line: str, path: Path, lineno: int) -> list[str]:
    columns = line.split("\t")
    if not line or any(not c.strip() for c in columns):
        raise DataError(path, f"line {lineno}", f"header has an empty column name: {line!r}")
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise DataError(path, f"line {lineno}", f"header repeats column(s) {duplicates}")
    return columns


def _parse_row(line: str, columns: list[str], path: Path, lineno: int) -> dict[str, str]:
    fields = line.split("\t")
    where = f"line {lineno}"
    if len(fields) != len(columns):
        raise DataError(path, where, f"expected {len(columns)} tab-separated fields, got {len(fields)}")
    row = dict(zip(columns, fields))
    for column, value in row.items():
        if value.strip():
            continue
        if column in LABEL_COLUMNS:
            raise DataError(path, where, f"missing value in label column '{column}'")
        if column in TEXT_COLUMNS:
            raise DataError(path, where, f"empty text in column '{column}'")
    return row


SPEC = register(
    FormatSpec(
        name="glue-tsv",
        description="GLUE tab-separated task file: header line, one example per line (train.tsv, dev.tsv)",
        patterns=("*.tsv",),
        read=read_tsv,
    )
)

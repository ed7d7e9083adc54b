"""The text and CSV files users hand to commands (labels, truth, captioned sets): read as UTF-8, with errors that
name the file and the line.

Each reader takes the `UsageError` subclass its caller reports (`LabelsError`, `DatasetError`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import UsageError, unreadable

CsvRows = list[tuple[int, dict[str, str]]]  # (line number, row by lower-cased column name)


def read_text(path: Path, error: type[UsageError]) -> str:
    """The file's text (UTF-8, a byte-order mark dropped); `error` says why it cannot be read or decoded."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc, error) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(path, f"not UTF-8 text: byte {exc.start} (line {line}) is invalid") from None


def csv_rows(path: Path, text: str, error: type[UsageError]) -> tuple[list[str], CsvRows]:
    """Lower-cased header and (line number, row) pairs of the CSV `text` read from `path`; values are trimmed.

    A row with more values than the header has columns is refused, naming its line: it is almost always a value
    with a comma that was not quoted (`a.wav,a dog, barking`), whose tail would otherwise be dropped unseen.
    Empty values past the header (a trailing comma) are allowed.
    """
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip().lower() for name in next(reader)]
        rows = [(reader.line_num, _row(path, header, row, reader.line_num, error)) for row in reader if row]
    except StopIteration:
        raise error(path, "the file is empty") from None
    except csv.Error as exc:
        raise error(path, f"not a readable CSV file (line {reader.line_num}: {exc})") from None
    return header, rows


def _row(path: Path, header: list[str], values: list[str], line: int, error: type[UsageError]) -> dict[str, str]:
    """One row by column name, its values trimmed; refused when it holds a value no column of the header names."""
    values = [value.strip() for value in values]
    if any(values[len(header) :]):
        raise error(
            path,
            f"line {line} has {len(values)} values but the header has {len(header)} column"
            f"{'s' if len(header) != 1 else ''}: "
            'quote a value that holds a comma ("a dog, barking")',
        )
    return dict(zip(header, values, strict=False))

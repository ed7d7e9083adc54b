"""The text and CSV files users hand to commands (labels, truth, captioned sets, manifests, configurations): read
as UTF-8, with errors that name the file and the line.

Each reader takes the `UsageError` subclass its caller reports (`LabelsError`, `DatasetError`, `ManifestError`).
Whatever reads a user's text file, whole (`read_text`) or as a stream (`open_text`), says that it is not UTF-8 the
one way `not_utf8` does.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from .errors import UsageError, empty_file, unreadable
from .units import count_text

CsvRows = list[tuple[int, dict[str, str]]]  # (line number, row by lower-cased column name)
# Between the labels of a list in one CSV cell: a manifest's sound events, a multi-label truth file's labels.
CSV_LIST_SEPARATOR = ";"

# The byte-order marks of the other encodings a text editor saves Unicode in (Windows Notepad's "Unicode" is UTF-16
# little-endian), UTF-32's first: its little-endian mark starts with UTF-16's. Such a file is named for what it is,
# where its first byte that is not UTF-8 (0xff at line 1, column 1) would tell nothing.
UNICODE_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def read_text(path: Path, error: type[UsageError]) -> str:
    """The file's text (UTF-8, a byte-order mark dropped); `error` says why it cannot be read or decoded."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc, error) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise not_utf8(path, error, data) from None


@contextlib.contextmanager
def open_text(path: Path, error: type[UsageError]) -> Iterator[TextIO]:
    """The file open as UTF-8 text (a byte-order mark dropped, line ends left to the `csv` module), for a file read
    as it goes (a manifest of millions of rows); `error` says why it cannot be read or decoded, as `read_text`."""
    try:
        # utf-8-sig: spreadsheet programs often start their CSV exports with a byte-order mark.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            yield handle
    except UnicodeDecodeError:
        raise not_utf8(path, error) from None
    except OSError as exc:
        raise unreadable(path, exc, error) from None


def not_utf8(path: Path, error: type[UsageError], data: bytes | None = None) -> UsageError:
    """The error for a text file that is not UTF-8, naming its first byte that is not and where it is, as an editor
    counts: `not UTF-8 text: byte 0xe9 at line 2, column 10`, or its encoding when its byte-order mark names another
    (`UTF-16 text, not UTF-8`). `data`: the file's bytes, when read already; a file read as a stream is read again
    here, since a stream's decoding error counts from its last buffer."""
    try:
        data = path.read_bytes() if data is None else data
        encoding = next((name for mark, name in UNICODE_MARKS if data.startswith(mark)), None)
        if encoding is not None:
            return error(path, f"{encoding} text, not UTF-8; save it as UTF-8")
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return error(path, f"not UTF-8 text: {_where_invalid(data, exc.start)}; save it as UTF-8")
    except OSError:
        pass  # gone or changed since it was read: what it held is not known any more
    return error(path, "not UTF-8 text; save it as UTF-8")


def _where_invalid(data: bytes, offset: int) -> str:
    """`byte 0xe9 at line 2, column 10` for the byte at `offset`: lines counted from 1, columns in characters (the
    line's start before it is valid UTF-8, having decoded up to it), the file's byte-order mark not counted."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    if line_start == 0 and data.startswith(codecs.BOM_UTF8):
        line_start = len(codecs.BOM_UTF8)
    line = data.count(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8")) + 1
    return f"byte 0x{data[offset]:02x} at line {line}, column {column}"


def csv_rows(
    path: Path, text: str, error: type[UsageError], columns: str, *, names: Collection[str] = ()
) -> tuple[list[str], CsvRows]:
    """Lower-cased header and (line number, row) pairs of the CSV `text` read from `path`; values are trimmed (the
    spaces a spreadsheet writes after a comma, `a.wav, dog`), but those of the columns in `names`, which hold file
    names (a name may start or end with a space; `listed_file` reads them). `columns` is the header it should have,
    for the message about an empty file (`file, label`).

    A file without rows is refused: every CSV a user gives is read for its rows. A row with more values than the
    header has columns is refused, naming its line: it is almost always a value with a comma that was not quoted
    (`a.wav,a dog, barking`), whose tail would otherwise be dropped unseen. Empty values past the header (a trailing
    comma) are allowed.
    """
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip().lower() for name in next(reader)]
        kept = [name in names for name in header]
        rows = []
        for first_line, row in rows_with_first_line(reader):
            if runs_over_lines(row):
                raise error(path, unclosed_quote(first_line, reader.line_num))
            rows.append((reader.line_num, _row(path, header, kept, row, reader.line_num, error)))
    except StopIteration:
        raise error(path, empty_file(f"a CSV file starts with its header: {columns}")) from None
    except csv.Error as exc:
        raise error(path, f"not a readable CSV file (line {reader.line_num}: {exc})") from None
    if not rows:
        raise error(path, "no rows (the CSV file has a header only)")
    return header, rows


def rows_with_first_line(reader: Any) -> Iterator[tuple[int, Any]]:
    """A CSV reader's rows (`csv.reader`'s lists, `csv.DictReader`'s dicts) that hold a value, each with the line it
    starts on: `reader.line_num` is where a row ends, which is another line for a value that runs over lines."""
    first_line = reader.line_num + 1
    for row in reader:
        if row:
            yield first_line, row
        first_line = reader.line_num + 1


def runs_over_lines(values: Iterable[str | None]) -> bool:
    """Whether a row holds a value that runs over several lines: in the CSVs given here (file names, labels,
    captions), a quote that opened a value and was never closed, which takes the rows after it into that value: they
    were dropped without a word (a captions file's files left out of an evaluation, a training set's rows)."""
    return any(value is not None and ("\n" in value or "\r" in value) for value in values)


def unclosed_quote(first_line: int, last_line: int) -> str:
    return (
        f"line {first_line}: a quoted value is not closed, and runs on to line {last_line}, taking in the rows "
        'between: close its quote ("a dog, barking"), or quote none of it'
    )


def _row(
    path: Path, header: list[str], kept: list[bool], written: list[str], line: int, error: type[UsageError]
) -> dict[str, str]:
    """One row by column name, its values trimmed but where `kept`; refused when it holds a value no column of the
    header names."""
    values = [value if keep else value.strip() for value, keep in zip(written, kept, strict=False)]
    values += [value.strip() for value in written[len(header) :]]
    if any(values[len(header) :]):
        raise error(
            path,
            f"line {line} has {len(values)} values but the header has {count_text(len(header), 'column')}: "
            'quote a value that holds a comma ("a dog, barking")',
        )
    return dict(zip(header, values, strict=False))


def file_name_spellings(written: str) -> list[str]:
    """The names a CSV's file value may mean, in the order to look for them: as written, then trimmed. Trimming
    alone would miss a file whose name starts or ends with a space; the name as written alone, the file of a row
    spaced as spreadsheets space them (`label, file`)."""
    return list(dict.fromkeys([written, written.strip()]))


def listed_file(folder: Path, written: str) -> Path:
    """The file a CSV's file value names, relative to `folder` (or absolute): the first of `file_name_spellings`
    that exists, else the trimmed name (which the caller may report missing)."""
    *as_written, trimmed = [folder / name for name in file_name_spellings(written)]
    # A name without surrounding spaces has one spelling: no look at the disk (a manifest may list a million).
    return next((candidate for candidate in as_written if candidate.exists()), trimmed)

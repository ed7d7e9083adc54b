"""What the library holds for files on disk that are indexed and unchanged (same size and mtime as stored): their
windows (texts and all) in time order, their audio vectors when asked for, and their sha256. Read for many files
together, in a few store queries for all of them: `similar`, `classify` and `eval` take a folder's files at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .chunking import chunked
from .db import FileRecord, WindowDetails
from .scan import Entry, ScanError, scan

if TYPE_CHECKING:
    from .library import Library

# Files whose stored windows (and vectors, when asked) a caller of many reads together: the store's queries shared
# by many files, what they return few enough to hold (AudioSet's eval set at once with eval retrieval's hybrid
# ranking, both vector kinds: hundreds of MB).
FILES_PER_READ = 256


@dataclass(frozen=True)
class StoredWindows:
    """The stored windows of an indexed, unchanged file (in window order)."""

    windows: list[WindowDetails]
    vectors: np.ndarray | None  # (n, d) audio vectors, when asked for and stored
    content_hash: str | None = None  # the file's sha256, as recorded when it was indexed


def stored_windows(library: Library, path: str | os.PathLike[str], *, audio: bool = False) -> StoredWindows | None:
    """What the store holds for `path` if it is indexed and unchanged on disk (same size and mtime), else None."""
    return stored_windows_of(library, [path], audio=audio)[0]


def each_stored_windows(library: Library, paths: Sequence[str]) -> Iterator[StoredWindows | None]:
    """`stored_windows` of each of `paths`, in order, read `FILES_PER_READ` files at a time (`stored_windows_of`):
    a few store queries for each round of files, where reading them one by one made a few for each file."""
    for chunk in chunked(paths, FILES_PER_READ):
        yield from stored_windows_of(library, chunk)


def stored_windows_of(
    library: Library, paths: Sequence[str | os.PathLike[str]], *, audio: bool = False
) -> list[StoredWindows | None]:
    """`stored_windows` of each of `paths`, read together: a few queries for all the files (`similar`, `classify`
    and `eval retrieval` of a folder asked three to five of the store for each file)."""
    entries = [_scanned(path) for path in paths]
    records = library.store.get_files(entry.path for entry in entries if entry is not None)
    indexed = [_unchanged(entry, records.get(entry.path)) if entry is not None else None for entry in entries]
    windows = library.store.files_windows(record.id for record in indexed if record is not None)
    vectors = _audio_rows(library, windows) if audio else {}
    found: list[StoredWindows | None] = []
    for record in indexed:
        if record is None or record.id not in windows or (audio and record.id not in vectors):
            found.append(None)  # not indexed, changed since, no windows, or a window without its audio vector
        else:
            found.append(StoredWindows(windows[record.id], vectors.get(record.id), record.content_hash))
    return found


def _scanned(path: str | os.PathLike[str]) -> Entry | None:
    """The file at `path` as a scan finds it (its stamp), or None when there is none."""
    try:
        return scan([path], frozenset()).entries[0]
    except ScanError:
        return None


def _unchanged(entry: Entry, record: FileRecord | None) -> FileRecord | None:
    """The library's record of the file, if it is indexed with the stamp the file has now."""
    if record is None or record.status != "indexed" or (record.size, record.mtime) != (entry.size, entry.mtime):
        return None
    return record


def _audio_rows(library: Library, windows: dict[int, list[WindowDetails]]) -> dict[int, np.ndarray]:
    """file id -> the (n, d) audio vectors of its windows, in window order, for the files whose every window has
    one; all read in one go."""
    ids, vectors = library.store.vectors("audio", [w.window_id for found in windows.values() for w in found])
    row_of = {window_id: row for row, window_id in enumerate(ids.tolist())}
    rows: dict[int, np.ndarray] = {}
    for file_id, found in windows.items():
        if all(w.window_id in row_of for w in found):
            rows[file_id] = vectors[[row_of[w.window_id] for w in found]]
    return rows

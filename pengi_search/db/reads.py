"""What the library's readers ask of the store: the vectors FAISS indexes are built from, the details and filters
of search hits, every file for `export`, and the counts of `stats`. Nothing here writes; searches read hit details
through plain connections (`Store.reading`), the rest through the store's read sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Connection, Select, bindparam, func, select
from sqlalchemy.orm import Session

from ..chunking import chunk_slices, chunked
from ..id_arrays import id_array, sorted_unique
from ..json_values import json_seconds
from .migrate import current_revision
from .queries import (
    IDS_PER_QUERY,
    by_path,
    decode_matrix,
    is_truncated,
    mixed_dimensions,
    path_ranges,
    paths_after,
    paths_under,
)
from .records import FILE_STATUSES, VECTOR_KINDS, TextRecord, WindowDetails, check_vector_kind
from .schema import (
    AudioFileRow,
    GeneratedTextRow,
    IndexMetaRow,
    RunRow,
    VectorVersionRow,
    WindowRow,
    WindowVectorRow,
)

# Stored vectors read at a time when a FAISS index is built or re-filled from them: 200 MB of 1,024-d float32 (as
# stored; their decoding and normalising copy each batch once or twice), where reading all of a million took 4 GB.
VECTOR_BATCH_ROWS = 50_000


class LibraryReads:
    """The reading methods of `Store` for search, FAISS, `export` and `stats` (mixed in; each one read transaction)."""

    name: str
    url: str
    session: Callable[..., AbstractContextManager[Session]]
    reading: Callable[[], AbstractContextManager[Connection]]

    def vector_ids(self, kind: str) -> np.ndarray:
        """Sorted window ids (int64) that have a vector of `kind`: what the FAISS index must hold."""
        check_vector_kind(kind)
        return self._id_array(_vector_ids(kind))

    def vector_state(self, kind: str, *, unless: int | None = None) -> VectorState:
        """The version of the vectors of `kind` and, unless it is `unless`, their ids (`vector_ids`), read in one
        snapshot: a writer that commits meanwhile changes both or neither."""
        check_vector_kind(kind)
        with self.reading() as connection:
            version = connection.scalar(select(VectorVersionRow.version).where(VectorVersionRow.kind == kind))
            if version is not None and version == unless:
                return VectorState(version, None)
            return VectorState(version, _ids(connection, _vector_ids(kind)))

    def vectors(self, kind: str, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(window ids int64 (n,), float32 matrix (n, d)) of `kind`, sorted by id; all, or only `ids`.

        The vectors are as stored (not normalised). An empty result has shape (0, 0). A FAISS index built from all
        of them reads `vector_batches` instead, never holding them all.
        """
        batches = list(self.vector_batches(kind, ids))
        if not batches:
            return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
        if len(batches) == 1:
            return batches[0]
        return np.concatenate([found for found, _ in batches]), np.concatenate([rows for _, rows in batches])

    def vector_batches(self, kind: str, ids: Iterable[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`vectors` in batches of at most VECTOR_BATCH_ROWS, in id order, each read on its own (no transaction is
        held open between batches while FAISS adds the last one to an index, nor their rows once decoded)."""
        check_vector_kind(kind)
        batch_rows = VECTOR_BATCH_ROWS  # read once: every batch of one read has the same bound
        dims: set[int] = set()  # one width across batches, as `decode_matrix` checks within one

        def decoded(found: list[int], blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
            matrix = decode_matrix(self.name, kind, blobs)
            dims.update(matrix.shape[1:] if blobs else ())
            if len(dims) > 1:
                raise mixed_dimensions(self.name, kind, dims)
            return np.asarray(found, dtype=np.int64), matrix

        query = select(WindowVectorRow.window_id, WindowVectorRow.vector).where(WindowVectorRow.kind == kind)
        if ids is None:
            yield from self._all_vector_pages(query, batch_rows, decoded)
            return
        wanted = sorted_unique(id_array(ids))
        for rows in chunk_slices(len(wanted), batch_rows):
            batch = self._vector_page(query, wanted[rows].tolist(), decoded)
            if batch[0].size:  # ids none of which has a vector of `kind` (any more) are no batch
                yield batch

    def _all_vector_pages(
        self, query: Select[tuple[int, bytes]], batch_rows: int, decoded: Callable[..., tuple[np.ndarray, np.ndarray]]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every vector `query` selects, `batch_rows` at a time, each page after the last id of the page before
        (the (kind, window_id) index finds its start)."""
        after = None
        while True:
            page = query if after is None else query.where(WindowVectorRow.window_id > after)
            with self.session() as session:
                batch = decoded(*_unzip(session.execute(page.order_by(WindowVectorRow.window_id).limit(batch_rows))))
            if batch[0].size:
                yield batch
            if batch[0].size < batch_rows:
                return
            after = int(batch[0][-1])

    def _vector_page(
        self, query: Select[tuple[int, bytes]], wanted: list[int], decoded: Callable[..., tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The vectors `query` selects among the `wanted` ids, sorted by id."""
        found: list[int] = []
        blobs: list[bytes] = []
        with self.session() as session:
            for chunk in chunked(wanted, IDS_PER_QUERY):
                chunk_ids, chunk_blobs = _unzip(session.execute(query.where(WindowVectorRow.window_id.in_(chunk))))
                found += chunk_ids
                blobs += chunk_blobs
        order = np.argsort(np.asarray(found, dtype=np.int64), kind="stable")
        return decoded([found[i] for i in order], [blobs[i] for i in order])

    def window_details(self, window_ids: Iterable[int]) -> dict[int, WindowDetails]:
        """Details of the given windows for showing search results; ids no longer in the database are left out.

        Every search asks this for its candidates: two prepared SELECTs per chunk, no ORM objects."""
        wanted = sorted({int(i) for i in window_ids if int(i) >= 0})
        details: dict[int, WindowDetails] = {}
        with self.reading() as connection:
            for chunk in chunked(wanted, IDS_PER_QUERY):
                texts: dict[int, list[TextRecord]] = {}
                for window_id, *text in connection.execute(_TEXTS_OF_WINDOWS, {"ids": chunk}):
                    texts.setdefault(window_id, []).append(TextRecord(*text))
                for row in connection.execute(_WINDOWS_WITH_FILES, {"ids": chunk}):
                    window_id, file_id, path, index, start_s, end_s, duration_s, fmt = row
                    said = tuple(texts.get(window_id, ()))
                    details[window_id] = WindowDetails(
                        window_id, file_id, path, index, start_s, end_s, duration_s, fmt, said
                    )
        return details

    def file_windows(self, file_id: int) -> list[WindowDetails]:
        """The windows of one file, in time order, with what Pengi wrote for each: found by the file's id, which is
        indexed, not by its path (a scan of every file, for each file of a set evaluated)."""
        return self.files_windows([file_id]).get(file_id, [])

    def files_windows(self, file_ids: Iterable[int]) -> dict[int, list[WindowDetails]]:
        """`file_windows` of many files in a few queries: file id -> its windows, in time order (a file without
        windows is left out)."""
        by_file: dict[int, list[WindowDetails]] = {}
        for details in self.window_details(self.window_ids_of_files(file_ids)).values():
            by_file.setdefault(details.file_id, []).append(details)
        return {file_id: sorted(windows, key=lambda d: d.index) for file_id, windows in by_file.items()}

    def filter_window_ids(
        self,
        *,
        under: str | None = None,
        formats: Iterable[str] | None = None,
        min_duration_s: float | None = None,
        max_duration_s: float | None = None,
    ) -> np.ndarray:
        """Sorted ids (int64) of the windows of files matching all given filters (for a filtered search)."""
        query = select(WindowRow.id).join(AudioFileRow, WindowRow.file_id == AudioFileRow.id)
        query = query.where(*_file_conditions(under, min_duration_s, max_duration_s))
        if formats is not None:
            query = query.where(func.lower(AudioFileRow.format).in_([f.lower() for f in formats]))
        return self._id_array(query.order_by(WindowRow.id))

    def file_paths(
        self, *, under: str | None = None, min_duration_s: float | None = None, max_duration_s: float | None = None
    ) -> list[tuple[int, str]]:
        """(id, path) of the files matching the given filters, for the conditions on names that only Python applies
        (a glob's wildcards, extensions): a search then keeps to the windows of the files they accept."""
        query = select(AudioFileRow.id, AudioFileRow.path)
        with self.reading() as connection:
            rows = connection.execute(query.where(*_file_conditions(under, min_duration_s, max_duration_s)))
            return [(file_id, path) for file_id, path in rows]

    def window_ids_of_files(self, file_ids: Iterable[int]) -> np.ndarray:
        """Sorted ids (int64) of the windows of these files."""
        chunks = chunked(sorted({int(i) for i in file_ids}), IDS_PER_QUERY)
        with self.reading() as connection:
            found = [_ids(connection, _WINDOWS_OF_FILES, {"ids": chunk}) for chunk in chunks]
        return np.sort(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)

    def _id_array(self, query: Select[tuple[int]]) -> np.ndarray:
        """The ids a one-column query gives, as int64, read on a plain connection straight into numpy: commands
        read every window id of the library (FAISS checks, filters), and the ORM's rows took 0.9 s of 200,000."""
        with self.reading() as connection:
            return _ids(connection, query)

    def export_rows(self, under: str | None = None, *, page_size: int = 200) -> Iterator[dict[str, Any]]:
        """One JSON-ready dict per file (ordered by path) with its windows and their texts; vectors left out.

        Reads in pages inside one read transaction, so memory stays flat for large libraries.
        """
        with self.session() as session:
            for in_range in path_ranges(under):
                for page in _path_pages(session, in_range, page_size):
                    windows = _export_windows(session.connection(), [row.id for row in page])
                    for row in page:
                        yield _export_row(row, windows.get(row.id, []))
                    session.expunge_all()

    # -- statistics ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """JSON-ready counts: files by status, truncated files, windows (`window_count`), texts, vectors by kind,
        audio hours, model, last run."""
        with self.session() as session:
            by_status = dict(
                session.execute(select(AudioFileRow.status, func.count()).group_by(AudioFileRow.status)).all()
            )
            by_kind = dict(
                session.execute(select(WindowVectorRow.kind, func.count()).group_by(WindowVectorRow.kind)).all()
            )
            duration = session.scalar(select(func.sum(AudioFileRow.duration_s)).where(AudioFileRow.status == "indexed"))
            truncated = session.scalar(select(func.count()).select_from(AudioFileRow).where(is_truncated()))
            meta = session.get(IndexMetaRow, 1)
            last_run = session.scalars(select(RunRow).order_by(RunRow.id.desc()).limit(1)).first()
            revision = current_revision(session.connection())
            return {
                "database": self.url,
                "schema_revision": revision,
                "files": {"total": sum(by_status.values()), **{s: by_status.get(s, 0) for s in FILE_STATUSES}},
                "truncated_files": truncated,
                "window_count": session.scalar(select(func.count()).select_from(WindowRow)),
                "texts": session.scalar(select(func.count()).select_from(GeneratedTextRow)),
                "vectors": {kind: by_kind.get(kind, 0) for kind in VECTOR_KINDS},
                "indexed_audio_s": json_seconds(duration or 0.0),
                "model": None if meta is None else meta.to_record().to_json(),
                "last_run": None if last_run is None else last_run.to_record().to_json(),
            }


@dataclass(frozen=True)
class VectorState:
    """What `LibraryReads.vector_state` read: the version of a kind's vectors (None in a database that has none
    recorded) and their sorted ids, None when the version was the one the caller already had."""

    version: int | None
    ids: np.ndarray | None


def _vector_ids(kind: str) -> Select[tuple[int]]:
    return select(WindowVectorRow.window_id).where(WindowVectorRow.kind == kind).order_by(WindowVectorRow.window_id)


def _file_conditions(
    under: str | None, min_duration_s: float | None, max_duration_s: float | None
) -> list[ColumnElement[bool]]:
    conditions = [paths_under(under)]
    if min_duration_s is not None:
        conditions.append(AudioFileRow.duration_s >= min_duration_s)
    if max_duration_s is not None:
        conditions.append(AudioFileRow.duration_s <= max_duration_s)
    return conditions


def _ids(connection: Connection, query: Select[tuple[int]], values: dict[str, Any] | None = None) -> np.ndarray:
    return np.fromiter(connection.execute(query, values).scalars(), dtype=np.int64)


def _unzip(rows: Iterable[Any]) -> tuple[list[int], list[bytes]]:
    ids: list[int] = []
    blobs: list[bytes] = []
    for window_id, blob in rows:
        ids.append(window_id)
        blobs.append(blob)
    return ids, blobs


# `window_details`' statements, built once: their id lists are bound whole (no per-id work per search).
_TEXTS_OF_WINDOWS = (
    select(
        GeneratedTextRow.window_id,
        GeneratedTextRow.prompt,
        GeneratedTextRow.text,
        GeneratedTextRow.score,
        GeneratedTextRow.mode,
        GeneratedTextRow.decoding,
    )
    .where(GeneratedTextRow.window_id.in_(bindparam("ids", expanding=True)))
    .order_by(GeneratedTextRow.window_id, GeneratedTextRow.id)  # the order of the window_id index: no sort
)
_WINDOWS_OF_FILES = select(WindowRow.id).where(WindowRow.file_id.in_(bindparam("ids", expanding=True)))
_WINDOWS_OF_FILES_IN_ORDER = (
    select(WindowRow.id, WindowRow.file_id, WindowRow.index, WindowRow.start_s, WindowRow.end_s)
    .where(WindowRow.file_id.in_(bindparam("ids", expanding=True)))
    .order_by(WindowRow.file_id, WindowRow.index)
)
_WINDOWS_WITH_FILES = (
    select(
        WindowRow.id,
        WindowRow.file_id,
        AudioFileRow.path,
        WindowRow.index,
        WindowRow.start_s,
        WindowRow.end_s,
        AudioFileRow.duration_s,
        AudioFileRow.format,
    )
    .join(AudioFileRow, WindowRow.file_id == AudioFileRow.id)
    .where(WindowRow.id.in_(bindparam("ids", expanding=True)))
)


def _path_pages(session: Session, in_range: ColumnElement[bool], page_size: int) -> Iterator[list[AudioFileRow]]:
    """The files `in_range` selects, by path, `page_size` at a time: each page after the last path of the page
    before. On PostgreSQL both conditions compare as revision 0008's index orders, so a page is one search of it
    bounded on both sides, read in its order: neither the rest of the range sorted again nor rows outside it read."""
    last_path: str | None = None
    while True:
        query = select(AudioFileRow).where(in_range).order_by(by_path()).limit(page_size)
        if last_path is not None:
            query = query.where(paths_after(last_path))
        page = list(session.scalars(query))
        if page:
            yield page
        if len(page) < page_size:
            return
        last_path = page[-1].path


def _export_windows(connection: Connection, file_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """File id -> its windows, in order, with their texts, as `export` writes them. Plain rows: ORM objects of the
    windows and texts made an export three times slower (27 s of CPU for 200,000 windows, 8 s this way)."""
    files: dict[int, list[dict[str, Any]]] = {}
    windows: dict[int, dict[str, Any]] = {}
    for window_id, file_id, index, start_s, end_s in connection.execute(_WINDOWS_OF_FILES_IN_ORDER, {"ids": file_ids}):
        windows[window_id] = {
            "index": index,
            "start_s": json_seconds(start_s),
            "end_s": json_seconds(end_s),
            "texts": [],
        }
        files.setdefault(file_id, []).append(windows[window_id])
    for chunk in chunked(list(windows), IDS_PER_QUERY):
        for window_id, *text in connection.execute(_TEXTS_OF_WINDOWS, {"ids": chunk}):
            windows[window_id]["texts"].append(TextRecord(*text).to_json())
    return files


def _export_row(row: AudioFileRow, windows: list[dict[str, Any]]) -> dict[str, Any]:
    return row.to_record().to_json() | {"windows": windows}

"""The SQL store: audio files, their windows, the texts Pengi wrote for them and their embeddings.

The database is the source of truth; the FAISS indexes (`pengi_search.vectors`) are rebuilt from the vectors kept
here. SQLite (WAL mode) is the default, any SQLAlchemy URL works (PostgreSQL through psycopg 3). The schema is
created and upgraded only by the Alembic migrations in the `migrations` package: `Store.open` runs them.

Every public method of `Store` is one short transaction and returns plain records (`pengi_search.db.records`), so
callers never hold ORM objects or sessions. Paths are stored as the indexer gives them (absolute, `/`-separated); a
prefix such as `/sounds/dogs` matches the file `/sounds/dogs` and everything below the folder `/sounds/dogs/`.
Names that are not valid UTF-8 are stored without loss through an escape that keeps prefixes (`schema.OsText`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Connection, Engine, bindparam, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ..chunking import chunked
from ..pathnames import path_fields
from .access import open_engine
from .engine import WRITE_OPTION
from .errors import StoreError, StoreMismatchError, store_error
from .migrate import current_revision
from .queries import (
    IDS_PER_QUERY,
    NO_SYNC,
    decode_matrix,
    encode_vector,
    file_for_update,
    paths_under,
    text_vector_dim,
)
from .records import (
    FILE_STATUSES,
    TRUNCATED_NOTE,
    VECTOR_KINDS,
    EmbedderInfo,
    FileRecord,
    FileStamp,
    IndexMeta,
    ModelInfo,
    ReplaceResult,
    StoredAudio,
    TextRecord,
    VectorIndexInfo,
    WindowDetails,
    WindowInput,
    check_vector_kind,
)
from .runs import RunJournal
from .schema import (
    AudioFileRow,
    GeneratedTextRow,
    IndexMetaRow,
    RunRow,
    VectorIndexRow,
    WindowRow,
    WindowVectorRow,
)
from .urls import library_name, library_name_of_url


class Store(RunJournal):
    """The pengi-search database. Open with `Store.open(db)`, close with `close()` or a `with` block.

    The indexing runs' methods (`start_run`, `finish_run`, `runs`, ...) come from `pengi_search.db.runs`.
    """

    def __init__(self, engine: Engine, *, read_only: bool = False, name: str | None = None) -> None:
        """Wrap an engine whose database is already migrated; use `Store.open` instead.

        `name`: how errors name the library (`urls.library_name`); by default, as its URL names it."""
        self._engine = engine
        self.read_only = read_only
        # Every read sees one snapshot, as SQLite's WAL readers do (PostgreSQL's default is per statement).
        snapshot = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
        self._reader = engine.execution_options(**snapshot)
        self._read = sessionmaker(self._reader, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)
        self.url = engine.url.render_as_string(hide_password=True)  # what it is: FAISS file names, `stats`
        self.name = name or library_name_of_url(engine.url)  # how the user named it: every error's `where`

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None, *, create: bool = True, read_only: bool = False) -> Store:
        """Open (upgrading) the database at `db`: a URL, a file path, or None for the default.

        `create`: make it when missing (only `index` does), else MissingDatabaseError names the command that makes
        it. `read_only`: never create, and write nothing (see `pengi_search.db.access`).
        """
        engine = open_engine(db, create=create, read_only=read_only)
        return cls(engine, read_only=read_only, name=library_name(db))

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine underneath (for tools and tests; the methods are the API)."""
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        Database failures surface as StoreError (DatabaseUnreachableError when it did not answer); exceptions raised
        by the caller's code pass through unchanged.
        """
        maker = self._write if write else self._read
        try:
            with maker.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise store_error(self.name, exc) from exc

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read transaction on a plain connection, for Core statements on a hot path (every search reads hit
        details): the ORM session's bookkeeping was a third of a search's Python time. Failures as `session`."""
        try:
            with self._reader.begin() as connection:
                yield connection
        except SQLAlchemyError as exc:
            raise store_error(self.name, exc) from exc

    # -- files -----------------------------------------------------------------------------------------------

    def get_file(self, path: str) -> FileRecord | None:
        with self.session() as session:
            row = session.scalars(select(AudioFileRow).where(AudioFileRow.path == path)).one_or_none()
            return None if row is None else row.to_record()

    def files_under(self, prefix: str | None = None) -> list[FileRecord]:
        """All files below `prefix` (every file when None), ordered by path."""
        with self.session() as session:
            rows = session.scalars(select(AudioFileRow).where(paths_under(prefix)).order_by(AudioFileRow.path))
            return [row.to_record() for row in rows]

    def holds(self, prefix: str) -> bool:
        """Whether a file is recorded at `prefix` or below it, without reading them all (a folder gone from disk)."""
        with self.session() as session:
            return session.scalar(select(AudioFileRow.id).where(paths_under(prefix)).limit(1)) is not None

    def truncated_files(self) -> list[FileRecord]:
        """Indexed files that decode shorter than their header says (flagged "truncated: ..."), by path."""
        with self.session() as session:
            rows = session.scalars(select(AudioFileRow).where(_truncated()).order_by(AudioFileRow.path))
            return [row.to_record() for row in rows]

    def failed_files(self, limit: int | None = None) -> list[tuple[str, str]]:
        """(path, reason) of the files that could not be indexed, by path: the first `limit` (all when None)."""
        query = select(AudioFileRow.path, AudioFileRow.error).where(AudioFileRow.status == "error")
        with self.session() as session:
            rows = session.execute(query.order_by(AudioFileRow.path).limit(limit))
            return [(path, error or "") for path, error in rows]

    def files_with_hash(self, content_hash: str) -> list[FileRecord]:
        """Files whose content has this sha256 (copies, or a file that moved)."""
        with self.session() as session:
            rows = session.scalars(select(AudioFileRow).where(AudioFileRow.content_hash == content_hash))
            return [row.to_record() for row in rows]

    def all_file_stamps(self, under: str | None = None) -> dict[str, FileStamp]:
        """path -> (size, mtime, status, content_hash) for every file below `under`, in one query."""
        columns = (
            AudioFileRow.path,
            AudioFileRow.size,
            AudioFileRow.mtime,
            AudioFileRow.status,
            AudioFileRow.content_hash,
        )
        with self.session() as session:
            rows = session.execute(select(*columns).where(paths_under(under)))
            return {path: FileStamp(size, mtime, status, digest) for path, size, mtime, status, digest in rows}

    def upsert_file(
        self,
        path: str,
        *,
        size: int,
        mtime: float,
        content_hash: str | None = None,
        run_id: int | None = None,
    ) -> int:
        """Record a new or changed file as 'pending' with its new stamp; returns its id.

        Windows stored earlier stay searchable until `replace_file_windows` swaps them.
        """
        with self.session(write=True) as session:
            row = file_for_update(session, path)
            if row is None:
                row = AudioFileRow(path=path)
                session.add(row)
            row.size, row.mtime, row.content_hash = size, mtime, content_hash
            row.status, row.error, row.run_id = "pending", None, run_id
            session.flush()
            return row.id

    def touch_file(self, path: str, *, size: int, mtime: float) -> None:
        """Record a new stamp for a file whose content did not change (same content hash), keeping its windows."""
        with self.session(write=True) as session:
            row = file_for_update(session, path)
            if row is None:
                raise StoreError(path, "not in the index")
            row.size, row.mtime = size, mtime

    def record_file_error(
        self,
        path: str,
        reason: str,
        *,
        size: int | None = None,
        mtime: float | None = None,
        content_hash: str | None = None,
        run_id: int | None = None,
    ) -> int:
        """Mark a file as failed with `reason` (creating it if new); returns its id.

        Windows indexed earlier are kept: a file that turned unreadable loses nothing already indexed. The stamp
        is updated when given, so that an unchanged broken file is not retried on every run.
        """
        with self.session(write=True) as session:
            row = file_for_update(session, path)
            if row is None:
                row = AudioFileRow(path=path)
                session.add(row)
            if size is not None:
                row.size = size
            if mtime is not None:
                row.mtime = mtime
            if content_hash is not None:
                row.content_hash = content_hash
            row.status, row.error, row.run_id = "error", reason, run_id
            session.flush()
            return row.id

    def replace_file_windows(
        self,
        file_id: int,
        windows: Sequence[WindowInput],
        *,
        audio: StoredAudio | None = None,
        run_id: int | None = None,
    ) -> ReplaceResult:
        """Swap all windows (with texts and vectors) of a file for `windows` and mark it 'indexed'.

        One transaction: a crash or error leaves the old windows exactly as they were.
        """
        with self.session(write=True) as session:
            row = session.get(AudioFileRow, file_id, with_for_update=True)
            if row is None:
                raise StoreError(f"file id {file_id}", "not in the index")
            text_dim = text_vector_dim(session)
            new_windows = [_window_row(row.path, window, text_dim) for window in windows]
            _check_unique_indexes(row.path, windows)
            removed = list(
                session.scalars(select(WindowRow.id).where(WindowRow.file_id == file_id).order_by(WindowRow.id))
            )
            session.execute(delete(WindowRow).where(WindowRow.file_id == file_id), execution_options=NO_SYNC)
            for window in new_windows:
                window.file_id = file_id
            session.add_all(new_windows)
            row.error = None
            if audio is not None:
                row.duration_s, row.sample_rate = audio.duration_s, audio.sample_rate
                row.channels, row.format = audio.channels, audio.format
                row.error = "\n".join(audio.notes) or None  # an indexed file's notes (see FileRecord)
            row.status, row.run_id = "indexed", run_id
            row.indexed_at = datetime.now(timezone.utc)
            session.flush()
            return ReplaceResult(removed, [window.id for window in new_windows])

    def prune_missing(self, present: Iterable[str], *, under: str | None = None) -> int:
        """Delete the files below `under` (all when None) whose path is not in `present`; returns how many."""
        keep = set(present)
        with self.session(write=True) as session:
            rows = session.execute(select(AudioFileRow.id, AudioFileRow.path).where(paths_under(under)))
            gone = [file_id for file_id, path in rows if path not in keep]
            for chunk in chunked(gone, IDS_PER_QUERY):
                session.execute(delete(AudioFileRow).where(AudioFileRow.id.in_(chunk)), execution_options=NO_SYNC)
            return len(gone)

    def remove(self, path_or_prefix: str) -> int:
        """Delete one file, or every file below a folder, with all their windows; returns how many files."""
        with self.session(write=True) as session:
            statement = delete(AudioFileRow).where(paths_under(path_or_prefix))
            result = session.execute(statement, execution_options=NO_SYNC)
            return result.rowcount

    # -- windows and vectors ---------------------------------------------------------------------------------

    def vector_ids(self, kind: str) -> np.ndarray:
        """Sorted window ids (int64) that have a vector of `kind`: what the FAISS index must hold."""
        check_vector_kind(kind)
        with self.session() as session:
            ids = session.scalars(
                select(WindowVectorRow.window_id)
                .where(WindowVectorRow.kind == kind)
                .order_by(WindowVectorRow.window_id)
            ).all()
            return np.asarray(ids, dtype=np.int64)

    def vectors(self, kind: str, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(window ids int64 (n,), float32 matrix (n, d)) of `kind`, sorted by id; all, or only `ids`.

        The vectors are as stored (not normalised). An empty result has shape (0, 0).
        """
        check_vector_kind(kind)
        query = select(WindowVectorRow.window_id, WindowVectorRow.vector).where(WindowVectorRow.kind == kind)
        with self.session() as session:
            if ids is None:
                rows = session.execute(query.order_by(WindowVectorRow.window_id).execution_options(yield_per=5000))
                id_list, blobs = _unzip(rows)
            else:
                id_list, blobs = [], []
                for chunk in chunked(sorted(set(int(i) for i in ids)), IDS_PER_QUERY):
                    found, chunk_blobs = _unzip(session.execute(query.where(WindowVectorRow.window_id.in_(chunk))))
                    id_list += found
                    blobs += chunk_blobs
                order = np.argsort(np.asarray(id_list, dtype=np.int64), kind="stable")
                id_list, blobs = [id_list[i] for i in order], [blobs[i] for i in order]
        return np.asarray(id_list, dtype=np.int64), decode_matrix(self.name, kind, blobs)

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

    def filter_window_ids(
        self,
        *,
        under: str | None = None,
        formats: Iterable[str] | None = None,
        min_duration_s: float | None = None,
        max_duration_s: float | None = None,
    ) -> np.ndarray:
        """Sorted ids (int64) of the windows of files matching all given filters (for a filtered search)."""
        query = select(WindowRow.id).join(AudioFileRow, WindowRow.file_id == AudioFileRow.id).where(paths_under(under))
        if formats is not None:
            query = query.where(func.lower(AudioFileRow.format).in_([f.lower() for f in formats]))
        if min_duration_s is not None:
            query = query.where(AudioFileRow.duration_s >= min_duration_s)
        if max_duration_s is not None:
            query = query.where(AudioFileRow.duration_s <= max_duration_s)
        with self.session() as session:
            return np.asarray(session.scalars(query.order_by(WindowRow.id)).all(), dtype=np.int64)

    def export_rows(self, under: str | None = None, *, page_size: int = 200) -> Iterator[dict[str, Any]]:
        """One JSON-ready dict per file (ordered by path) with its windows and their texts; vectors left out.

        Reads in pages inside one read transaction, so memory stays flat for large libraries.
        """
        with self.session() as session:
            last_path: str | None = None
            while True:
                query = select(AudioFileRow).where(paths_under(under)).order_by(AudioFileRow.path).limit(page_size)
                if last_path is not None:
                    query = query.where(AudioFileRow.path > last_path)
                page = session.scalars(
                    query.options(selectinload(AudioFileRow.windows).selectinload(WindowRow.texts))
                ).all()
                if not page:
                    return
                for row in page:
                    yield _export_row(row)
                last_path = page[-1].path
                session.expunge_all()

    # -- model and embedder ----------------------------------------------------------------------------------

    def index_meta(self) -> IndexMeta | None:
        """The model and text embedder the index was built with; None before anything was indexed."""
        with self.session() as session:
            row = session.get(IndexMetaRow, 1)
            return None if row is None else row.to_record()

    def set_index_meta(self, model: ModelInfo, embedder: EmbedderInfo) -> None:
        """Record what builds the index; raises StoreMismatchError when it was built with something else."""
        with self.session(write=True) as session:
            row = session.get(IndexMetaRow, 1, with_for_update=True)
            now = datetime.now(timezone.utc)
            if row is None:
                session.add(IndexMetaRow.create(model, embedder, now))
                return
            self._raise_on_mismatch(row.to_record(), model, embedder)
            row.updated_at = now

    def check_compatible(self, model: ModelInfo | None, embedder: EmbedderInfo | None) -> None:
        """Raise StoreMismatchError unless the index was built with this model and embedder.

        None skips a part (a text query needs only the embedder to match); an empty index is compatible.
        """
        meta = self.index_meta()
        if meta is not None:
            self._raise_on_mismatch(meta, model, embedder)

    def reset_index(self, model: ModelInfo, embedder: EmbedderInfo) -> int:
        """Forget every window, text and vector, mark all files 'pending' and record the new model/embedder.

        For a full re-index with another model or embedder; returns how many files must be indexed again.
        """
        with self.session(write=True) as session:
            session.execute(delete(WindowRow), execution_options=NO_SYNC)
            files = session.execute(
                update(AudioFileRow).values(status="pending", error=None, indexed_at=None), execution_options=NO_SYNC
            ).rowcount
            # The row is kept, not made anew: its created_at is the library's identity (`library_id`).
            now = datetime.now(timezone.utc)
            row = session.get(IndexMetaRow, 1, with_for_update=True)
            if row is None:
                session.add(IndexMetaRow.create(model, embedder, now))
            else:
                row.record(model, embedder, now)
            return files

    # -- vector indexes --------------------------------------------------------------------------------------

    def vector_indexes(self) -> dict[str, VectorIndexInfo]:
        """What each kind's FAISS index is, as last built or brought in line (kinds never built are left out)."""
        with self.session() as session:
            return {row.kind: row.to_record() for row in session.scalars(select(VectorIndexRow))}

    def record_vector_index(
        self, kind: str, *, requested_type: str, effective_type: str | None, params: dict[str, Any], vectors: int
    ) -> None:
        """Record the index of `kind` just built or synced: the type asked for, the type built and its parameters."""
        check_vector_kind(kind)
        with self.session(write=True) as session:
            row = session.get(VectorIndexRow, kind, with_for_update=True)
            if row is None:
                row = VectorIndexRow(kind=kind)
                session.add(row)
            row.requested_type, row.effective_type = requested_type, effective_type
            row.params = json.dumps(params, sort_keys=True) if effective_type is not None else None
            row.vectors, row.updated_at = vectors, datetime.now(timezone.utc)

    def _raise_on_mismatch(self, meta: IndexMeta, model: ModelInfo | None, embedder: EmbedderInfo | None) -> None:
        wrong = [
            f"{theirs} but this run uses {ours}"
            for ours, theirs in ((model, meta.model), (embedder, meta.embedder))
            if ours is not None and ours != theirs
        ]
        if wrong:
            raise StoreMismatchError(
                self.name,
                f"the index was built with {meta.model} and {meta.embedder}; {'; '.join(wrong)}. "
                "Pass the model and embedder it was built with (--model), or re-index the library with the new "
                "ones (a full re-index replaces every caption and vector).",
            )

    # -- statistics ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """JSON-ready counts: files by status, truncated files, windows, texts, vectors by kind, audio hours, model,
        last run."""
        with self.session() as session:
            by_status = dict(
                session.execute(select(AudioFileRow.status, func.count()).group_by(AudioFileRow.status)).all()
            )
            by_kind = dict(
                session.execute(select(WindowVectorRow.kind, func.count()).group_by(WindowVectorRow.kind)).all()
            )
            duration = session.scalar(select(func.sum(AudioFileRow.duration_s)).where(AudioFileRow.status == "indexed"))
            truncated = session.scalar(select(func.count()).select_from(AudioFileRow).where(_truncated()))
            meta = session.get(IndexMetaRow, 1)
            last_run = session.scalars(select(RunRow).order_by(RunRow.id.desc()).limit(1)).first()
            revision = current_revision(session.connection())
            return {
                "database": self.url,
                "schema_revision": revision,
                "files": {"total": sum(by_status.values()), **{s: by_status.get(s, 0) for s in FILE_STATUSES}},
                "truncated_files": truncated,
                "windows": session.scalar(select(func.count()).select_from(WindowRow)),
                "texts": session.scalar(select(func.count()).select_from(GeneratedTextRow)),
                "vectors": {kind: by_kind.get(kind, 0) for kind in VECTOR_KINDS},
                "indexed_audio_s": float(duration or 0.0),
                "model": None if meta is None else meta.to_record().to_json(),
                "last_run": None if last_run is None else last_run.to_record().to_json(),
            }


def _truncated() -> ColumnElement[bool]:
    return (AudioFileRow.status == "indexed") & AudioFileRow.error.startswith(TRUNCATED_NOTE, autoescape=True)


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


def _window_row(path: str, window: WindowInput, text_dim: int | None) -> WindowRow:
    where = f"{path} window {window.index}"
    if not (0 <= window.start_s <= window.end_s):
        raise StoreError(where, f"bad time span {window.start_s}..{window.end_s} s")
    return WindowRow(
        index=window.index,
        start_s=float(window.start_s),
        end_s=float(window.end_s),
        texts=[GeneratedTextRow.of(text) for text in window.texts],
        vectors=[
            WindowVectorRow(kind=kind, vector=encode_vector(where, kind, vector, text_dim))
            for kind, vector in window.vectors.items()
        ],
    )


def _check_unique_indexes(path: str, windows: Sequence[WindowInput]) -> None:
    indexes = [window.index for window in windows]
    if len(set(indexes)) != len(indexes):
        raise StoreError(path, f"window indexes repeat: {sorted(indexes)}")


def _export_row(row: AudioFileRow) -> dict[str, Any]:
    record = row.to_record()
    data = path_fields(record.path) | {
        name: getattr(record, name) for name in record.__dataclass_fields__ if name not in ("id", "run_id", "path")
    }
    data["indexed_at"] = None if record.indexed_at is None else record.indexed_at.isoformat()
    data["notes"] = record.notes.splitlines() if record.notes else []
    data["truncated"] = record.truncated is not None
    data["windows"] = [
        {
            "index": window.index,
            "start_s": window.start_s,
            "end_s": window.end_s,
            "texts": [dataclasses.asdict(text.to_record()) for text in window.texts],
        }
        for window in row.windows
    ]
    return data

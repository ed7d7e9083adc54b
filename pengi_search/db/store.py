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
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..chunking import chunked
from .access import open_engine
from .engine import WRITE_OPTION
from .errors import ClosedLibraryError, RefusedInputError, store_error
from .index_meta import IndexBuild
from .queries import (
    IDS_PER_QUERY,
    NO_SYNC,
    by_path,
    encode_vector,
    file_for_update,
    is_truncated,
    paths_under,
    text_vector_dim,
    vectors_changed,
)
from .reads import LibraryReads
from .records import VECTOR_KINDS, FileRecord, FileStamp, ReplaceResult, StoredAudio, WindowInput
from .runs import RunJournal
from .schema import AudioFileRow, GeneratedTextRow, WindowRow, WindowVectorRow
from .urls import db_option, library_name, library_name_of_url


class Store(RunJournal, LibraryReads, IndexBuild):
    """The pengi-search database. Open with `Store.open(db)`, close with `close()` or a `with` block.

    The indexing runs' methods (`start_run`, `finish_run`, `runs`, ...) come from `pengi_search.db.runs`, what search,
    FAISS, `export` and `stats` read (`vectors`, `window_details`, ...) from `reads`, and the record of what builds
    the index (`index_meta`, `check_compatible`, `vector_indexes`, ...) from `index_meta`.

    Thread-safe: each call runs in a transaction of its own, on a connection of the engine's pool.
    """

    def __init__(
        self, engine: Engine, *, read_only: bool = False, name: str | None = None, db_option: str = ""
    ) -> None:
        """Wrap an engine whose database is already migrated; use `Store.open` instead.

        `name`: how errors name the library (`urls.library_name`); by default, as its URL names it. `db_option`:
        what the commands that messages suggest add to act on this library (`urls.db_option`: ` --db VALUE` when
        the user named one), so that a pasted suggestion does not act on the default library."""
        self._engine = engine
        self._closed = False
        self.read_only = read_only
        # Every read sees one snapshot, as SQLite's WAL readers do (PostgreSQL's default is per statement).
        snapshot = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
        self._reader = engine.execution_options(**snapshot)
        self._read = sessionmaker(self._reader, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)
        self.url = engine.url.render_as_string(hide_password=True)  # what it is: FAISS file names, `stats`
        self.name = name or library_name_of_url(engine.url)  # how the user named it: every error's `where`
        self.db_option = db_option
        # Set by `run_lock.indexing_lock` while a run holds the library: called before each write commits, it raises
        # when the lock was lost (PostgreSQL's, with its session), so that a run never writes beside the next one.
        self.write_guard: Callable[[], None] | None = None

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None, *, create: bool = True, read_only: bool = False) -> Store:
        """Open (upgrading) the database at `db`: a URL, a file path, or None for the default.

        `create`: make it when missing (only `index` does), else MissingDatabaseError names the command that makes
        it. `read_only`: never create, and write nothing (see `pengi_search.db.access`).
        """
        engine = open_engine(db, create=create, read_only=read_only)
        return cls(engine, read_only=read_only, name=library_name(db), db_option=db_option(db))

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine underneath (for tools and tests; the methods are the API)."""
        self.check_open()
        return self._engine

    def close(self) -> None:
        """Release the database connections. Closing again does nothing; any other use raises ClosedLibraryError:
        the engine would otherwise open new connections on the quiet, which nothing would ever close."""
        self._closed = True
        self._engine.dispose()

    def check_open(self) -> None:
        """Raise ClosedLibraryError once `close` has been called."""
        if self._closed:
            raise ClosedLibraryError(self.name)

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
        self.check_open()
        maker = self._write if write else self._read
        try:
            with maker.begin() as session:
                yield session
                if write and self.write_guard is not None:
                    self.write_guard()
        except SQLAlchemyError as exc:
            raise store_error(self.name, exc) from exc

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read transaction on a plain connection, for Core statements on a hot path (every search reads hit
        details): the ORM session's bookkeeping was a third of a search's Python time. Failures as `session`."""
        self.check_open()
        try:
            with self._reader.begin() as connection:
                yield connection
        except SQLAlchemyError as exc:
            raise store_error(self.name, exc) from exc

    # -- files -----------------------------------------------------------------------------------------------

    def get_file(self, path: str) -> FileRecord | None:
        return self.get_files([path]).get(path)

    def get_files(self, paths: Iterable[str]) -> dict[str, FileRecord]:
        """path -> record of those of `paths` the library holds, in one transaction (`similar` of a folder's
        files asked one query each)."""
        found: dict[str, FileRecord] = {}
        with self.session() as session:
            for chunk in chunked(sorted(set(paths)), IDS_PER_QUERY):
                for row in session.scalars(select(AudioFileRow).where(AudioFileRow.path.in_(chunk))):
                    found[row.path] = row.to_record()
        return found

    def files_under(self, prefix: str | None = None) -> list[FileRecord]:
        """All files below `prefix` (every file when None), ordered by path."""
        with self.session() as session:
            rows = session.scalars(select(AudioFileRow).where(paths_under(prefix)).order_by(by_path()))
            return [row.to_record() for row in rows]

    def holds(self, prefix: str) -> bool:
        """Whether a file is recorded at `prefix` or below it, without reading them all (a folder gone from disk)."""
        with self.session() as session:
            return session.scalar(select(AudioFileRow.id).where(paths_under(prefix)).limit(1)) is not None

    def truncated_files(self) -> list[FileRecord]:
        """Indexed files that decode shorter than their header says (flagged "truncated: ..."), by path."""
        with self.session() as session:
            rows = session.scalars(select(AudioFileRow).where(is_truncated()).order_by(by_path()))
            return [row.to_record() for row in rows]

    def failed_files(self, limit: int | None = None) -> list[tuple[str, str]]:
        """(path, reason) of the files that could not be indexed, by path: the first `limit` (all when None)."""
        query = select(AudioFileRow.path, AudioFileRow.error).where(AudioFileRow.status == "error")
        with self.session() as session:
            rows = session.execute(query.order_by(by_path()).limit(limit))
            return [(path, error or "") for path, error in rows]

    def files_with_hash(self, content_hash: str) -> list[FileRecord]:
        """Files whose content has this sha256 (copies, or a file that moved)."""
        return self.files_with_hashes([content_hash]).get(content_hash, [])

    def files_with_hashes(self, content_hashes: Iterable[str]) -> dict[str, list[FileRecord]]:
        """sha256 -> the files whose content has it, for those of `content_hashes` some file has; one transaction."""
        found: dict[str, list[FileRecord]] = {}
        with self.session() as session:
            for chunk in chunked(sorted(set(content_hashes)), IDS_PER_QUERY):
                for row in session.scalars(select(AudioFileRow).where(AudioFileRow.content_hash.in_(chunk))):
                    found.setdefault(row.content_hash, []).append(row.to_record())
        return found

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
                raise RefusedInputError(path, "not in the index")
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
                raise RefusedInputError(f"file id {file_id}", "not in the index")
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
            added = [kind for window in windows for kind in window.vectors]
            # The removed windows' kinds are not read: taking both costs at most one full check of a FAISS file.
            vectors_changed(session, added + list(VECTOR_KINDS if removed else ()))
            return ReplaceResult(removed, [window.id for window in new_windows])

    def prune_missing(self, present: Iterable[str], *, under: str | None = None) -> int:
        """Delete the files below `under` (all when None) whose path is not in `present`; returns how many."""
        keep = set(present)
        with self.session(write=True) as session:
            rows = session.execute(select(AudioFileRow.id, AudioFileRow.path).where(paths_under(under)))
            gone = [file_id for file_id, path in rows if path not in keep]
            for chunk in chunked(gone, IDS_PER_QUERY):
                session.execute(delete(AudioFileRow).where(AudioFileRow.id.in_(chunk)), execution_options=NO_SYNC)
            vectors_changed(session, VECTOR_KINDS if gone else ())  # their windows' vectors go with them
            return len(gone)

    def remove(self, path_or_prefix: str) -> int:
        """Delete one file, or every file below a folder, with all their windows; returns how many files."""
        with self.session(write=True) as session:
            statement = delete(AudioFileRow).where(paths_under(path_or_prefix))
            removed = session.execute(statement, execution_options=NO_SYNC).rowcount
            vectors_changed(session, VECTOR_KINDS if removed else ())
            return removed


def _window_row(path: str, window: WindowInput, text_dim: int | None) -> WindowRow:
    where = f"{path} window {window.index}"
    if not (0 <= window.start_s <= window.end_s):
        raise RefusedInputError(where, f"bad time span {window.start_s}..{window.end_s} s")
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
        raise RefusedInputError(path, f"window indexes repeat: {sorted(indexes)}")

"""The SQL store: audio files, their windows, the texts Pengi wrote for them and their embeddings.

The database is the source of truth; the FAISS indexes (`pengi_search.vectors`) are rebuilt from the vectors kept
here. SQLite (WAL mode) is the default, any SQLAlchemy URL works (PostgreSQL through psycopg 3). The schema is
created and upgraded only by the Alembic migrations in the `migrations` package: `Store.open` runs them.

Every public method of `Store` is one short transaction and returns plain records (frozen dataclasses), so callers
never hold ORM objects or sessions. Paths are stored as the indexer gives them (absolute, `/`-separated); a prefix
such as `/sounds/dogs` matches the file `/sounds/dogs` and everything below the folder `/sounds/dogs/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ColumnElement,
    DateTime,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload, sessionmaker
from sqlalchemy.types import TypeDecorator

import migrations
from pengi_search.errors import PengiSearchError
from pengi_search.paths import data_dir

DB_ENV_VAR = "PENGI_SEARCH_DB"
DB_FILENAME = "index.db"
FILE_STATUSES = ("pending", "indexed", "error")
RUN_STATUSES = ("running", "finished", "failed", "interrupted")
VECTOR_KINDS = ("text", "audio")
SQLITE_BUSY_TIMEOUT_MS = 30_000

_CHUNK = 500  # ids per IN (...) list: far below SQLite's limit on bound parameters
_WRITE = "pengi_write"  # execution option marking write transactions (SQLite takes its lock up front)
_MIGRATION_LOCK = 0x70656E6769  # PostgreSQL advisory lock that serialises concurrent upgrades


# ---------------------------------------------------------------------------------------------------------------
# Errors


class StoreError(PengiSearchError):
    """A database could not be opened, read or written, or was given bad input."""


class StoreMismatchError(StoreError):
    """The index was built with another model or text embedder than the one asked for."""


# ---------------------------------------------------------------------------------------------------------------
# Locations


def default_db_url() -> str:
    """`$PENGI_SEARCH_DB` when set (URL or file path), else `index.db` in `pengi_search.paths.data_dir()`."""
    return normalize_db_url(os.environ.get(DB_ENV_VAR) or data_dir() / DB_FILENAME)


def resolve_db_url(db: str | os.PathLike[str] | None = None) -> str:
    """The URL for an explicit `--db` value (URL or file path), else `default_db_url()`."""
    return default_db_url() if db is None or os.fspath(db) == "" else normalize_db_url(db)


def normalize_db_url(db: str | os.PathLike[str]) -> str:
    """An SQLAlchemy URL for `db`: URLs (anything with `://`) pass through, file paths become SQLite URLs."""
    value = os.fspath(db)
    if "://" in value:
        return value
    return URL.create("sqlite", database=str(Path(value).expanduser().absolute())).render_as_string()


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for other backends and in-memory databases."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


def default_index_dir(url: str | URL) -> Path:
    """Where the FAISS files of a database live: beside a SQLite file, else in the data folder."""
    db_file = sqlite_file(url)
    return db_file.parent if db_file is not None else data_dir()


def default_index_path(url: str | URL, kind: str) -> Path:
    """The FAISS file for vectors of `kind`, named after the database so that several never collide."""
    _check_kind(kind)
    db_file = sqlite_file(url)
    if db_file is not None:
        stem = db_file.stem
    else:
        parsed = make_url(url)
        digest = hashlib.sha256(parsed.render_as_string(hide_password=True).encode()).hexdigest()[:12]
        stem = f"{parsed.get_backend_name()}-{digest}"
    return default_index_dir(url) / f"{stem}.{kind}.faiss"


# ---------------------------------------------------------------------------------------------------------------
# Schema (created only by the migrations; tests check that both agree)

RowId = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER is what makes a SQLite rowid alias

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone, so it stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; pass an aware one")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class IndexingRun(Base):
    """One run of the indexer (or one shard of a run)."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint("status IN ('running', 'finished', 'failed', 'interrupted')", name="status"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16))
    files_seen: Mapped[int] = mapped_column(Integer, default=0)
    files_indexed: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    files_pruned: Mapped[int] = mapped_column(Integer, default=0)
    shard: Mapped[str | None] = mapped_column(String(64))


class AudioFile(Base):
    """One audio file: its stamp (size, mtime, content hash), decoded properties and indexing status."""

    __tablename__ = "audio_files"
    __table_args__ = (CheckConstraint("status IN ('pending', 'indexed', 'error')", name="status"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime: Mapped[float | None] = mapped_column(Double)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # sha256 hex, revision 0002
    duration_s: Mapped[float | None] = mapped_column(Double)
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    channels: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    run_id: Mapped[int | None] = mapped_column(RowId, ForeignKey("runs.id", ondelete="SET NULL"))

    windows: Mapped[list[Window]] = relationship(
        back_populates="file", cascade="all, delete-orphan", passive_deletes=True, order_by="Window.index"
    )


class Window(Base):
    """A fixed stretch of a file (Pengi hears 7 s at a time); its id is the FAISS id of its vectors."""

    __tablename__ = "windows"
    # AUTOINCREMENT: SQLite must never hand a deleted window's id to a new one, or a stale FAISS file would
    # still match the database's id set.
    __table_args__ = (UniqueConstraint("file_id", "window_index"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    file_id: Mapped[int] = mapped_column(RowId, ForeignKey("audio_files.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column("window_index", Integer)
    start_s: Mapped[float] = mapped_column(Double)
    end_s: Mapped[float] = mapped_column(Double)

    file: Mapped[AudioFile] = relationship(back_populates="windows")
    texts: Mapped[list[GeneratedText]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="GeneratedText.id"
    )
    vectors: Mapped[list[WindowVector]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class GeneratedText(Base):
    """What Pengi wrote for a window in answer to one prompt."""

    __tablename__ = "generated_texts"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    window_id: Mapped[int] = mapped_column(RowId, ForeignKey("windows.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Double)


class WindowVector(Base):
    """An embedding of a window as little-endian float32 bytes: 'text' (of its caption) or 'audio'."""

    __tablename__ = "window_vectors"
    __table_args__ = (
        CheckConstraint("kind IN ('text', 'audio')", name="kind"),
        Index("ix_window_vectors_kind_window_id", "kind", "window_id"),  # id lists per kind from the index alone
    )

    window_id: Mapped[int] = mapped_column(RowId, ForeignKey("windows.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class IndexMetaRow(Base):
    """The single row naming the model and text embedder that built the index."""

    __tablename__ = "index_meta"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(Text)
    model_fingerprint: Mapped[str] = mapped_column(String(128))
    embedder_name: Mapped[str] = mapped_column(Text)
    embedder_dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


# ---------------------------------------------------------------------------------------------------------------
# Records handed to and returned by the Store


@dataclass(frozen=True)
class ModelInfo:
    """The Pengi checkpoint that wrote the texts: a name and the sha256 (or other fingerprint) of its weights."""

    name: str
    fingerprint: str

    def __str__(self) -> str:
        return f"model {self.name!r} (fingerprint {self.fingerprint[:16]})"


@dataclass(frozen=True)
class EmbedderInfo:
    """The text embedder whose vectors fill the 'text' index."""

    name: str
    dim: int

    def __str__(self) -> str:
        return f"text embedder {self.name!r} (dim {self.dim})"


@dataclass(frozen=True)
class IndexMeta:
    model: ModelInfo
    embedder: EmbedderInfo
    created_at: datetime
    updated_at: datetime


class FileStamp(NamedTuple):
    """What the indexer compares with the file system to decide whether a file changed."""

    size: int | None
    mtime: float | None
    status: str
    content_hash: str | None


@dataclass(frozen=True)
class FileRecord:
    id: int
    path: str
    size: int | None
    mtime: float | None
    content_hash: str | None
    duration_s: float | None
    sample_rate: int | None
    channels: int | None
    format: str | None
    status: str
    error: str | None
    indexed_at: datetime | None
    run_id: int | None


@dataclass(frozen=True)
class AudioInfo:
    """Properties of a decoded file, recorded when its windows are stored."""

    duration_s: float
    sample_rate: int
    channels: int
    format: str


@dataclass(frozen=True)
class TextRecord:
    prompt: str
    text: str
    score: float | None = None


@dataclass(frozen=True)
class WindowInput:
    """One window to store: its texts and its vectors by kind ('text', 'audio'), each a 1-D float array."""

    index: int
    start_s: float
    end_s: float
    texts: Sequence[TextRecord] = ()
    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplaceResult:
    """Window ids that `replace_file_windows` deleted and created (to update a FAISS index in place)."""

    removed_window_ids: list[int]
    added_window_ids: list[int]


@dataclass(frozen=True)
class WindowDetails:
    """A window as a search result shows it: where it is and what was said about it."""

    window_id: int
    file_id: int
    path: str
    index: int
    start_s: float
    end_s: float
    file_duration_s: float | None
    format: str | None
    texts: tuple[TextRecord, ...]


@dataclass(frozen=True)
class RunRecord:
    id: int
    started_at: datetime
    finished_at: datetime | None
    status: str
    files_seen: int
    files_indexed: int
    files_failed: int
    files_pruned: int
    shard: str | None


# ---------------------------------------------------------------------------------------------------------------
# Engine and migrations


def create_store_engine(url: str | URL) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys and a busy timeout on every connection."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(str(url), f"not a database URL ({exc})") from exc
    if parsed.drivername == "postgresql":  # the bare name means psycopg2 to SQLAlchemy; psycopg 3 is what we ship
        parsed = parsed.set(drivername="postgresql+psycopg")
    where = parsed.render_as_string(hide_password=True)
    db_file = sqlite_file(parsed)
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite")
    except ImportError as exc:
        raise StoreError(
            where, f"database driver missing ({exc}); for PostgreSQL: pip install 'psycopg[binary]'"
        ) from exc
    except ArgumentError as exc:
        raise StoreError(where, f"cannot use this database URL ({exc})") from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level: transactions are begun by `_sqlite_on_begin` instead, which also makes
    # migrations transactional DDL.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "foreign_keys=ON",
        f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # A writer takes the write lock at BEGIN, so that concurrent writers wait (busy_timeout) instead of failing
    # when a read lock cannot be upgraded; readers get a plain snapshot.
    write = connection.get_execution_options().get(_WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def migrations_dir() -> Path:
    """The folder of the Alembic scripts (the `migrations` package shipped with pengi-search)."""
    return Path(migrations.__file__).parent


SCHEMA_HEAD = "0002"  # the newest migration; a test keeps it equal to the scripts' head


def alembic_config(url: str | None = None) -> Any:
    """The Alembic configuration, built in code (no alembic.ini).

    Store.open hands its connection over in `config.attributes["connection"]`; `url` serves developer commands
    such as `command.revision(alembic_config(url), autogenerate=True, message=...)`.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolates '%'
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema of `engine`'s database to `revision` (no-op when already at head)."""
    where = engine.url.render_as_string(hide_password=True)
    if revision == "head" and _at_head(engine):
        return  # the common case, answered without importing alembic (~0.5 s)
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
        known = {rev.revision for rev in script.walk_revisions()}
        if current - known:
            raise StoreError(
                where,
                f"schema revision {', '.join(sorted(current - known))} is newer than this pengi-search knows; "
                "upgrade pengi-search",
            )
        if revision == "head" and current == set(script.get_heads()):
            return
        with engine.execution_options(**{_WRITE: True}).begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except SQLAlchemyError as exc:
        raise StoreError(where, f"cannot open or upgrade the database: {exc}") from exc


def _at_head(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return False
            return set(connection.scalars(text("SELECT version_num FROM alembic_version"))) == {SCHEMA_HEAD}
    except SQLAlchemyError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# The store


class Store:
    """The pengi-search database. Open with `Store.open(db)`, close with `close()` or a `with` block."""

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine whose database is already migrated; use `Store.open` instead."""
        self._engine = engine
        # Every read sees one snapshot, as SQLite's WAL readers do (PostgreSQL's default is per statement).
        snapshot = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
        self._read = sessionmaker(engine.execution_options(**snapshot), expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**{_WRITE: True}), expire_on_commit=False)
        self.url = engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None) -> Store:
        """Open (creating or upgrading) the database at `db`: a URL, a file path, or None for the default."""
        engine = create_store_engine(resolve_db_url(db))
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

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

        Database failures surface as StoreError; exceptions raised by the caller's code pass through unchanged.
        """
        maker = self._write if write else self._read
        try:
            with maker.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(self.url, str(exc)) from exc

    # -- files -----------------------------------------------------------------------------------------------

    def get_file(self, path: str) -> FileRecord | None:
        with self.session() as session:
            row = session.scalars(select(AudioFile).where(AudioFile.path == path)).one_or_none()
            return None if row is None else _file_record(row)

    def files_under(self, prefix: str | None = None) -> list[FileRecord]:
        """All files below `prefix` (every file when None), ordered by path."""
        with self.session() as session:
            rows = session.scalars(select(AudioFile).where(_under(prefix)).order_by(AudioFile.path))
            return [_file_record(row) for row in rows]

    def files_with_hash(self, content_hash: str) -> list[FileRecord]:
        """Files whose content has this sha256 (copies, or a file that moved)."""
        with self.session() as session:
            rows = session.scalars(select(AudioFile).where(AudioFile.content_hash == content_hash))
            return [_file_record(row) for row in rows]

    def all_file_stamps(self, under: str | None = None) -> dict[str, FileStamp]:
        """path -> (size, mtime, status, content_hash) for every file below `under`, in one query."""
        columns = (AudioFile.path, AudioFile.size, AudioFile.mtime, AudioFile.status, AudioFile.content_hash)
        with self.session() as session:
            rows = session.execute(select(*columns).where(_under(under)))
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
            row = _file_for_update(session, path)
            if row is None:
                row = AudioFile(path=path)
                session.add(row)
            row.size, row.mtime, row.content_hash = size, mtime, content_hash
            row.status, row.error, row.run_id = "pending", None, run_id
            session.flush()
            return row.id

    def touch_file(self, path: str, *, size: int, mtime: float) -> None:
        """Record a new stamp for a file whose content did not change (same content hash), keeping its windows."""
        with self.session(write=True) as session:
            row = _file_for_update(session, path)
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
            row = _file_for_update(session, path)
            if row is None:
                row = AudioFile(path=path)
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
        audio: AudioInfo | None = None,
        run_id: int | None = None,
    ) -> ReplaceResult:
        """Swap all windows (with texts and vectors) of a file for `windows` and mark it 'indexed'.

        One transaction: a crash or error leaves the old windows exactly as they were.
        """
        with self.session(write=True) as session:
            row = session.get(AudioFile, file_id, with_for_update=True)
            if row is None:
                raise StoreError(f"file id {file_id}", "not in the index")
            text_dim = _text_dim(session)
            new_windows = [_window_row(row.path, window, text_dim) for window in windows]
            _check_unique_indexes(row.path, windows)
            removed = list(session.scalars(select(Window.id).where(Window.file_id == file_id).order_by(Window.id)))
            session.execute(delete(Window).where(Window.file_id == file_id), execution_options=_NO_SYNC)
            for window in new_windows:
                window.file_id = file_id
            session.add_all(new_windows)
            if audio is not None:
                row.duration_s, row.sample_rate = audio.duration_s, audio.sample_rate
                row.channels, row.format = audio.channels, audio.format
            row.status, row.error, row.run_id = "indexed", None, run_id
            row.indexed_at = datetime.now(timezone.utc)
            session.flush()
            return ReplaceResult(removed, [window.id for window in new_windows])

    def prune_missing(self, present: Iterable[str], *, under: str | None = None) -> int:
        """Delete the files below `under` (all when None) whose path is not in `present`; returns how many."""
        keep = set(present)
        with self.session(write=True) as session:
            rows = session.execute(select(AudioFile.id, AudioFile.path).where(_under(under)))
            gone = [file_id for file_id, path in rows if path not in keep]
            for start in range(0, len(gone), _CHUNK):
                chunk = gone[start : start + _CHUNK]
                session.execute(delete(AudioFile).where(AudioFile.id.in_(chunk)), execution_options=_NO_SYNC)
            return len(gone)

    def remove(self, path_or_prefix: str) -> int:
        """Delete one file, or every file below a folder, with all their windows; returns how many files."""
        with self.session(write=True) as session:
            result = session.execute(delete(AudioFile).where(_under(path_or_prefix)), execution_options=_NO_SYNC)
            return result.rowcount

    # -- windows and vectors ---------------------------------------------------------------------------------

    def vector_ids(self, kind: str) -> np.ndarray:
        """Sorted window ids (int64) that have a vector of `kind`: what the FAISS index must hold."""
        _check_kind(kind)
        with self.session() as session:
            ids = session.scalars(
                select(WindowVector.window_id).where(WindowVector.kind == kind).order_by(WindowVector.window_id)
            ).all()
            return np.asarray(ids, dtype=np.int64)

    def vectors(self, kind: str, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(window ids int64 (n,), float32 matrix (n, d)) of `kind`, sorted by id; all, or only `ids`.

        The vectors are as stored (not normalised). An empty result has shape (0, 0).
        """
        _check_kind(kind)
        query = select(WindowVector.window_id, WindowVector.vector).where(WindowVector.kind == kind)
        with self.session() as session:
            if ids is None:
                rows = session.execute(query.order_by(WindowVector.window_id).execution_options(yield_per=5000))
                id_list, blobs = _unzip(rows)
            else:
                id_list, blobs = [], []
                for chunk in _chunks(sorted(set(int(i) for i in ids))):
                    found, chunk_blobs = _unzip(session.execute(query.where(WindowVector.window_id.in_(chunk))))
                    id_list += found
                    blobs += chunk_blobs
                order = np.argsort(np.asarray(id_list, dtype=np.int64), kind="stable")
                id_list, blobs = [id_list[i] for i in order], [blobs[i] for i in order]
        return np.asarray(id_list, dtype=np.int64), _decode_matrix(self.url, kind, blobs)

    def window_details(self, window_ids: Iterable[int]) -> dict[int, WindowDetails]:
        """Details of the given windows for showing search results; ids no longer in the database are left out."""
        wanted = sorted({int(i) for i in window_ids if int(i) >= 0})
        details: dict[int, WindowDetails] = {}
        with self.session() as session:
            for chunk in _chunks(wanted):
                query = (
                    select(Window, AudioFile)
                    .join(AudioFile, Window.file_id == AudioFile.id)
                    .where(Window.id.in_(chunk))
                    .options(selectinload(Window.texts))
                )
                for window, file in session.execute(query):
                    details[window.id] = WindowDetails(
                        window_id=window.id,
                        file_id=file.id,
                        path=file.path,
                        index=window.index,
                        start_s=window.start_s,
                        end_s=window.end_s,
                        file_duration_s=file.duration_s,
                        format=file.format,
                        texts=tuple(TextRecord(t.prompt, t.text, t.score) for t in window.texts),
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
        query = select(Window.id).join(AudioFile, Window.file_id == AudioFile.id).where(_under(under))
        if formats is not None:
            query = query.where(func.lower(AudioFile.format).in_([f.lower() for f in formats]))
        if min_duration_s is not None:
            query = query.where(AudioFile.duration_s >= min_duration_s)
        if max_duration_s is not None:
            query = query.where(AudioFile.duration_s <= max_duration_s)
        with self.session() as session:
            return np.asarray(session.scalars(query.order_by(Window.id)).all(), dtype=np.int64)

    def export_rows(self, under: str | None = None, *, page_size: int = 200) -> Iterator[dict[str, Any]]:
        """One JSON-ready dict per file (ordered by path) with its windows and their texts; vectors left out.

        Reads in pages inside one read transaction, so memory stays flat for large libraries.
        """
        with self.session() as session:
            last_path: str | None = None
            while True:
                query = select(AudioFile).where(_under(under)).order_by(AudioFile.path).limit(page_size)
                if last_path is not None:
                    query = query.where(AudioFile.path > last_path)
                page = session.scalars(query.options(selectinload(AudioFile.windows).selectinload(Window.texts))).all()
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
            return None if row is None else _meta_record(row)

    def set_index_meta(self, model: ModelInfo, embedder: EmbedderInfo) -> None:
        """Record what builds the index; raises StoreMismatchError when it was built with something else."""
        with self.session(write=True) as session:
            row = session.get(IndexMetaRow, 1, with_for_update=True)
            now = datetime.now(timezone.utc)
            if row is None:
                session.add(_meta_row(model, embedder, now))
                return
            self._raise_on_mismatch(_meta_record(row), model, embedder)
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
            session.execute(delete(Window), execution_options=_NO_SYNC)
            files = session.execute(
                update(AudioFile).values(status="pending", error=None, indexed_at=None), execution_options=_NO_SYNC
            ).rowcount
            session.execute(delete(IndexMetaRow), execution_options=_NO_SYNC)
            session.add(_meta_row(model, embedder, datetime.now(timezone.utc)))
            return files

    def _raise_on_mismatch(self, meta: IndexMeta, model: ModelInfo | None, embedder: EmbedderInfo | None) -> None:
        wrong = [
            f"{theirs} but this run uses {ours}"
            for ours, theirs in ((model, meta.model), (embedder, meta.embedder))
            if ours is not None and ours != theirs
        ]
        if wrong:
            raise StoreMismatchError(
                self.url,
                f"the index was built with {meta.model} and {meta.embedder}; {'; '.join(wrong)}. "
                "Pass the model and embedder it was built with (--model), or re-index the library with the new "
                "ones (a full re-index replaces every caption and vector).",
            )

    # -- runs and statistics ---------------------------------------------------------------------------------

    def start_run(self, shard: str | None = None) -> int:
        """Record the start of an indexing run (shard e.g. '2/8'); returns its id."""
        with self.session(write=True) as session:
            run = IndexingRun(started_at=datetime.now(timezone.utc), status="running", shard=shard)
            session.add(run)
            session.flush()
            return run.id

    def finish_run(
        self,
        run_id: int,
        *,
        status: str = "finished",
        files_seen: int = 0,
        files_indexed: int = 0,
        files_failed: int = 0,
        files_pruned: int = 0,
    ) -> None:
        """Record the end of a run: its status ('finished', 'failed' or 'interrupted') and counts."""
        if status not in RUN_STATUSES[1:]:
            raise StoreError(f"run {run_id}", f"unknown final status {status!r}; use one of {RUN_STATUSES[1:]}")
        with self.session(write=True) as session:
            run = session.get(IndexingRun, run_id)
            if run is None:
                raise StoreError(f"run {run_id}", "no such indexing run")
            run.finished_at, run.status = datetime.now(timezone.utc), status
            run.files_seen, run.files_indexed = files_seen, files_indexed
            run.files_failed, run.files_pruned = files_failed, files_pruned

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """The latest runs, newest first."""
        with self.session() as session:
            rows = session.scalars(select(IndexingRun).order_by(IndexingRun.id.desc()).limit(limit))
            return [_run_record(row) for row in rows]

    def stats(self) -> dict[str, Any]:
        """JSON-ready counts: files by status, windows, texts, vectors by kind, audio hours, model, last run."""
        with self.session() as session:
            by_status = dict(session.execute(select(AudioFile.status, func.count()).group_by(AudioFile.status)).all())
            by_kind = dict(session.execute(select(WindowVector.kind, func.count()).group_by(WindowVector.kind)).all())
            duration = session.scalar(select(func.sum(AudioFile.duration_s)).where(AudioFile.status == "indexed"))
            meta = session.get(IndexMetaRow, 1)
            last_run = session.scalars(select(IndexingRun).order_by(IndexingRun.id.desc()).limit(1)).first()
            from alembic.runtime.migration import MigrationContext

            revision = MigrationContext.configure(session.connection()).get_current_revision()
            return {
                "database": self.url,
                "schema_revision": revision,
                "files": {"total": sum(by_status.values()), **{s: by_status.get(s, 0) for s in FILE_STATUSES}},
                "windows": session.scalar(select(func.count()).select_from(Window)),
                "texts": session.scalar(select(func.count()).select_from(GeneratedText)),
                "vectors": {kind: by_kind.get(kind, 0) for kind in VECTOR_KINDS},
                "indexed_audio_s": float(duration or 0.0),
                "model": None if meta is None else _meta_json(_meta_record(meta)),
                "last_run": None if last_run is None else _run_json(_run_record(last_run)),
            }


# ---------------------------------------------------------------------------------------------------------------
# Helpers

_NO_SYNC = {"synchronize_session": False}  # bulk statements: the session holds no rows they could make stale


def _check_kind(kind: str) -> None:
    if kind not in VECTOR_KINDS:
        raise StoreError(f"vector kind {kind!r}", f"unknown; use one of {', '.join(VECTOR_KINDS)}")


def _under(prefix: str | None) -> ColumnElement[bool]:
    """Paths equal to `prefix` or inside the folder `prefix` (case-sensitive on every backend, unlike LIKE)."""
    if prefix is None:
        return true()
    folder = prefix.rstrip("/") + "/"
    if folder == "/":
        return AudioFile.path.startswith("/")
    return or_(AudioFile.path == folder[:-1], func.substr(AudioFile.path, 1, len(folder)) == folder)


def _chunks(values: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _unzip(rows: Iterable[Any]) -> tuple[list[int], list[bytes]]:
    ids: list[int] = []
    blobs: list[bytes] = []
    for window_id, blob in rows:
        ids.append(window_id)
        blobs.append(blob)
    return ids, blobs


def _text_dim(session: Session) -> int | None:
    row = session.get(IndexMetaRow, 1)
    return None if row is None else row.embedder_dim


def _file_for_update(session: Session, path: str) -> AudioFile | None:
    return session.scalars(select(AudioFile).where(AudioFile.path == path).with_for_update()).one_or_none()


def _encode_vector(where: str, kind: str, vector: np.ndarray, text_dim: int | None) -> bytes:
    _check_kind(kind)
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise StoreError(where, f"{kind} vector must be 1-D and non-empty, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise StoreError(where, f"{kind} vector has NaN or infinite values")
    if kind == "text" and text_dim is not None and array.size != text_dim:
        raise StoreError(where, f"text vector has {array.size} dimensions but the index embedder has {text_dim}")
    return array.astype("<f4", copy=False).tobytes()


def _decode_matrix(where: str, kind: str, blobs: list[bytes]) -> np.ndarray:
    if not blobs:
        return np.empty((0, 0), dtype=np.float32)
    sizes = {len(blob) for blob in blobs}
    if len(sizes) != 1:
        dims = sorted(size // 4 for size in sizes)
        raise StoreError(where, f"{kind} vectors have mixed dimensions {dims}; re-index the library")
    dim = sizes.pop() // 4
    return np.frombuffer(b"".join(blobs), dtype="<f4").astype(np.float32).reshape(len(blobs), dim)


def _window_row(path: str, window: WindowInput, text_dim: int | None) -> Window:
    where = f"{path} window {window.index}"
    if not (0 <= window.start_s <= window.end_s):
        raise StoreError(where, f"bad time span {window.start_s}..{window.end_s} s")
    return Window(
        index=window.index,
        start_s=float(window.start_s),
        end_s=float(window.end_s),
        texts=[GeneratedText(prompt=t.prompt, text=t.text, score=t.score) for t in window.texts],
        vectors=[
            WindowVector(kind=kind, vector=_encode_vector(where, kind, vector, text_dim))
            for kind, vector in window.vectors.items()
        ],
    )


def _check_unique_indexes(path: str, windows: Sequence[WindowInput]) -> None:
    indexes = [window.index for window in windows]
    if len(set(indexes)) != len(indexes):
        raise StoreError(path, f"window indexes repeat: {sorted(indexes)}")


def _file_record(row: AudioFile) -> FileRecord:
    return FileRecord(
        id=row.id,
        path=row.path,
        size=row.size,
        mtime=row.mtime,
        content_hash=row.content_hash,
        duration_s=row.duration_s,
        sample_rate=row.sample_rate,
        channels=row.channels,
        format=row.format,
        status=row.status,
        error=row.error,
        indexed_at=row.indexed_at,
        run_id=row.run_id,
    )


def _export_row(row: AudioFile) -> dict[str, Any]:
    record = _file_record(row)
    data = {name: getattr(record, name) for name in record.__dataclass_fields__ if name not in ("id", "run_id")}
    data["indexed_at"] = None if record.indexed_at is None else record.indexed_at.isoformat()
    data["windows"] = [
        {
            "index": window.index,
            "start_s": window.start_s,
            "end_s": window.end_s,
            "texts": [{"prompt": t.prompt, "text": t.text, "score": t.score} for t in window.texts],
        }
        for window in row.windows
    ]
    return data


def _meta_row(model: ModelInfo, embedder: EmbedderInfo, now: datetime) -> IndexMetaRow:
    return IndexMetaRow(
        id=1,
        model_name=model.name,
        model_fingerprint=model.fingerprint,
        embedder_name=embedder.name,
        embedder_dim=embedder.dim,
        created_at=now,
        updated_at=now,
    )


def _meta_record(row: IndexMetaRow) -> IndexMeta:
    return IndexMeta(
        model=ModelInfo(row.model_name, row.model_fingerprint),
        embedder=EmbedderInfo(row.embedder_name, row.embedder_dim),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _meta_json(meta: IndexMeta) -> dict[str, Any]:
    return {
        "model": meta.model.name,
        "model_fingerprint": meta.model.fingerprint,
        "embedder": meta.embedder.name,
        "embedder_dim": meta.embedder.dim,
        "created_at": meta.created_at.isoformat(),
        "updated_at": meta.updated_at.isoformat(),
    }


def _run_record(row: IndexingRun) -> RunRecord:
    return RunRecord(
        id=row.id,
        started_at=row.started_at,
        finished_at=row.finished_at,
        status=row.status,
        files_seen=row.files_seen,
        files_indexed=row.files_indexed,
        files_failed=row.files_failed,
        files_pruned=row.files_pruned,
        shard=row.shard,
    )


def _run_json(run: RunRecord) -> dict[str, Any]:
    data = {name: getattr(run, name) for name in run.__dataclass_fields__}
    data["started_at"] = run.started_at.isoformat()
    data["finished_at"] = None if run.finished_at is None else run.finished_at.isoformat()
    return data

"""The tables, as SQLAlchemy ORM classes (one `...Row` class per table).

The schema is created and changed only by the Alembic migrations in the `migrations` package; a test checks that
these classes and the migrations agree. Nothing outside `pengi_search.db` sees these rows: the store hands out the
records of `pengi_search.db.records` instead (`to_record`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar, get_args, get_origin

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from ..pathnames import from_stored, to_stored
from .records import (
    FILE_STATUSES,
    RUN_STATUSES,
    VECTOR_KINDS,
    EmbedderInfo,
    FileRecord,
    IndexMeta,
    ModelInfo,
    RunRecord,
    TextRecord,
    VectorIndexInfo,
)

R = TypeVar("R")  # a record dataclass of `records`

RowId = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER is what makes a SQLite rowid alias

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PATH_PATTERN_INDEX = "ix_audio_files_path_pattern"
POSTGRESQL_ONLY_INDEXES = frozenset({PATH_PATTERN_INDEX})  # made by the migrations on PostgreSQL alone (`ddl_if`)


def in_schema_of(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """Alembic's `include_object` for a database of `dialect`: the models' indexes that only PostgreSQL has are
    left out of the comparison with another database, where no migration made them."""

    def included(_object: Any, name: str | None, type_: str, _reflected: bool, _compare_to: Any) -> bool:
        return dialect == "postgresql" or not (type_ == "index" and name in POSTGRESQL_ONLY_INDEXES)

    return included


def one_of(column: str, values: Sequence[str]) -> CheckConstraint:
    """The check, named after `column`, that it holds one of `values` (the tuples of `records`, so that the values
    the database allows and those the code uses have one home)."""
    listed = ", ".join(f"'{value}'" for value in values)  # plain words, which need no escape in a SQL literal
    return CheckConstraint(f"{column} IN ({listed})", name=column)


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


class OsText(TypeDecorator[str]):
    """Text that may hold file names as the OS gives them (lone surrogates for bytes that are not UTF-8).

    Database drivers refuse lone surrogates; they are stored escaped (`pengi_search.pathnames.to_stored`), every
    other text unchanged. Values compared with such a column in a query go through the same escape, and the escape
    keeps prefixes, so equality, ordering by path and prefix tests work on the stored form.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else to_stored(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else from_stored(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RecordRow(Generic[R]):
    """A row that the store hands out as the record dataclass `R` (`to_record`): a table's class names its record
    as the type argument, `class RunRow(Base, RecordRow[RunRecord])`."""

    _record_type: type[R]  # R itself, for `to_record` to build (a type parameter is gone at run time)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The record type is written once, as the type argument, which Python keeps in `__orig_bases__`.
        for base in cls.__dict__.get("__orig_bases__", ()):
            if get_origin(base) is RecordRow:
                (cls._record_type,) = get_args(base)

    def to_record(self) -> R:
        """The row as its record: each field from the row's attribute of the same name, unless `_stored_otherwise`
        gives it."""
        values = self._stored_otherwise()
        names = [field.name for field in dataclasses.fields(self._record_type) if field.name not in values]
        return self._record_type(**{name: getattr(self, name) for name in names}, **values)

    def _stored_otherwise(self) -> dict[str, Any]:
        """The record's fields that the row holds otherwise than in an attribute of the same name: none here."""
        return {}


class RunRow(Base, RecordRow[RunRecord]):
    """One run of the indexer (or one shard of a run)."""

    __tablename__ = "runs"
    __table_args__ = (one_of("status", RUN_STATUSES),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16))
    files_seen: Mapped[int] = mapped_column(Integer, default=0)
    files_indexed: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    files_pruned: Mapped[int] = mapped_column(Integer, default=0)
    shard: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(255))  # revision 0003: who runs it, for "waiting for run N"
    pid: Mapped[int | None] = mapped_column(Integer)


class AudioFileRow(Base, RecordRow[FileRecord]):
    """One audio file: its stamp (size, mtime, content hash), decoded properties and indexing status."""

    __tablename__ = "audio_files"
    # AUTOINCREMENT (revision 0007): SQLite must never hand a removed file's id to a new one, or a page or script
    # holding `/api/files/ID` (or a hit's `file_id`) would name another file.
    __table_args__ = (
        one_of("status", FILE_STATUSES),
        # revision 0008: "the files below a folder" as a byte-wise range on PostgreSQL (`queries.paths_under`),
        # where the unique index orders by the database's collation; SQLite's unique index is byte-wise already.
        Index(PATH_PATTERN_INDEX, "path", postgresql_ops={"path": "text_pattern_ops"}).ddl_if(dialect="postgresql"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    path: Mapped[str] = mapped_column(OsText, unique=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime: Mapped[float | None] = mapped_column(Double)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # sha256 hex, revision 0002
    duration_s: Mapped[float | None] = mapped_column(Double)
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    channels: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    error: Mapped[str | None] = mapped_column(OsText)  # the reason when status is 'error', else notes (see records)
    indexed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    run_id: Mapped[int | None] = mapped_column(RowId, ForeignKey("runs.id", ondelete="SET NULL"))

    windows: Mapped[list[WindowRow]] = relationship(
        back_populates="file", cascade="all, delete-orphan", passive_deletes=True, order_by="WindowRow.index"
    )

    def _stored_otherwise(self) -> dict[str, Any]:
        # One column holds both, the status tells which: the reason a file failed, or an indexed file's notes.
        failed = self.status == "error"
        return {"error": self.error if failed else None, "notes": None if failed else self.error}


class WindowRow(Base):
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

    file: Mapped[AudioFileRow] = relationship(back_populates="windows")
    texts: Mapped[list[GeneratedTextRow]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="GeneratedTextRow.id"
    )
    vectors: Mapped[list[WindowVectorRow]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class GeneratedTextRow(Base, RecordRow[TextRecord]):
    """What Pengi wrote for a window in answer to one prompt."""

    __tablename__ = "generated_texts"
    # revision 0006: `caption_modes` counts the windows of each mode from this index alone, in its order (no sort)
    __table_args__ = (Index("ix_generated_texts_mode_window_id", "mode", "window_id"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    window_id: Mapped[int] = mapped_column(RowId, ForeignKey("windows.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Double)
    mode: Mapped[str | None] = mapped_column(String(32))  # revision 0004: "exact" or the --fast mode; NULL: unknown
    # revision 0005: the --beam, --max-len and --stop it was decoded with, "beam=3 max_len=30 stop=both"; NULL: unknown
    decoding: Mapped[str | None] = mapped_column(String(64))

    @classmethod
    def of(cls, text: TextRecord, **values: Any) -> GeneratedTextRow:
        """The row of `text` (`values`: e.g. the window it belongs to)."""
        return cls(
            prompt=text.prompt, text=text.text, score=text.score, mode=text.mode, decoding=text.decoding, **values
        )


class WindowVectorRow(Base):
    """An embedding of a window as little-endian float32 bytes: 'text' (of its caption) or 'audio'."""

    __tablename__ = "window_vectors"
    __table_args__ = (
        one_of("kind", VECTOR_KINDS),
        Index("ix_window_vectors_kind_window_id", "kind", "window_id"),  # id lists per kind from the index alone
    )

    window_id: Mapped[int] = mapped_column(RowId, ForeignKey("windows.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class VectorVersionRow(Base):
    """Per vector kind, the version of its vectors (revision 0006): a new random number in every transaction that
    changes them (`queries.vectors_changed`). A FAISS file saved with the version the database is at holds exactly
    its vectors; random rather than counted, so that a database restored from a backup, which then changes
    otherwise, cannot come back to a version a FAISS file was saved with."""

    __tablename__ = "vector_versions"
    __table_args__ = (one_of("kind", VECTOR_KINDS),)

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class IndexMetaRow(Base, RecordRow[IndexMeta]):
    """The single row naming the model and text embedder that built the index."""

    __tablename__ = "index_meta"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(Text)
    model_fingerprint: Mapped[str] = mapped_column(String(128))
    embedder_name: Mapped[str] = mapped_column(Text)
    embedder_dim: Mapped[int] = mapped_column(Integer)
    # Set once, kept by a re-index: it tells this library's FAISS files from those of one deleted before it.
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    @classmethod
    def create(cls, model: ModelInfo, embedder: EmbedderInfo, now: datetime) -> IndexMetaRow:
        """The row for an index built from now on with `model` and `embedder`."""
        row = cls(id=1, created_at=now)
        row.record(model, embedder, now)
        return row

    def record(self, model: ModelInfo, embedder: EmbedderInfo, now: datetime) -> None:
        """Record that the index is built from now on with `model` and `embedder`."""
        self.model_name, self.model_fingerprint = model.name, model.fingerprint
        self.embedder_name, self.embedder_dim = embedder.name, embedder.dim
        self.updated_at = now

    def _stored_otherwise(self) -> dict[str, Any]:
        return {
            "model": ModelInfo(self.model_name, self.model_fingerprint),
            "embedder": EmbedderInfo(self.embedder_name, self.embedder_dim),
        }


class VectorIndexRow(Base, RecordRow[VectorIndexInfo]):
    """What the FAISS index of one vector kind is: the type asked for, the type built and its parameters (0003)."""

    __tablename__ = "vector_indexes"
    __table_args__ = (one_of("kind", VECTOR_KINDS),)

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    requested_type: Mapped[str] = mapped_column(String(16))
    effective_type: Mapped[str | None] = mapped_column(String(16))  # None: no vectors, nothing built
    params: Mapped[str | None] = mapped_column(Text)  # JSON of the built index's parameters
    vectors: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    def _stored_otherwise(self) -> dict[str, Any]:
        return {"params": json.loads(self.params) if self.params else {}}

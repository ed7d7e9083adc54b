"""What the store's modules share below the level of `Store`'s methods: the conditions "at or below a path" (and the
byte-wise ranges it joins), "after a path" and "truncated", the order by path (byte-wise on every backend), a file's
row locked for writing, the width of the index's text vectors, vectors as the bytes the database keeps, the new
version of vectors changed, and how many ids one statement lists.
"""

from __future__ import annotations

import operator
import secrets
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy import Boolean, ColumnElement, or_, select, true, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import Grouping
from sqlalchemy.sql.visitors import InternalTraversal

from .errors import RefusedInputError, StoreError
from .records import TRUNCATED_NOTE, check_vector_kind, non_finite_vector
from .schema import AudioFileRow, IndexMetaRow, VectorVersionRow

IDS_PER_QUERY = 500  # ids per IN (...) list: far below SQLite's limit on bound parameters
NO_SYNC = {"synchronize_session": False}  # bulk statements: the session holds no rows they could make stale


def paths_under(prefix: str | None) -> ColumnElement[bool]:
    """Paths equal to `prefix` or inside the folder `prefix` (case-sensitive on every backend, unlike LIKE)."""
    ranges = path_ranges(prefix)
    # In parentheses: the statement may join it to others by AND, which binds tighter than its OR.
    return ranges[0] if len(ranges) == 1 else Grouping(or_(*ranges))


def path_ranges(prefix: str | None) -> list[ColumnElement[bool]]:
    """`paths_under(prefix)` as the byte-wise ranges it joins, in `by_path`'s order: the path `prefix` itself (but
    '/'), then the paths inside the folder. A listing pages through each in turn: each is one range of revision
    0008's index on PostgreSQL, where their OR bounds no search of it (a page is a scan of the index that filters
    out the paths around the folder, or the rest of the folder found and sorted again)."""
    if prefix is None:
        return [true()]
    folder = prefix.rstrip("/") + "/"
    inside = _inside(folder)
    return [inside] if folder == "/" else [AudioFileRow.path == folder[:-1], inside]


def _inside(folder: str) -> ColumnElement[bool]:
    """The paths inside `folder` (which ends in '/'): the byte-wise range [`folder`, `folder0`)."""
    # '0' is the byte after '/': a search of an index, not a scan of the table (`eval` asks this for every file of
    # its set). The escape keeps prefixes and order of valid names alike, so the stored forms that `OsText` binds
    # bound the same range. A range rather than LIKE, which has no wildcard to escape and, on PostgreSQL, stays a
    # search in the generic plan of a prepared statement (psycopg prepares a statement run often), where LIKE's
    # pattern is unknown and the index of no use. In parentheses, as one condition wherever it is joined.
    end = folder[:-1] + "0"
    forms = (_byte_wise(backend, ">=")(folder) & _byte_wise(backend, "<")(end) for backend in _BACKENDS)
    return _PerBackend(*(Grouping(form) for form in forms))


def paths_after(path: str) -> ColumnElement[bool]:
    """Paths after `path` in `by_path`'s order: the next page of a listing whose last page ended at `path`."""
    return _PerBackend(*(_byte_wise(backend, ">")(path) for backend in _BACKENDS))


def by_path() -> ColumnElement[str]:
    """An ORDER BY term: paths in byte order (SQLite's) on every backend, whatever the collation of a PostgreSQL
    database (en-US puts `Ä` beside `A`, and `Dogs` beside `dogs`)."""
    return _PathOrder()


_BACKENDS = ("sqlite", "postgresql")  # the order of `_PerBackend`'s forms


def _byte_wise(backend: str, comparison: str) -> Callable[[str], ColumnElement[bool]]:
    """`path <comparison> value` comparing bytes, as `backend` writes it. SQLite compares text as bytes (BINARY):
    its own operators, on the unique path index. PostgreSQL compares text by the database's collation, where '/'
    need not sort before '0': its pattern operators (`~<~`, `~>=~`, ...) compare bytes, on revision 0008's index."""
    if backend == "sqlite":
        return partial(_SQL_COMPARISONS[comparison], AudioFileRow.path)
    return AudioFileRow.path.op(f"~{comparison}~", is_comparison=True)


_SQL_COMPARISONS = {"<": operator.lt, ">=": operator.ge, ">": operator.gt}


class _PerBackend(ColumnElement[bool]):
    """A condition on paths written one way for SQLite and another for PostgreSQL, values in bound parameters, so
    that statements are cached whatever the values; each backend compiles its own (below)."""

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a condition in itself: no "= 1" after it on SQLite
    _traverse_internals = [("sqlite_form", InternalTraversal.dp_clauseelement)]
    _traverse_internals += [("postgresql_form", InternalTraversal.dp_clauseelement)]

    def __init__(self, sqlite_form: ColumnElement[bool], postgresql_form: ColumnElement[bool]) -> None:
        self.sqlite_form = sqlite_form
        self.postgresql_form = postgresql_form


@compiles(_PerBackend, "sqlite")
def _sqlite_form(element: _PerBackend, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.sqlite_form, **kw)


@compiles(_PerBackend)
def _postgresql_form(element: _PerBackend, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.postgresql_form, **kw)


class _PathOrder(ColumnElement[str]):
    """`by_path`: the path column, ordered on PostgreSQL by its pattern operator (below)."""

    type = AudioFileRow.path.type
    inherit_cache = True
    _traverse_internals: list[tuple[str, Any]] = []  # nothing varies: one cache entry


@compiles(_PathOrder, "sqlite")
def _sqlite_order(element: _PathOrder, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(AudioFileRow.path, **kw)


@compiles(_PathOrder)
def _postgresql_order(element: _PathOrder, compiler: SQLCompiler, **kw: Any) -> str:
    # The order of the pattern operators, by which revision 0008's index holds the paths: a page of a listing is
    # read from the index, where `COLLATE "C"` (the same order) would sort the whole table, no index serving it.
    return f"{compiler.process(AudioFileRow.path, **kw)} USING ~<~"


def is_truncated() -> ColumnElement[bool]:
    """Indexed files that decode shorter than their header says (their notes start "truncated: ...")."""
    return (AudioFileRow.status == "indexed") & AudioFileRow.error.startswith(TRUNCATED_NOTE, autoescape=True)


def file_for_update(session: Session, path: str) -> AudioFileRow | None:
    """The file recorded at `path`, locked until the transaction ends; None when there is none."""
    return session.scalars(select(AudioFileRow).where(AudioFileRow.path == path).with_for_update()).one_or_none()


def vectors_changed(session: Session, kinds: Iterable[str]) -> None:
    """Give the vectors of `kinds` a new version (`schema.VectorVersionRow`), in the transaction that changed them:
    it is seen with the change or not at all, and one that rolls back leaves the version as it was. Call it last
    in the transaction: on PostgreSQL the row stays locked until the commit, so concurrent writers wait on it
    only for that long, and each locks the kinds in the same order (no deadlock)."""
    for kind in sorted(set(kinds)):
        check_vector_kind(kind)
        new = update(VectorVersionRow).where(VectorVersionRow.kind == kind).values(version=secrets.randbits(63))
        session.execute(new, execution_options=NO_SYNC)


def text_vector_dim(session: Session) -> int | None:
    """The width of the index's text vectors (its text embedder's), None before the index has one."""
    row = session.get(IndexMetaRow, 1)
    return None if row is None else row.embedder_dim


def encode_vector(where: str, kind: str, vector: np.ndarray, text_dim: int | None) -> bytes:
    """A 1-D finite vector as little-endian float32 bytes; a text vector must be `text_dim` wide (when known)."""
    check_vector_kind(kind)
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise RefusedInputError(where, f"{kind} vector must be 1-D and non-empty, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise RefusedInputError(where, non_finite_vector(kind))
    if kind == "text" and text_dim is not None and array.size != text_dim:
        raise RefusedInputError(where, f"text vector has {array.size} dimensions but the index embedder has {text_dim}")
    return array.astype("<f4", copy=False).tobytes()


def decode_matrix(where: str, kind: str, blobs: list[bytes]) -> np.ndarray:
    """Stored vectors back as one (n, d) float32 matrix; vectors of different widths are a StoreError."""
    if not blobs:
        return np.empty((0, 0), dtype=np.float32)
    sizes = {len(blob) for blob in blobs}
    if len(sizes) != 1:
        raise mixed_dimensions(where, kind, {size // 4 for size in sizes})
    dim = sizes.pop() // 4
    # Joined into a bytearray, whose buffer numpy may write: no second copy to make the matrix writable.
    return np.frombuffer(bytearray().join(blobs), dtype="<f4").astype(np.float32, copy=False).reshape(len(blobs), dim)


def mixed_dimensions(where: str, kind: str, dims: set[int]) -> StoreError:
    """Stored vectors of one kind that are not all as wide: a library written by two embedders."""
    return StoreError(where, f"{kind} vectors have mixed dimensions {sorted(dims)}; re-index the library")

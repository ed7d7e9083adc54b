"""What the store's modules share below the level of `Store`'s methods: the conditions "at or below a path" and
"truncated", a file's row locked for writing, the width of the index's text vectors, vectors as the bytes the
database keeps, the new version of vectors changed, and how many ids one statement lists.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from sqlalchemy import Boolean, ColumnElement, or_, select, true, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from .errors import RefusedInputError, StoreError
from .records import TRUNCATED_NOTE, check_vector_kind, non_finite_vector
from .schema import AudioFileRow, IndexMetaRow, VectorVersionRow

IDS_PER_QUERY = 500  # ids per IN (...) list: far below SQLite's limit on bound parameters
NO_SYNC = {"synchronize_session": False}  # bulk statements: the session holds no rows they could make stale


def paths_under(prefix: str | None) -> ColumnElement[bool]:
    """Paths equal to `prefix` or inside the folder `prefix` (case-sensitive on every backend, unlike LIKE)."""
    return true() if prefix is None else _PathsUnder(prefix.rstrip("/") + "/")


class _PathsUnder(ColumnElement[bool]):
    """`paths_under` a folder (its name ends in '/'): both backends' forms are built, with the folder in bound
    parameters, so that statements are cached whatever the folder; each backend compiles its own (below)."""

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a condition in itself: no "= 1" after it on SQLite
    _traverse_internals = [("sqlite_range", InternalTraversal.dp_clauseelement)]
    _traverse_internals += [("postgresql_range", InternalTraversal.dp_clauseelement)]

    def __init__(self, folder: str) -> None:
        path = AudioFileRow.path
        # The paths inside `folder/` are the byte-wise range [`folder/`, `folder0`) ('0' is the byte after '/'): a
        # search of an index, not a scan of the table (`eval` asks this for every file of its set). The escape keeps
        # prefixes and order of valid names alike, so the stored forms that `OsText` binds bound the same range.
        # SQLite compares text as bytes (BINARY): its own operators, on the unique path index.
        self.sqlite_range = _at_or_inside(folder, path.__ge__, path.__lt__)
        # PostgreSQL compares text by the database's collation, where '/' need not sort before '0': the pattern
        # operators compare bytes, on the index of revision 0008. A range rather than LIKE, which has no wildcard
        # to escape and stays a search in the generic plan of a prepared statement (psycopg prepares a statement
        # run often), where LIKE's pattern is unknown and the index of no use.
        at_least, below = (path.op(operator, is_comparison=True) for operator in ("~>=~", "~<~"))
        self.postgresql_range = _at_or_inside(folder, at_least, below)


def _at_or_inside(
    folder: str, at_least: Callable[[str], ColumnElement[bool]], below: Callable[[str], ColumnElement[bool]]
) -> ColumnElement[bool]:
    """The path `folder` (but '/') or a path inside it, where `at_least` and `below` compare paths byte-wise."""
    inside = at_least(folder) & below(folder[:-1] + "0")
    return inside if folder == "/" else or_(AudioFileRow.path == folder[:-1], inside)


@compiles(_PathsUnder, "sqlite")
def _path_range(element: _PathsUnder, compiler: SQLCompiler, **kw: Any) -> str:
    return _grouped(compiler, element.sqlite_range, **kw)


@compiles(_PathsUnder)
def _path_pattern_range(element: _PathsUnder, compiler: SQLCompiler, **kw: Any) -> str:
    return _grouped(compiler, element.postgresql_range, **kw)


def _grouped(compiler: SQLCompiler, condition: ColumnElement[bool], **kw: Any) -> str:
    """`condition` in parentheses: the statement may join it to others by AND, which binds tighter than its OR."""
    return f"({compiler.process(condition, **kw)})"


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

"""The read-only questions the server asks the database that `Store`'s methods do not answer.

Each is one short read transaction returning plain values (never ORM objects), like `Store`'s own methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import func, select, text

from ..db import FileRecord, Store
from ..db.schema import AudioFileRow, WindowRow, WindowVectorRow


def file_by_id(store: Store, file_id: int) -> FileRecord | None:
    """The file with this id, or None."""
    return files_by_id(store, [file_id]).get(file_id)


def files_by_id(store: Store, file_ids: Sequence[int]) -> dict[int, FileRecord]:
    """The files with these ids (a page of hits' files), by id; an unknown id is left out."""
    with store.session() as session:
        rows = session.scalars(select(AudioFileRow).where(AudioFileRow.id.in_(file_ids)))
        return {row.id: row.to_record() for row in rows}


def newest_window_id(store: Store) -> int:
    """The highest window id (0 when there is none). Window ids are never reused, so a new one means an addition."""
    with store.session() as session:
        return int(session.scalar(select(func.max(WindowRow.id))) or 0)


def highest_file_id(store: Store) -> int:
    """The highest id a file was ever given (0 before the first): an id up to it that names no file named one that
    is gone since (moved or removed; a file indexed again keeps its id)."""
    return _highest_id_given(store, AudioFileRow)


def highest_window_id(store: Store) -> int:
    """The highest id a window was ever given (0 before the first): an id up to it that names no window named one
    that is gone since (its file indexed again, moved or removed)."""
    return _highest_id_given(store, WindowRow)


def _highest_id_given(store: Store, table: type[AudioFileRow | WindowRow]) -> int:
    """The highest id `table` ever gave a row (0 before its first). Its ids are never given again (SQLite's
    AUTOINCREMENT, PostgreSQL's sequence), so this counts the ids of rows removed since too, where the highest id
    there now does not. Where the counter cannot be read (a PostgreSQL role without rights on the sequence), the
    highest id there now."""
    with store.session() as session:
        present = session.scalar(select(func.max(table.id)))
        given = session.scalar(_ID_COUNTERS[session.get_bind().dialect.name], {"table": table.__tablename__})
    return max(int(present or 0), int(given or 0))


_ID_COUNTERS = {  # by dialect: the highest id a table's counter gave, NULL when it gave none (or cannot be read)
    "sqlite": text("SELECT seq FROM sqlite_sequence WHERE name = :table"),
    "postgresql": text(
        "SELECT CASE WHEN has_sequence_privilege(seq, 'SELECT') THEN pg_sequence_last_value(seq) END "
        "FROM (SELECT CAST(pg_get_serial_sequence(:table, 'id') AS regclass) AS seq) AS counter"
    ),
}


def vector_ids_after(store: Store, kind: str, after: int) -> np.ndarray:
    """Sorted ids (int64) above `after` of the windows that have a vector of `kind`: what was added since."""
    query = (
        select(WindowVectorRow.window_id)
        .where(WindowVectorRow.kind == kind, WindowVectorRow.window_id > after)
        .order_by(WindowVectorRow.window_id)
    )
    with store.session() as session:
        return np.asarray(session.scalars(query).all(), dtype=np.int64)

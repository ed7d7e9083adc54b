"""The read-only questions the server asks the database that `Store`'s methods do not answer.

Each is one short read transaction returning plain values (never ORM objects), like `Store`'s own methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import func, select

from ..db import FileRecord, Store, WindowDetails
from ..db.schema import AudioFileRow, WindowRow, WindowVectorRow


def file_by_id(store: Store, file_id: int) -> FileRecord | None:
    """The file with this id, or None."""
    return files_by_id(store, [file_id]).get(file_id)


def files_by_id(store: Store, file_ids: Sequence[int]) -> dict[int, FileRecord]:
    """The files with these ids (a page of hits' files), by id; an unknown id is left out."""
    with store.session() as session:
        rows = session.scalars(select(AudioFileRow).where(AudioFileRow.id.in_(file_ids)))
        return {row.id: row.to_record() for row in rows}


def file_windows(store: Store, record: FileRecord) -> list[WindowDetails]:
    """The windows of a file, in time order, with what Pengi wrote for each."""
    details = store.window_details(store.filter_window_ids(under=record.path))
    return sorted((d for d in details.values() if d.file_id == record.id), key=lambda d: d.index)


def newest_window_id(store: Store) -> int:
    """The highest window id (0 when there is none). Window ids are never reused, so a new one means an addition."""
    with store.session() as session:
        return int(session.scalar(select(func.max(WindowRow.id))) or 0)


def newest_file_id(store: Store) -> int:
    """The highest file id (0 when there is none): a file's id is kept while it is indexed again, and a new file
    takes one past the highest, so an id below it that names no file named one that is gone."""
    with store.session() as session:
        return int(session.scalar(select(func.max(AudioFileRow.id))) or 0)


def vector_ids_after(store: Store, kind: str, after: int) -> np.ndarray:
    """Sorted ids (int64) above `after` of the windows that have a vector of `kind`: what was added since."""
    query = (
        select(WindowVectorRow.window_id)
        .where(WindowVectorRow.kind == kind, WindowVectorRow.window_id > after)
        .order_by(WindowVectorRow.window_id)
    )
    with store.session() as session:
        return np.asarray(session.scalars(query).all(), dtype=np.int64)

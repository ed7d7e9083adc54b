"""What the store records about how its index is built: the model and text embedder that built it (a run or a query
with others is refused, until a full re-index starts over with them) and, per kind of vector, the FAISS index type
asked for and the one built, with its parameters (`--index-type`, kept for later runs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..chunking import chunked
from .errors import BuiltWithOtherError
from .queries import IDS_PER_QUERY, NO_SYNC, vectors_changed
from .records import VECTOR_KINDS, EmbedderInfo, IndexMeta, ModelInfo, VectorIndexInfo, check_vector_kind
from .schema import AudioFileRow, IndexMetaRow, VectorIndexRow, WindowRow


class IndexBuild:
    """The index-building methods of `Store` (mixed in; each is one short transaction of the store's `session`)."""

    name: str
    session: Callable[..., AbstractContextManager[Session]]

    # -- model and embedder ----------------------------------------------------------------------------------

    def index_meta(self) -> IndexMeta | None:
        """The model and text embedder the index was built with; None before anything was indexed."""
        with self.session() as session:
            row = session.get(IndexMetaRow, 1)
            return None if row is None else row.to_record()

    def set_index_meta(self, model: ModelInfo, embedder: EmbedderInfo) -> None:
        """Record what builds the index; raises BuiltWithOtherError (a StoreMismatchError) when it was built with
        something else."""
        with self.session(write=True) as session:
            row = session.get(IndexMetaRow, 1, with_for_update=True)
            now = datetime.now(timezone.utc)
            if row is None:
                session.add(IndexMetaRow.create(model, embedder, now))
                return
            self._raise_on_mismatch(row.to_record(), model, embedder)
            row.updated_at = now

    def check_compatible(self, model: ModelInfo | None, embedder: EmbedderInfo | None) -> None:
        """Raise BuiltWithOtherError (a StoreMismatchError) unless the index was built with this model and embedder.

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
            forgotten = session.execute(delete(WindowRow), execution_options=NO_SYNC).rowcount
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
            vectors_changed(session, VECTOR_KINDS if forgotten else ())
            return files

    def forget_windows(self, paths: Sequence[str]) -> int:
        """Forget the windows, texts and vectors of the files at `paths` and mark them 'pending', in one transaction:
        a --reindex with the library's own model redoes these and leaves its other files as they are. Returns how
        many files there were."""
        with self.session(write=True) as session:
            files = forgotten = 0
            for chunk in chunked(paths, IDS_PER_QUERY):
                ids = select(AudioFileRow.id).where(AudioFileRow.path.in_(chunk))
                statement = delete(WindowRow).where(WindowRow.file_id.in_(ids))
                forgotten += session.execute(statement, execution_options=NO_SYNC).rowcount
                pending = update(AudioFileRow).where(AudioFileRow.path.in_(chunk))
                pending = pending.values(status="pending", error=None, indexed_at=None)
                files += session.execute(pending, execution_options=NO_SYNC).rowcount
            vectors_changed(session, VECTOR_KINDS if forgotten else ())
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
            row.params = json.dumps(params, sort_keys=True) if params else None
            row.vectors, row.updated_at = vectors, datetime.now(timezone.utc)

    def _raise_on_mismatch(self, meta: IndexMeta, model: ModelInfo | None, embedder: EmbedderInfo | None) -> None:
        """Raise BuiltWithOtherError naming what differs (None: a part not compared), once each."""
        pairs = ((meta.model, model), (meta.embedder, embedder))
        differ = [(str(theirs), str(ours)) for theirs, ours in pairs if ours not in (None, theirs)]
        if differ:
            built, uses = (" and ".join(side) for side in zip(*differ, strict=True))
            raise BuiltWithOtherError(self.name, built, uses)

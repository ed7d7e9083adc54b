"""A library: the store (the source of truth) and its FAISS indexes, kept in line with it.

There is one FAISS file per vector kind ('text': caption embeddings, 'audio': Pengi audio embeddings), next to a
SQLite database (see `pengi_search.db.default_index_path`). Each file's tag records what its vectors came from (the
text embedder or the model) and the index type asked for, so queries use the type that indexing built: an 'ivfpq'
request that fell back to 'flat' on a small library becomes IVF-PQ once the library is large enough.

Opening an index checks its ids against the database; a file that differs is brought in line incrementally (only
the windows added or removed since) when its tag and type still fit, and rebuilt from the stored vectors otherwise
(also when it is missing or damaged). This class is the one place that keeps FAISS in line with the database.
A read-only library (`read_only=True`, the server's) does the same in memory and never writes a FAISS file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from .db import VECTOR_KINDS, Store, StoreError, default_index_path
from .vectors import INDEX_TYPES, IndexParams, VectorIndex, VectorIndexError, effective_type

log = logging.getLogger(__name__)

DEFAULT_INDEX_TYPE = "flat"


class EmptyLibraryError(StoreError):
    """Nothing with vectors of the asked kind has been indexed yet."""


class Library:
    """The store plus its FAISS indexes. Open with `Library.open(db)`; close with `close()` or a `with` block."""

    def __init__(self, store: Store, *, read_only: bool = False) -> None:
        self.store = store
        self.db_url = store.url
        self.read_only = read_only
        self._indexes: dict[str, VectorIndex] = {}

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None) -> Library:
        """Open the library at `db` (a URL or file path; None: `$PENGI_SEARCH_DB`, else the default database)."""
        return cls(Store.open(db))

    def close(self) -> None:
        self._indexes.clear()
        self.store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def index_path(self, kind: str) -> Path:
        """The FAISS file of vectors of `kind` ('text' or 'audio')."""
        return default_index_path(self.db_url, kind)

    def vector_index(self, kind: str) -> VectorIndex:
        """The FAISS index of `kind`, holding exactly the database's vectors of that kind (cached once loaded).

        Raises EmptyLibraryError when the database has no such vectors yet.
        """
        if kind not in self._indexes:
            index = self._in_line(kind, None, rebuild=False)
            if index is None:
                raise EmptyLibraryError(
                    self.db_url, f"no {kind} vectors indexed yet; run `pengi-search index PATH...` first"
                )
            self._indexes[kind] = index
        return self._indexes[kind]

    def sync_vector_indexes(self, index_type: str | None = None) -> None:
        """Bring both FAISS files in line with the database and save them (incrementally where possible).

        `index_type` ('flat', 'hnsw', 'ivfpq') changes the type, which rebuilds; None keeps the type in use.
        """
        for kind in VECTOR_KINDS:
            self._refresh(kind, index_type, rebuild=False)

    def rebuild(self, index_type: str | None = None) -> dict[str, int]:
        """Rebuild both FAISS files from the database's vectors; returns the number of vectors per kind."""
        counts = {}
        for kind in VECTOR_KINDS:
            index = self._refresh(kind, index_type, rebuild=True)
            counts[kind] = 0 if index is None else len(index)
        return counts

    def index_types(self) -> dict[str, str | None]:
        """Per kind, the index type asked for and saved in its FAISS file (None: no file)."""
        types: dict[str, str | None] = {}
        for kind in VECTOR_KINDS:
            _, tag = _load(self.index_path(kind))
            types[kind] = None if tag is None else _requested_type(tag)
        return types

    # -- internals -------------------------------------------------------------------------------------------

    def _refresh(self, kind: str, index_type: str | None, *, rebuild: bool) -> VectorIndex | None:
        self._indexes.pop(kind, None)
        index = self._in_line(kind, index_type, rebuild=rebuild)
        if index is not None:
            self._indexes[kind] = index
        return index

    def _in_line(self, kind: str, index_type: str | None, *, rebuild: bool) -> VectorIndex | None:
        """The saved index of `kind` made equal to the database (and saved if it changed); None when empty."""
        if index_type is not None and index_type not in INDEX_TYPES:
            raise VectorIndexError("index type", f"unknown {index_type!r}; use one of {', '.join(INDEX_TYPES)}")
        path = self.index_path(kind)
        if self.read_only:  # files are replaced atomically: reading one needs no lock
            return self._in_line_locked(kind, path, index_type, rebuild=rebuild)
        with _locked(path):
            return self._in_line_locked(kind, path, index_type, rebuild=rebuild)

    def _in_line_locked(self, kind: str, path: Path, index_type: str | None, *, rebuild: bool) -> VectorIndex | None:
        expected = self.store.vector_ids(kind)
        loaded, stored_tag = _load(path)
        requested = index_type or (_requested_type(stored_tag) if stored_tag else DEFAULT_INDEX_TYPE)
        tag = self._tag(kind, requested)
        fits = (
            loaded is not None
            and not rebuild
            and stored_tag == tag
            and loaded.type == effective_type(requested, len(expected))
        )
        if expected.size == 0:
            self._forget(path, loaded if fits else None, tag)
            return None
        if fits:
            assert loaded is not None
            added, removed = loaded.sync(expected, lambda missing: self.store.vectors(kind, missing))
            if added or removed:
                log.info("vector index %s: %d added, %d removed", path, added, removed)
                self._save(loaded, path, tag)
            return loaded
        ids, vectors = self.store.vectors(kind)
        index = VectorIndex.build(ids, vectors, IndexParams(type=requested))
        log.info("vector index %s rebuilt: %d %s vectors (%s)", path, len(index), kind, index.type)
        self._save(index, path, tag)
        return index

    def _save(self, index: VectorIndex, path: Path, tag: str) -> None:
        if not self.read_only:
            _save(index, path, tag)

    def _forget(self, path: Path, loaded: VectorIndex | None, tag: str) -> None:
        """No vectors of this kind: empty the file (keeping its type) or remove a file that no longer fits."""
        if self.read_only:
            return
        if loaded is not None:
            if len(loaded):
                loaded.remove(loaded.ids())
                _save(loaded, path, tag)
        elif path.exists():
            path.unlink()

    def _tag(self, kind: str, index_type: str) -> str:
        """What the vectors came from (embedder or model) and the index type asked for."""
        meta = self.store.index_meta()
        if meta is None:
            source = ""
        elif kind == "text":
            source = f"{meta.embedder.name}/{meta.embedder.dim}"
        else:
            source = f"{meta.model.name}@{meta.model.fingerprint}"
        return json.dumps({"kind": kind, "source": source, "index_type": index_type}, sort_keys=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the FAISS file while checking and saving it.

    Processes take it in turn, each reading the database after the previous one saved, so the file on disk never
    goes back to an older state of the database. Where no lock can be taken (no fcntl, read-only folder) the
    database check on every open still keeps results right.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(open(path.with_name(path.name + ".lock"), "a+b"))
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        except OSError:
            pass
        yield


def _load(path: Path) -> tuple[VectorIndex | None, str | None]:
    try:
        return VectorIndex.load(path)
    except FileNotFoundError:
        return None, None
    except VectorIndexError as exc:
        log.warning("ignoring damaged vector index %s (it is rebuilt from the database): %s", path, exc.reason)
        return None, None


def _requested_type(tag: str) -> str:
    try:
        value = json.loads(tag).get("index_type")
    except (ValueError, AttributeError):
        return DEFAULT_INDEX_TYPE
    return value if value in INDEX_TYPES else DEFAULT_INDEX_TYPE


def _save(index: VectorIndex, path: Path, tag: str) -> None:
    try:
        index.save(path, tag)
    except VectorIndexError as exc:  # e.g. a read-only folder: the in-memory index is still right
        log.warning("vector index not saved: %s", exc)

"""A library: the store (the source of truth) and its FAISS indexes, kept in line with it.

There is one FAISS file per vector kind ('text': caption embeddings, 'audio': Pengi audio embeddings), next to a
SQLite database (see `pengi_search.db.default_index_path`). The database records, per kind, the index type asked
for, the type built and its parameters (`Store.vector_indexes`), so a damaged or deleted file is rebuilt as the
type it was, and an 'ivfpq' request that fell back to 'flat' on a small library is reported as such and becomes
IVF-PQ once the library is large enough. Each file's tag says what its vectors came from and which library wrote
it: another library's file is taken as no file at all (`index_files`, which reads, writes and locks the files).

Opening an index checks it against the database. A file records the version of the vectors it holds (a number that
every write of vectors of its kind renews, `Store.vector_state`): at the version the database is at, it is used
without reading their ids (0.1 s a kind at 200,000 windows). Otherwise its ids are compared with the database's,
read in the same snapshot as the version; a file that differs is brought in line incrementally (only the windows
added or removed since) when its tag and type still fit, and rebuilt from the stored vectors otherwise (also when it
is missing or damaged), and saved with the version once it holds exactly that version's ids. This class is the one
place that keeps FAISS in line with the database. A library on a read-only store records nothing in the database;
an in-memory one (`in_memory=True`, the server's) also never writes a FAISS file. What a library holds and what
its indexes are, as `stats` gives them, is `library_stats`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .db import VECTOR_KINDS, CaptionCounts, Store, StoreError, VectorIndexInfo, caption_counts, default_index_path
from .index_files import (
    DEFAULT_INDEX_TYPE,
    described_by_file,
    index_tag,
    load_own,
    locked,
    removed_file,
    requested_type,
    save_index,
    tune_file,
)
from .index_hints import library_index_command
from .index_types import INDEX_TYPES, SEARCH_KNOBS, IndexParams, KnobSetting, checked_knobs, effective_type
from .library_stats import index_info
from .vectors import FillProgress, FillProgresses, VectorIndex, VectorIndexError

log = logging.getLogger(__name__)


class EmptyLibraryError(StoreError):
    """Nothing with vectors of the asked kind has been indexed yet."""


def empty_library_hint(kind: str, store: Store) -> str:
    """Why a library has no index of `kind` ('text' or 'audio') and the command that makes one: over the folders
    of the files it knows (pending or failed ones), else over the folders the user names."""
    return f"no {kind} vectors indexed yet; run `{library_index_command(store)}` first"


class Library:
    """The store plus its FAISS indexes. Open with `Library.open(db)`; close with `close()` or a `with` block.

    Thread-safe to search: several threads may search one library at once (its store is, and each index is loaded
    once, by the first search that needs it, while the others wait for it). `sync_vector_indexes` and `rebuild`
    may run beside searches, which keep the index they started with; `close` must wait for them to end.
    """

    def __init__(self, store: Store, *, in_memory: bool = False, progress: FillProgresses | None = None) -> None:
        self.store = store
        self.progress = progress  # told of each index filled from the database (a build, a re-fill): minutes
        self.db_url = store.url
        self.name = store.name  # how errors name it, as the user did (`Store.name`)
        self.in_memory = in_memory
        self._indexes: dict[str, VectorIndex] = {}  # an entry is only ever set whole: read without the lock
        self._loading = threading.Lock()  # held to load or replace an index: each is loaded once

    @classmethod
    def open(
        cls,
        db: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        read_only: bool = False,
        progress: FillProgresses | None = None,
    ) -> Library:
        """Open the library at `db` (a URL or file path; None: `$PENGI_SEARCH_DB`, else the default database).

        `create`: make the database when missing (else MissingDatabaseError); `read_only`: the database is only
        read. Either way the FAISS files are kept in line with it: they are a cache of what it holds. `progress`:
        what is told how each index fills, when one is rebuilt or re-filled from the database."""
        return cls(Store.open(db, create=create, read_only=read_only), progress=progress)

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

    def caption_counts(self) -> CaptionCounts:
        """How many windows there are and how many have captions (for the default ranking of a text query)."""
        return caption_counts(self.store)

    def vector_index(self, kind: str) -> VectorIndex:
        """The FAISS index of `kind`, holding exactly the database's vectors of that kind (cached once loaded).

        Raises EmptyLibraryError when the database has no such vectors yet, ClosedLibraryError after `close`.
        """
        self.store.check_open()
        index = self._indexes.get(kind)
        if index is None:
            with self._loading:
                index = self._indexes.get(kind)  # loaded by another thread meanwhile
                if index is None:
                    index = self._in_line(kind, None, rebuild=False)
                    if index is None:
                        raise EmptyLibraryError(self.name, empty_library_hint(kind, self.store))
                    self._indexes[kind] = index
        return index

    def sync_vector_indexes(self, index_type: str | None = None) -> None:
        """Bring both FAISS files in line with the database and save them (incrementally where possible).

        `index_type` ('flat', 'hnsw', 'ivfpq') changes the type, which rebuilds; None keeps the type in use.
        """
        for kind in VECTOR_KINDS:
            self._refresh(kind, index_type, rebuild=False)

    def rebuild(
        self,
        index_type: str | None = None,
        *,
        ef_search: KnobSetting | None = None,
        nprobe: KnobSetting | None = None,
    ) -> dict[str, int]:
        """Rebuild both FAISS files from the database's vectors; returns the number of vectors per kind.

        `ef_search` (HNSW) and `nprobe` (IVF-PQ) set how searches trade speed for recall, as `tune` does.
        """
        knobs = checked_knobs(
            {"ef_search": ef_search, "nprobe": nprobe}, self._requested(index_type), asked=bool(index_type)
        )
        counts = {}
        for kind in VECTOR_KINDS:
            index = self._refresh(kind, index_type, rebuild=True, knobs=knobs)
            counts[kind] = 0 if index is None else len(index)
        return counts

    def tune(self, *, ef_search: KnobSetting | None = None, nprobe: KnobSetting | None = None) -> None:
        """Set how searches trade speed for recall, without rebuilding: `ef_search` (HNSW: candidates kept), `nprobe`
        (IVF-PQ: cells probed), a number or AUTO (the automatic choice); None leaves a knob as it is.

        The FAISS files' parameters are rewritten (their vectors copied as bytes, under the lock every writer of
        them takes), then the database's, so that every command, a server's next check of the files, and later
        rebuilds search with them. A knob of another type than the indexes' is an OptionError, before anything
        changes; a file that cannot be rewritten (a full disk) is a VectorIndexError, leaving it as it was.
        """
        knobs = checked_knobs({"ef_search": ef_search, "nprobe": nprobe}, self._requested(None), asked=False)
        if not knobs:
            return
        for kind in VECTOR_KINDS:
            path = self.index_path(kind)
            with contextlib.nullcontext() if self.in_memory else locked(path):
                if not self.in_memory:  # an in-memory library (the server's) never writes a FAISS file
                    tune_file(self.store, path, knobs)
                self._record_knobs(kind, knobs)  # read under the lock: what another writer recorded last
            if kind in self._indexes:
                self._indexes[kind].tune(**knobs)

    # -- internals -------------------------------------------------------------------------------------------

    def _requested(self, index_type: str | None) -> set[str]:
        """The types the indexes are asked to be: `index_type`, else each kind's (flat for one never built)."""
        if index_type is not None:
            return {index_type}
        return {DEFAULT_INDEX_TYPE if info is None else info.requested_type for info in index_info(self.store).values()}

    def _refresh(
        self, kind: str, index_type: str | None, *, rebuild: bool, knobs: Mapping[str, int] | None = None
    ) -> VectorIndex | None:
        with self._loading:  # a search meanwhile waits for the new index
            self._indexes.pop(kind, None)
            index = self._in_line(kind, index_type, rebuild=rebuild, knobs=knobs)
            if index is not None:
                self._indexes[kind] = index
            return index

    def _in_line(
        self, kind: str, index_type: str | None, *, rebuild: bool, knobs: Mapping[str, int] | None = None
    ) -> VectorIndex | None:
        """The saved index of `kind` made equal to the database (and saved if it changed); None when empty. `knobs`:
        search knobs (SEARCH_KNOBS) for the index built, over those of the one it replaces."""
        if index_type is not None and index_type not in INDEX_TYPES:
            raise VectorIndexError("index type", f"unknown {index_type!r}; use one of {', '.join(INDEX_TYPES)}")
        path = self.index_path(kind)
        if self.in_memory:  # files are replaced atomically: reading one needs no lock
            return self._in_line_locked(kind, path, index_type, rebuild=rebuild, knobs=knobs or {})
        with locked(path):
            return self._in_line_locked(kind, path, index_type, rebuild=rebuild, knobs=knobs or {})

    def _in_line_locked(
        self, kind: str, path: Path, index_type: str | None, *, rebuild: bool, knobs: Mapping[str, int]
    ) -> VectorIndex | None:
        loaded, stored_tag = load_own(self.store, path)
        recorded = self.store.vector_indexes().get(kind)
        requested = index_type or (recorded.requested_type if recorded else None) or requested_type(stored_tag)
        search_knobs = _kept_knobs(recorded, loaded) | dict(knobs)
        tag = index_tag(self.store.index_meta(), kind, requested)
        usable = loaded if loaded is not None and not rebuild and stored_tag == tag else None
        # `state.ids` is None when the file was saved at the version the database is at: it holds those ids.
        state = self.store.vector_state(kind, unless=None if usable is None else usable.vectors_version)
        if state.ids is not None:
            count = len(state.ids)
        else:
            assert usable is not None  # a version is compared only with a file's
            count = len(usable)
        fits = usable is not None and usable.type == effective_type(requested, count)
        if count == 0:
            self._forget(path, usable if fits else None, tag, state.version)
            self._record(recorded, kind, requested, None, knobs=search_knobs)
            return None
        if fits:
            assert usable is not None
            _follow_recorded_knobs(usable, recorded)
            if state.ids is not None:
                self._sync(usable, state.ids, state.version, kind, path, tag)
            self._record(recorded, kind, requested, usable, knobs=search_knobs)
            return usable
        if state.ids is None:  # a file of the current version, but another type is due: its ids to check with
            state = self.store.vector_state(kind)
        read = functools.partial(self.store.vector_batches, kind)
        params = IndexParams(type=requested, **search_knobs)
        index = VectorIndex.build_streamed(state.ids, read, params, name=f"{kind} index", progress=self._told(kind))
        index.vectors_version = _version_if_equal(index, state.ids, state.version)
        log.info("vector index %s rebuilt: %d %s vectors (%s)", path, len(index), kind, index.type)
        self._save(index, path, tag)
        self._record(recorded, kind, requested, index, knobs=search_knobs)
        return index

    def _sync(
        self, index: VectorIndex, expected: np.ndarray, version: int | None, kind: str, path: Path, tag: str
    ) -> None:
        """Make `index` hold the `expected` ids, those of `version` (fetching the vectors it lacks), and save it
        when it changed, or to record `version` (a file saved before versions, or at another one)."""
        added, removed = index.sync(expected, functools.partial(self.store.vector_batches, kind), self._told(kind))
        if added or removed:
            log.info("vector index %s: %d added, %d removed", path, added, removed)
        version = _version_if_equal(index, expected, version)
        # Saved only to record the version, the file is not worth a warning where it cannot be (a read-only share).
        relabel = version != index.vectors_version and os.access(path.parent, os.W_OK)
        if added or removed or relabel:
            index.vectors_version = version
            self._save(index, path, tag)

    def _record(
        self,
        recorded: VectorIndexInfo | None,
        kind: str,
        requested: str,
        index: VectorIndex | None,
        *,
        knobs: Mapping[str, int],
    ) -> None:
        """Record in the database what the index of `kind` now is, when that changed (a read-only store: never). A
        kind without vectors has none: its search `knobs` are recorded, for the index it will have."""
        effective = None if index is None else index.type
        params = dict(knobs) if index is None else dataclasses.asdict(index.params)
        vectors = 0 if index is None else len(index)
        now = (requested, effective, params, vectors)
        if self.store.read_only or (
            recorded is not None
            and (recorded.requested_type, recorded.effective_type, dict(recorded.params), recorded.vectors) == now
        ):
            return
        self.store.record_vector_index(
            kind, requested_type=requested, effective_type=effective, params=params, vectors=vectors
        )

    def _told(self, kind: str) -> FillProgress | None:
        return None if self.progress is None else self.progress(f"{kind} index")

    def _record_knobs(self, kind: str, knobs: Mapping[str, int | None]) -> None:
        """Record the index of `kind` as it is, with the search `knobs` in its parameters."""
        info = self.store.vector_indexes().get(kind) or described_by_file(self.store, kind)
        assert info is not None  # a kind never built is flat: `checked_knobs` refused every knob for it
        if not self.store.read_only:
            self.store.record_vector_index(
                kind,
                requested_type=info.requested_type,
                effective_type=info.effective_type,
                params={**info.params, **knobs},
                vectors=info.vectors,
            )

    def _save(self, index: VectorIndex, path: Path, tag: str) -> None:
        if not self.in_memory:
            save_index(index, path, tag, reader_option=self.store.db_option if self.store.read_only else None)

    def _forget(self, path: Path, loaded: VectorIndex | None, tag: str, version: int | None) -> None:
        """No vectors of this kind (at `version`): empty the file (keeping its type) or remove a file that no
        longer fits."""
        if self.in_memory:
            return
        if loaded is not None:
            if len(loaded):
                loaded.remove(loaded.ids())
                loaded.vectors_version = version
                self._save(loaded, path, tag)
        else:
            removed_file(path)


def _kept_knobs(recorded: VectorIndexInfo | None, replaced: VectorIndex | None) -> dict[str, int]:
    """The search knobs (SEARCH_KNOBS) of the index a new one replaces, as the database records it, else as its file
    says: a rebuild (another type, a damaged file, IVF-PQ once there are enough vectors) keeps what the user set."""
    before = dict(recorded.params) if recorded is not None else {}
    if not before and replaced is not None:
        before = dataclasses.asdict(replaced.params)
    return {name: before[name] for name in SEARCH_KNOBS if before.get(name) is not None}


def _follow_recorded_knobs(index: VectorIndex, recorded: VectorIndexInfo | None) -> None:
    """Search `index` with the knobs the database records, where its file says others: `tune` on another machine of
    a PostgreSQL library rewrote that machine's files only, and this one's older knobs were searched with and then
    recorded back over the database's by this machine's next write (an `index` run's sync, a `remove`). A record
    without knobs (written before they were kept) leaves the file's."""
    if recorded is None or not recorded.params:
        return
    wanted = {name: recorded.params.get(name) for name in SEARCH_KNOBS}
    if wanted != {name: getattr(index.params, name) for name in SEARCH_KNOBS}:
        index.tune(**wanted)


def _version_if_equal(index: VectorIndex, expected: np.ndarray | None, version: int | None) -> int | None:
    """`version` if `index` holds the `expected` ids, those the database had at that version, else None: vectors
    read after the version was (those missing from the file, or all of them for a rebuild) lack the windows deleted
    meanwhile, and a file without a version is checked against the ids the next time."""
    return version if np.array_equal(index.ids(), expected) else None

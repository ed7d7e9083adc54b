"""A read-only library whose FAISS indexes follow the database while `pengi-search index` writes to it.

Before a search (at most every `check_s` seconds) the library asks two cheap questions: did a FAISS file change on
disk (an indexing run, `remove` or `rebuild-index` saved it), and is there a window newer than the newest one seen
(window ids are never reused)? A changed file is loaded and brought in line with the database in memory (the
database is the source of truth; `Library(in_memory=True)` never writes a file), then swapped in; new windows are
added to the index in memory. A search that started keeps the index it started with. Windows deleted since
(re-indexed or removed files) stay in memory until the next file change; search already drops hits whose window
is gone from the database.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from ..db import VECTOR_KINDS, CaptionCounts, Store, caption_counts
from ..library import EmptyLibraryError, Library, empty_library_hint
from ..vectors import ReadFn, VectorIndex
from ..window_index import Wanted, WindowIndex
from . import catalog

FileStamp = tuple[int, int, int] | None  # (inode, size, mtime ns) of a FAISS file; None when there is none


class SharedLock:
    """Many holders at once (`shared`) or one alone (`exclusive`); a waiting exclusive holder keeps new shared ones
    back, so that a steady stream of searches cannot postpone the index's growth for ever."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive holders waiting

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._changed:
                self._shared -= 1
                if not self._shared:
                    self._changed.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._changed:
            self._waiting += 1
            self._changed.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._changed:
                self._exclusive = False
                self._changed.notify_all()


class GuardedIndex(WindowIndex):
    """A FAISS index that many requests search at once and that grows alone (faiss must not be searched while it
    grows; on a GPU, `VectorIndex` has its searches take turns). A `WindowIndex` itself, by passing its searches on,
    so that search code takes it as it takes the index it guards."""

    def __init__(self, index: VectorIndex) -> None:
        self._index = index
        self._lock = SharedLock()

    def __len__(self) -> int:
        return len(self._index)

    @property
    def type(self) -> str:
        return self._index.type

    def _search(self, queries: np.ndarray, k: int, wanted: Wanted) -> tuple[np.ndarray, np.ndarray]:
        """`VectorIndex.search`, guarded."""
        with self._lock.shared(), _one_faiss_thread():
            return self._index.search(
                queries, k, allowed_ids=wanted.allowed_ids, exact_top=wanted.exact_top, exact=wanted.exact
            )

    def add_missing(self, ids: np.ndarray, read: ReadFn) -> int:
        """Add the windows of `ids` the index lacks, their vectors from `read(ids)`; returns how many."""
        with self._lock.exclusive():
            missing = np.setdiff1d(ids, self._index.ids(), assume_unique=True)
            if missing.size == 0:
                return 0
            return self._index.add_batches(read(missing))


class LiveLibrary(Library):
    """The server's library: read-only, its vector indexes refreshed from the database as it grows; thread-safe as
    `Library` is, refreshes included (a search keeps the index it started with)."""

    def __init__(self, store: Store, *, check_s: float = 0.5) -> None:
        super().__init__(store, in_memory=True)
        self.check_s = check_s
        self._live: dict[str, GuardedIndex] = {}
        self._file_stamps: dict[str, FileStamp] = {}
        self._newest = -1  # newest window id the indexes hold (-1: nothing loaded yet)
        self._built_by: tuple[object, object] | None = None
        self._checked_at = -float("inf")
        self._refresh_lock = threading.Lock()
        self._captions: CaptionCounts | None = None
        self.generation = 0  # grows whenever the model or text embedder that built the index changes
        self.version = 0  # grows whenever a refresh finds the library changed: results made before are not kept

    def close(self) -> None:
        self._live.clear()
        super().close()

    def vector_index(self, kind: str) -> GuardedIndex:  # type: ignore[override]
        """The current index of `kind`, refreshed first when due; raises EmptyLibraryError when there is none."""
        self.refresh()
        index = self._live.get(kind)
        if index is None:
            raise EmptyLibraryError(self.name, empty_library_hint(kind, self.store))
        return index

    def caption_counts(self) -> CaptionCounts:
        """As of the last refresh: counting a million windows takes longer than a search, and captions reach the
        indexes in memory only when the database gains windows or a FAISS file changes, which is when it is redone."""
        self.refresh()
        if self._captions is None:  # another thread is loading the indexes for the first time
            return caption_counts(self.store)
        return self._captions

    def live_indexes(self) -> dict[str, GuardedIndex]:
        """The indexes in memory now, by kind (for statistics)."""
        return dict(self._live)

    def refresh(self, *, force: bool = False) -> None:
        """Bring the indexes up to date with the database and the FAISS files, if due (or `force`)."""
        self.store.check_open()  # a refresh not yet due would not find out, and searches would find no index
        if not force and time.monotonic() - self._checked_at < self.check_s:
            return
        # The first load is waited for; later, a search does not wait for another thread's refresh.
        if not self._refresh_lock.acquire(blocking=self._newest < 0 or force):
            return
        try:
            self._checked_at = time.monotonic()
            self._refresh_locked()
        finally:
            self._refresh_lock.release()

    def _refresh_locked(self) -> None:
        newest = catalog.newest_window_id(self.store)  # read before loading: later windows are caught next time
        stamps = {kind: _file_stamp(self.index_path(kind)) for kind in VECTOR_KINDS}
        if newest == self._newest and stamps == self._file_stamps:
            return
        meta = self.store.index_meta()
        built_by = None if meta is None else (meta.model, meta.embedder)
        if built_by != self._built_by:
            self.generation += 1
        for kind in VECTOR_KINDS:
            current = self._live.get(kind)
            if current is None or built_by != self._built_by or stamps[kind] != self._file_stamps.get(kind):
                self._reload(kind)
            elif newest > self._newest:
                ids = catalog.vector_ids_after(self.store, kind, self._newest)
                current.add_missing(ids, functools.partial(self.store.vector_batches, kind))
        self._captions = caption_counts(self.store)
        self._newest, self._file_stamps, self._built_by = newest, stamps, built_by
        self.version += 1  # once the indexes are in line: a search that read the new version searches them

    def _reload(self, kind: str) -> None:
        index = self._in_line(kind, None, rebuild=False)  # read-only: in memory, no file written
        if index is None:
            self._live.pop(kind, None)
        else:
            self._live[kind] = GuardedIndex(index)


@contextmanager
def _one_faiss_thread() -> Iterator[None]:
    """Requests on several threads are the server's parallelism: a search runs on one OpenMP thread (the setting is
    the calling thread's), where a team per request thread would spin on the same cores, and one search gains
    nothing from two (an IVF-PQ search of a 1M library takes 2 ms on either)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _file_stamp(path: Path) -> FileStamp:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns

"""FAISS vector indexes over L2-normalised float32 vectors, searched by inner product (cosine similarity).

Ids are the database's window ids, so a hit leads straight to `Store.window_details`. The database is the source
of truth: `pengi_search.library.Library` keeps the saved indexes (`pengi_search.vector_file`) in line with it.

The index types, their parameters and faiss's search parameters are `index_types`'; the search's positions and exact
search, `vector_search`'s. When faiss has GPU support and a GPU is visible, exact ('flat') searches run on the GPU;
everything else is CPU. A search for k returns min(k, the vectors it may return), never fewer: a row the graph walk or
the cells probed leave short is scored exactly.

Removal: a flat index removes in place. An HNSW graph cannot drop a node, and an IVF-PQ index's codes and exact
vectors are kept by position, so re-filling either costs as much as building it; instead their removed ids become
tombstones: the vectors stay stored (an HNSW search still routes through them), searches skip them, and `len`, `ids`
and `sync` see only the live ids. A saved file keeps them with their ids in its header (`vector_file`), so a loaded
index is as it was. Once tombstones exceed COMPACT_FRACTION of the stored vectors, the index is re-filled without
them (`compact`); a rebuild (`pengi-search rebuild-index`) never has any.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from .chunking import chunk_slices
from .id_arrays import among, sorted_unique
from .index_types import IVFPQ_MIN_VECTORS as IVFPQ_MIN_VECTORS  # named with the indexes by their callers
from .index_types import IndexParams, Sample, search_parameters, trained_faiss_index
from .units import count_text
from .vector_file import VectorIndexError, read_index_file, write_index_file
from .vector_search import (
    allowed_positions,
    empty_hits,
    exact_among,
    exact_pays,
    found_hits,
    live_mask,
    returnable_positions,
)
from .window_index import Wanted, WindowIndex

log = logging.getLogger(__name__)

# Tombstones past this share of the stored vectors are compacted away: searches stay as fast as those of a rebuilt
# index, and one large removal (a folder) costs a single re-fill rather than a file that keeps growing.
COMPACT_FRACTION = 0.2
_RECONSTRUCTED_ROWS = 1 << 16  # stored vectors copied out at a time (a compaction's copy, an exact search)
# Vectors added to an HNSW graph at a time: its inserts run at about a thousand a second on one thread, so a batch read
# at once (50,000) would hold a progress bar still for a minute. The other types add a batch in a moment.
_HNSW_ADDED_ROWS = 1 << 12
_SEARCH_TIME_PARAMS = {"ef_search", "nprobe", "k_factor"}  # what `tune` changes: no vector is added again for them

VectorBatches = Iterable[tuple[np.ndarray, np.ndarray]]  # (ids int64 (n,), vectors (n, d)) a batch at a time
# `read(ids)`: the vectors of those ids as stored (the library's database; None: all of them), in batches sorted by
# id; an id that has none is left out. Builds and compactions add what it gives a batch at a time, never holding
# every vector.
ReadFn = Callable[[np.ndarray | None], VectorBatches]


class FillProgress(Protocol):
    """Told how an index fills from stored vectors, for a progress display (this module draws none): `start` with
    how many are to be added, before the first batch (after an IVF-PQ training), `advance` after each batch. A build
    of millions of vectors, or a compaction's re-fill, takes minutes."""

    def start(self, vectors: int) -> None: ...

    def advance(self, vectors: int) -> None: ...


# One FillProgress for each index filled, given its name ("text index"): how a library is told of its two indexes.
FillProgresses = Callable[[str], FillProgress]


def l2_normalise(vectors: np.ndarray, dim: int | None = None, where: str = "vectors") -> np.ndarray:
    """A new C-contiguous float32 (n, d) array of unit rows; one 1-D vector counts as one row."""
    array = np.array(vectors, dtype=np.float32, order="C", ndmin=2)
    if array.ndim != 2:
        raise VectorIndexError(where, f"expected a (n, d) matrix, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise VectorIndexError(where, f"expected {dim} dimensions, got {array.shape[1]}")
    if not np.isfinite(array).all():
        raise VectorIndexError(where, "NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise VectorIndexError(where, f"{count_text(int((norms == 0).sum()), 'zero vector')} cannot be normalised")
    array /= norms
    return array


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    return int(getattr(faiss, "get_num_gpus", lambda: 0)())


class VectorIndex(WindowIndex):
    """A FAISS index keyed by int64 ids. Build with `build` or `load`.

    Searches may run from several threads at once (on a GPU they take turns: faiss's GPU indexes are not
    thread-safe); add, remove, sync and tune need exclusive access.
    """

    def __init__(self, index: faiss.IndexIDMap2, params: IndexParams, *, use_gpu: bool | None = None) -> None:
        """Wrap an id-mapped faiss index built by this module (its type is `params.type`)."""
        self._index = index
        self._inner = faiss.downcast_index(index.index)
        self.params = params
        self._use_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
        self._gpu_index: Any = None
        self._gpu_lock = threading.Lock()  # held to copy the index to the GPU (once) and to search it there
        self._positions_to_ids: np.ndarray | None = None
        self._sorted_ids: np.ndarray | None = None  # the live ids
        self._dead = np.empty(0, np.int64)  # tombstones: removed ids whose vectors are still stored, sorted
        self._live_bitmap: np.ndarray | None = None  # per position, packed: 1 unless tombstoned
        # The database's version of the vectors held (`Store.vector_state`), saved with them; None when unknown.
        # Adding or removing vectors forgets it: only the caller knows which version the result is.
        self.vectors_version: int | None = None

    # -- construction ----------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        params: IndexParams | None = None,
        *,
        dim: int | None = None,
        use_gpu: bool | None = None,
        name: str = "vector index",
    ) -> VectorIndex:
        """An index of `vectors` (n, d) under `ids`; `dim` is needed only when there are no vectors. `name` says
        which index a warning is about (a library has two, built one after the other)."""
        matrix = np.asarray(vectors)
        count = len(np.asarray(ids))
        if dim is None:
            if matrix.ndim != 2 or matrix.shape[1] == 0:
                raise VectorIndexError("build", "no vectors and no dimension given")
            dim = int(matrix.shape[1])
        unit = l2_normalise(matrix.reshape(-1, dim) if count == 0 else matrix, dim)
        index = cls._trained(params or IndexParams(), dim, count, lambda rows: unit[rows], use_gpu=use_gpu, name=name)
        index._add_unit(np.asarray(ids, dtype=np.int64).reshape(-1), unit)
        return index

    @classmethod
    def build_streamed(
        cls,
        ids: np.ndarray,
        read: ReadFn,
        params: IndexParams | None = None,
        *,
        use_gpu: bool | None = None,
        name: str = "vector index",
        progress: FillProgress | None = None,
    ) -> VectorIndex:
        """An index of all the vectors `read(None)` gives, added a batch at a time: memory holds the index, one batch
        and IVF-PQ's training sample, never every vector at once. `ids` are theirs, sorted (as last read): how many
        there are and which `read(ids)` gives the training sample (`build`'s choice of rows). For the same vectors
        it is the index `build` makes (but for an HNSW graph, which inserts each batch's nodes in its own order).
        `progress` is told of the vectors added."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        batches = iter(read(None))
        first = next(batches, None)
        if first is None:
            raise VectorIndexError("build", "no vectors and no dimension given")
        dim = int(first[1].shape[1])

        def sample(rows: np.ndarray) -> np.ndarray:
            return _stacked_unit(read(wanted[rows]), dim)

        index = cls._trained(params or IndexParams(), dim, len(wanted), sample, use_gpu=use_gpu, name=name)
        if progress is not None:
            progress.start(len(wanted))
        index.add_batches(itertools.chain([first], batches), progress)
        return index

    @classmethod
    def _trained(
        cls, params: IndexParams, dim: int, count: int, sample: Sample, *, use_gpu: bool | None, name: str
    ) -> VectorIndex:
        """An empty index for `count` vectors of `dim`, trained as `trained_faiss_index` says."""
        inner, params = trained_faiss_index(params, dim, count, sample, name=name)
        return cls(faiss.IndexIDMap2(inner), params, use_gpu=use_gpu)

    # -- contents --------------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def searches_on_gpu(self) -> bool:
        """Whether searches run on a GPU copy (which, unlike a CPU index, must not be searched by two threads)."""
        return self._use_gpu and self.type == "flat"

    @property
    def type(self) -> str:
        return self.params.type

    def __len__(self) -> int:
        """The number of live vectors (tombstones excluded)."""
        return int(self._index.ntotal) - len(self._dead)

    @property
    def removed(self) -> int:
        """Tombstones: vectors removed but still stored, until `compact`."""
        return len(self._dead)

    @property
    def compaction_overdue(self) -> bool:
        """Whether the tombstones are past COMPACT_FRACTION: `remove` compacts then, so only a file written
        otherwise (by hand, or by a version that compacted later) is loaded in that state, until the next removal."""
        return len(self._dead) > COMPACT_FRACTION * self._index.ntotal

    def ids(self) -> np.ndarray:
        """The live ids in the index, sorted (int64)."""
        return self._sorted().copy()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (normalised here) under new, unique ids; a tombstoned id may come back."""
        new_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        unit = l2_normalise(vectors, self.dim) if len(new_ids) else np.empty((0, self.dim), np.float32)
        self._add_unit(new_ids, unit)

    def add_batches(self, batches: VectorBatches, progress: FillProgress | None = None) -> int:
        """`add` each (ids, vectors) batch in turn, telling `progress` as they go; returns how many were added."""
        added = 0
        for ids, vectors in batches:
            step = _HNSW_ADDED_ROWS if self.type == "hnsw" else max(len(ids), 1)
            for rows in chunk_slices(len(ids), step):
                chunk = ids[rows]
                self.add(chunk, vectors[rows])
                added += len(chunk)
                if progress is not None:
                    progress.advance(len(chunk))
        return added

    def remove(self, ids: np.ndarray, read: ReadFn | None = None, progress: FillProgress | None = None) -> int:
        """Remove these ids (unknown ones are ignored); returns how many were removed.

        Flat indexes remove in place; HNSW and IVF-PQ indexes tombstone them, and compact past COMPACT_FRACTION
        (with `read` and `progress`, see `compact`).
        """
        gone = np.asarray(ids, dtype=np.int64).reshape(-1)
        if gone.size == 0 or len(self) == 0:
            return 0
        self.vectors_version = None
        if self.type == "flat":
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(gone)))
            self._changed()
            return removed
        live = self._sorted()
        dying = np.intersect1d(live, sorted_unique(gone), assume_unique=True)
        if dying.size:
            self._dead = sorted_unique(np.concatenate([self._dead, dying]))
            self._sorted_ids = np.setdiff1d(live, dying, assume_unique=True)
            self._live_bitmap = None
            if self.compaction_overdue:
                self.compact(read, progress)
        return int(dying.size)

    def compact(self, read: ReadFn | None = None, progress: FillProgress | None = None) -> int:
        """Re-fill the index without its tombstoned ids; returns how many it dropped.

        With `read` (the library's database) the index is emptied, then re-filled with the live ids among what
        `read(None)` gives (every stored vector, in pages by id: no list of ids to look up), a batch at a time:
        memory holds the index and one batch (a live id `read` no longer has is left out).
        Without it the live vectors are copied out of the index first, as much memory again. The IVF-PQ training
        is kept, so searches find what they found before, from less work. `progress` is told of the re-fill."""
        dropped = len(self._dead)
        if dropped == 0:
            return 0
        copied = self._live_vectors() if read is None else []
        live_ids = self.ids()
        self._index.reset()
        self._dead = np.empty(0, np.int64)
        self._changed()
        if progress is not None:
            progress.start(len(live_ids))
        for ids, unit in copied:
            self._add_unit(ids, unit)
            if progress is not None:
                progress.advance(len(ids))
        if read is not None:
            self.add_batches(_among(read(None), live_ids), progress)
        return dropped

    def sync(self, expected_ids: np.ndarray, read: ReadFn, progress: FillProgress | None = None) -> tuple[int, int]:
        """Make the ids equal `expected_ids`: drop extra ids, add the missing ones that `read(missing)` gives (and
        re-fill from it when the removal compacts, telling `progress`). Returns (added, removed).
        """
        expected = sorted_unique(np.asarray(expected_ids, dtype=np.int64).reshape(-1))
        current = self._sorted()
        if np.array_equal(current, expected):  # what every command finds when nothing changed since the save
            return 0, 0
        extra = np.setdiff1d(current, expected, assume_unique=True)
        missing = np.setdiff1d(expected, current, assume_unique=True)
        removed = self.remove(extra, read, progress)
        added = self.add_batches(read(missing)) if missing.size else 0
        return added, removed

    # -- search ----------------------------------------------------------------------------------------------

    def tune(self, **knobs: int | None) -> None:
        """Change the search-time knobs named: `ef_search` (HNSW), `nprobe` (IVF cells probed), `k_factor` (IVF-PQ
        re-ranking); None for ef_search or nprobe is the automatic choice (`IndexParams`)."""
        unknown = set(knobs) - _SEARCH_TIME_PARAMS
        if unknown:
            raise TypeError(f"not search-time knobs: {', '.join(sorted(unknown))}")
        self.params = dataclasses.replace(self.params, **knobs)

    def _search(self, queries: np.ndarray, k: int, wanted: Wanted) -> tuple[np.ndarray, np.ndarray]:
        """`WindowIndex.search` of the live vectors, whatever the index type. Queries are normalised here; an IVF-PQ
        index re-ranks k_factor x `exact_top` candidates instead of k_factor x k."""
        query = l2_normalise(queries, self.dim, where="query")
        allowed = allowed_positions(self._id_map(), wanted.allowed_ids, self._dead)
        returnable = len(self) if allowed is None else int(allowed.sum())
        if returnable == 0:
            return empty_hits(len(query), k)
        if self.type != "flat" and (wanted.exact or exact_pays(k, returnable, len(self))):
            return self._exact_among(query, k, returnable_positions(allowed, self._id_map(), self._dead))
        scores, ids = self._approximate(query, k, allowed, min(int(wanted.exact_top or k), k))
        short = (ids >= 0).sum(axis=1) < min(k, returnable)
        if short.any():  # the graph walk or the cells probed missed some: those rows alone are scored exactly
            scores[short], ids[short] = self._exact_among(
                query[short], k, returnable_positions(allowed, self._id_map(), self._dead)
            )
        return scores, ids

    # -- files -----------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], tag: str = "") -> None:
        """Write the index atomically; `tag` names what the vectors came from (e.g. the embedder)."""
        params = dataclasses.asdict(self.params)
        write_index_file(path, self._index, params, tag, removed=self._dead, version=self.vectors_version)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], params: IndexParams | None = None, *, use_gpu: bool | None = None
    ) -> tuple[VectorIndex, str]:
        """Read an index written by `save`; returns it and its tag.

        The file's own build parameters are kept; the search knobs of `params` apply when given. Raises
        FileNotFoundError when missing and VectorIndexError when damaged.
        """
        index, stored_params, tag, removed, version = read_index_file(path)
        try:
            stored = IndexParams(**stored_params)
        except (TypeError, VectorIndexError) as exc:
            raise VectorIndexError(str(Path(path)), f"bad parameters in the header: {exc}") from exc
        loaded = cls(index, stored if params is None else stored.with_search_knobs(params), use_gpu=use_gpu)
        dead = sorted_unique(removed)
        # Checked only when there are tombstones: np.isin sorts the whole id map, even to find nothing.
        if len(dead) != len(removed) or (dead.size and not np.isin(dead, loaded._id_map()).all()):
            raise VectorIndexError(str(Path(path)), "the removed ids in the header are not the index's")
        loaded._dead = dead
        loaded.vectors_version = version
        return loaded, tag

    # -- internals -------------------------------------------------------------------------------------------

    def _add_unit(self, ids: np.ndarray, unit: np.ndarray) -> None:
        if len(unit) != len(ids):
            raise VectorIndexError("add", f"{len(ids)} ids for {len(unit)} vectors")
        if len(ids) == 0:
            return
        self.vectors_version = None
        order = np.sort(ids)
        if (np.diff(order) == 0).any():
            raise VectorIndexError("add", "ids repeat within the batch")
        if np.isin(order, self._dead, assume_unique=True).any():
            self.compact()  # one id on two stored vectors would confuse searches (window ids never come back)
        existing = self._sorted()
        pos = np.searchsorted(existing, order)
        clash = order[np.isin(order, existing, assume_unique=True)] if existing.size else order[:0]
        if clash.size:
            raise VectorIndexError("add", f"ids already in the index: {clash[:5].tolist()}")
        self._index.add_with_ids(unit, ids)
        self._changed(sorted_ids=np.insert(existing, pos, order))

    def _sorted(self) -> np.ndarray:
        if self._sorted_ids is None:
            self._sorted_ids = np.setdiff1d(np.sort(self._id_map()), self._dead, assume_unique=True)
        return self._sorted_ids

    def _changed(self, sorted_ids: np.ndarray | None = None) -> None:
        """Forget what was derived from the stored vectors (positions moved or grew)."""
        self._gpu_index = None
        self._positions_to_ids = None
        self._sorted_ids = sorted_ids
        self._live_bitmap = None

    def _live_vectors(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, stored unit vectors) of the live positions, in order, copied out a chunk at a time."""
        id_map = self._id_map()
        positions = np.flatnonzero(live_mask(id_map, self._dead))
        chunks = (positions[rows] for rows in chunk_slices(len(positions), _RECONSTRUCTED_ROWS))
        return [(id_map[chunk], self._inner.reconstruct_batch(chunk)) for chunk in chunks]

    def _id_map(self) -> np.ndarray:
        """Index position -> id."""
        if self._positions_to_ids is None:
            self._positions_to_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        return self._positions_to_ids

    def _selector(self, allowed: np.ndarray | None) -> tuple[Any, np.ndarray | None]:
        """A faiss selector over index positions: those `allowed` (`allowed_positions`), else the live ones (and
        the bitmap it reads, which must outlive the search). None without a filter or tombstones."""
        if allowed is None and not self._dead.size:
            return None, None
        if allowed is None:
            if self._live_bitmap is None:  # kept: every unfiltered search of an index with tombstones reads it
                self._live_bitmap = np.packbits(live_mask(self._id_map(), self._dead), bitorder="little")
            bitmap = self._live_bitmap
        else:
            bitmap = np.packbits(allowed, bitorder="little")
        return faiss.IDSelectorBitmap(int(self._index.ntotal), faiss.swig_ptr(bitmap)), bitmap

    def _approximate(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None, exact_top: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The faiss search itself (exact for a flat index), as `search` returns it; rows may come back short."""
        selector, _bitmap = self._selector(allowed)
        params = search_parameters(self.params, self._inner, k, selector, exact_top)
        if selector is None and self.searches_on_gpu:
            with self._gpu_lock:
                scores, positions = self._search_index().search(query, k, params=params)
        else:
            scores, positions = self._inner.search(query, k, params=params)
        return found_hits(scores, positions, self._id_map())

    def _exact_among(self, query: np.ndarray, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`search`'s results among the stored vectors at `positions`, by exact cosine (`vector_search.exact_among`)."""
        return exact_among(self._inner, self._id_map(), query, k, positions, _RECONSTRUCTED_ROWS)

    def _search_index(self) -> Any:
        """The index an exact search runs on (`searches_on_gpu`, with `_gpu_lock` held): its GPU copy, made on first
        use; the inner index itself when no GPU is usable after all."""
        if self._gpu_index is None:
            if gpu_count() == 0:
                log.warning("searching on the CPU: faiss sees no GPU")
                self._use_gpu = False
                return self._inner
            try:
                self._gpu_index = faiss.index_cpu_to_all_gpus(self._inner)
            except (AttributeError, RuntimeError) as exc:
                log.warning("searching on the CPU: faiss could not use the GPU (%s)", exc)
                self._use_gpu = False
                return self._inner
        return self._gpu_index


def _among(batches: VectorBatches, wanted: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows of each batch whose ids are among `wanted` (sorted)."""
    for ids, vectors in batches:
        keep = among(ids, wanted)
        yield ids[keep], vectors[keep]


def _stacked_unit(batches: VectorBatches, dim: int) -> np.ndarray:
    """The vectors of all `batches`, normalised, in one (n, dim) matrix."""
    return np.concatenate([np.empty((0, dim), np.float32), *(l2_normalise(rows, dim) for _, rows in batches)])

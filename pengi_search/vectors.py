"""FAISS vector indexes over L2-normalised float32 vectors, searched by inner product (cosine similarity).

Ids are the database's window ids, so a hit leads straight to `Store.window_details`. The database is the source
of truth: `pengi_search.library.Library` keeps the saved indexes (`pengi_search.vector_file`) in line with it.

Index types:
- 'flat': exact search; the default, right for libraries up to a few hundred thousand windows.
- 'hnsw': HNSW graph (IndexHNSWFlat); fast and accurate, memory of flat plus the graph, slow to build.
- 'ivfpq': IVF with product-quantised codes, trained on the vectors, re-ranked with exact (or 8-bit) vectors so
  that recall stays high; needs IVFPQ_MIN_VECTORS to train and falls back to 'flat' below that.

When faiss has GPU support and a GPU is visible, exact ('flat') searches run on the GPU; everything else is CPU.
An HNSW or IVF-PQ search is exact among the vectors it may return when a filter allows few of them
(FEW_ALLOWED_SHARE) or it asks for a large share of them (LARGE_K_SHARE), and a row the graph walk or the cells probed
leave short is scored exactly too: a search for k returns min(k, those vectors), never fewer.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .choices import IndexType
from .chunking import chunk_slices
from .id_arrays import among, sorted_unique
from .ivf_sizes import auto_nlist, auto_nprobe, auto_pq_m, training_rows
from .units import count_text
from .vector_file import VectorIndexError, read_index_file, write_index_file

log = logging.getLogger(__name__)
# The IVF-PQ fallback's own logger: a command that reports the index it built in its own words (`rebuild-index`)
# silences it, so that the user is not told twice.
fallback_log = logging.getLogger(f"{__name__}.fallback")

INDEX_TYPES = tuple(t.value for t in IndexType)  # what a caller or a saved file may name
REFINE_TYPES = ("flat", "sq8")
IVFPQ_MIN_VECTORS = 10_000  # ~39 training points per IVF cell and 39 x 256 per PQ codebook

# Tombstones past this share of the stored vectors are compacted away: searches stay as fast as those of a rebuilt
# index, and one large removal (a folder) costs a single re-fill rather than a file that keeps growing.
COMPACT_FRACTION = 0.2
# A filtered HNSW or IVF-PQ search allowing at most this share of the live vectors (a folder, a rare name) is exact
# among them: the graph or the cells probed hold few allowed vectors near the query (of the 10 best allowed among
# 20,000 clustered vectors, HNSW found 4 at 1%, 1 at 0.2%; 9.6 at 5%). Exact, it costs at most this share of a flat
# search.
FEW_ALLOWED_SHARE = 0.1
# An HNSW or IVF-PQ search for at least this share of the vectors it may return is exact among them: an HNSW walk
# with efSearch k, or the IVF cells probed, reach fewer than k of them (100 of 102 windows; 715 of 2,000 asked of
# 20,000), and exact costs less: at a tenth of 20,000 64-d vectors, 0.7 ms a query against HNSW's 2.6 ms.
LARGE_K_SHARE = 0.1
_RECONSTRUCTED_ROWS = 1 << 16  # stored vectors copied out at a time by an exact search (`_exact_among`)

VectorBatches = Iterable[tuple[np.ndarray, np.ndarray]]  # (ids int64 (n,), vectors (n, d)) a batch at a time
# `read(ids)`: the vectors of those ids as stored (the library's database; None: all of them), in batches sorted by
# id; an id that has none is left out. Builds and compactions add what it gives a batch at a time, never holding
# every vector.
ReadFn = Callable[[np.ndarray | None], VectorBatches]


@dataclass(frozen=True)
class IndexParams:
    """How an index is built and searched; ef_search, nprobe and k_factor may change on a loaded index.

    None for nlist, pq_m or nprobe means: chosen from the number of vectors and their dimension.
    """

    type: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    nlist: int | None = None
    pq_m: int | None = None
    nprobe: int | None = None
    refine: str = "flat"
    k_factor: int = 32  # IVF-PQ re-ranks k * k_factor candidates exactly (recall@10 0.957 at 16, 0.999 at 32 for 1M)

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise VectorIndexError("index type", f"unknown {self.type!r}; use one of {', '.join(INDEX_TYPES)}")
        if self.refine not in REFINE_TYPES:
            raise VectorIndexError("refine", f"unknown {self.refine!r}; use one of {', '.join(REFINE_TYPES)}")
        sizes = {name: getattr(self, name) for name in ("hnsw_m", "ef_construction", "ef_search", "k_factor")}
        sizes.update({name: getattr(self, name) for name in ("nlist", "pq_m", "nprobe") if getattr(self, name)})
        for name, value in sizes.items():
            if int(value) < 1:
                raise VectorIndexError(name, f"must be at least 1, got {value}")

    def with_search_knobs(self, other: IndexParams) -> IndexParams:
        """These build parameters with the search-time knobs of `other`."""
        return dataclasses.replace(
            self, ef_search=other.ef_search, nprobe=other.nprobe or self.nprobe, k_factor=other.k_factor
        )


def effective_type(requested: str, count: int) -> str:
    """The index type actually built for `count` vectors: IVF-PQ needs enough vectors to train."""
    return "flat" if requested == "ivfpq" and count < IVFPQ_MIN_VECTORS else requested


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


class VectorIndex:
    """A FAISS index keyed by int64 ids. Build with `build` or `load`.

    Searches may run from several threads at once; add, remove, sync and tune need exclusive access.
    """

    def __init__(self, index: faiss.IndexIDMap2, params: IndexParams, *, use_gpu: bool | None = None) -> None:
        """Wrap an id-mapped faiss index built by this module (its type is `params.type`)."""
        self._index = index
        self._inner = faiss.downcast_index(index.index)
        self.params = params
        self._use_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
        self._gpu_index: Any = None
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
    ) -> VectorIndex:
        """An index of all the vectors `read(None)` gives, added a batch at a time: memory holds the index, one batch
        and IVF-PQ's training sample, never every vector at once. `ids` are theirs, sorted (as last read): how many
        there are and which `read(ids)` gives the training sample (`build`'s choice of rows). For the same vectors
        it is the index `build` makes (but for an HNSW graph, which inserts each batch's nodes in its own order)."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        batches = iter(read(None))
        first = next(batches, None)
        if first is None:
            raise VectorIndexError("build", "no vectors and no dimension given")
        dim = int(first[1].shape[1])

        def sample(rows: np.ndarray) -> np.ndarray:
            return _stacked_unit(read(wanted[rows]), dim)

        index = cls._trained(params or IndexParams(), dim, len(wanted), sample, use_gpu=use_gpu, name=name)
        index.add_batches(itertools.chain([first], batches))
        return index

    @classmethod
    def _trained(
        cls,
        params: IndexParams,
        dim: int,
        count: int,
        sample: Callable[[np.ndarray], np.ndarray],
        *,
        use_gpu: bool | None,
        name: str,
    ) -> VectorIndex:
        """An empty index for `count` vectors of `dim`; IVF-PQ is trained on `sample(rows)`, the unit vectors at
        those positions of the `count`."""
        kind = effective_type(params.type, count)
        if kind != params.type:
            fallback_log.warning(
                "%s: IVF-PQ needs at least %d vectors to train (have %d); using the exact flat index",
                name,
                IVFPQ_MIN_VECTORS,
                count,
            )
        inner, params = _new_inner(kind, dim, count, dataclasses.replace(params, type=kind))
        if kind == "ivfpq":
            inner.train(sample(training_rows(count, params.nlist or 1)))
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

    def add_batches(self, batches: VectorBatches) -> int:
        """`add` each (ids, vectors) batch in turn; returns how many vectors were added."""
        added = 0
        for ids, vectors in batches:
            self.add(ids, vectors)
            added += len(ids)
        return added

    def remove(self, ids: np.ndarray, read: ReadFn | None = None) -> int:
        """Remove these ids (unknown ones are ignored); returns how many were removed.

        Flat indexes remove in place; HNSW and IVF-PQ indexes tombstone them, and compact past COMPACT_FRACTION
        (with `read`, see `compact`).
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
                self.compact(read)
        return int(dying.size)

    def compact(self, read: ReadFn | None = None) -> int:
        """Re-fill the index without its tombstoned ids; returns how many it dropped.

        With `read` (the library's database) the index is emptied, then re-filled with the live ids among what
        `read(None)` gives (every stored vector, in pages by id: no list of ids to look up), a batch at a time:
        memory holds the index and one batch (a live id `read` no longer has is left out).
        Without it the live vectors are copied out of the index first, as much memory again. The IVF-PQ training
        is kept, so searches find what they found before, from less work."""
        dropped = len(self._dead)
        if dropped == 0:
            return 0
        copied = self._live_vectors() if read is None else []
        live_ids = self.ids()
        self._index.reset()
        self._dead = np.empty(0, np.int64)
        self._changed()
        for ids, unit in copied:
            self._add_unit(ids, unit)
        if read is not None:
            self.add_batches(_among(read(None), live_ids))
        return dropped

    def sync(self, expected_ids: np.ndarray, read: ReadFn) -> tuple[int, int]:
        """Make the ids equal `expected_ids`: drop extra ids, add the missing ones that `read(missing)` gives (and
        re-fill from it when the removal compacts). Returns (added, removed).
        """
        expected = sorted_unique(np.asarray(expected_ids, dtype=np.int64).reshape(-1))
        current = self._sorted()
        if np.array_equal(current, expected):  # what every command finds when nothing changed since the save
            return 0, 0
        extra = np.setdiff1d(current, expected, assume_unique=True)
        missing = np.setdiff1d(expected, current, assume_unique=True)
        removed = self.remove(extra, read)
        added = self.add_batches(read(missing)) if missing.size else 0
        return added, removed

    # -- search ----------------------------------------------------------------------------------------------

    def tune(self, *, ef_search: int | None = None, nprobe: int | None = None, k_factor: int | None = None) -> None:
        """Change search-time knobs: HNSW efSearch, IVF cells probed, IVF-PQ re-ranking factor."""
        knobs = {"ef_search": ef_search, "nprobe": nprobe, "k_factor": k_factor}
        self.params = dataclasses.replace(self.params, **{name: v for name, v in knobs.items() if v is not None})

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        exact_top: int | None = None,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best ids for each query row by cosine similarity: (scores float32 (q, k), ids int64 (q, k)).

        Queries are normalised here. `allowed_ids` restricts the search to those ids (a filtered search).
        `exact_top`: only the first that many results need the accuracy of a search for that many, the rest are
        spares (IVF-PQ then re-ranks k_factor x exact_top candidates instead of k_factor x k). `exact`: exact, as flat.

        Every row holds min(k, m) distinct ids, m the vectors the search may return (live, and allowed when
        filtered), whatever the index type: empty slots (id -1, score -inf) come only after all m, so a caller may
        take a row with an empty slot as every candidate there is.
        """
        k = int(k)
        if k < 1:
            raise VectorIndexError("search", f"k must be at least 1, got {k}")
        query = l2_normalise(queries, self.dim, where="query")
        allowed = self._allowed_positions(allowed_ids)
        returnable = len(self) if allowed is None else int(allowed.sum())
        if returnable == 0:
            return _empty_hits(len(query), k)
        if self.type != "flat" and (exact or self._exact_pays(k, returnable)):
            return self._exact_among(query, k, self._returnable_positions(allowed))
        scores, ids = self._approximate(query, k, allowed, min(int(exact_top or k), k))
        short = (ids >= 0).sum(axis=1) < min(k, returnable)
        if short.any():  # the graph walk or the cells probed missed some: those rows alone are scored exactly
            scores[short], ids[short] = self._exact_among(query[short], k, self._returnable_positions(allowed))
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
        positions = np.flatnonzero(self._live_mask())
        id_map = self._id_map()
        chunks = (positions[rows] for rows in chunk_slices(len(positions), _RECONSTRUCTED_ROWS))
        return [(id_map[chunk], self._inner.reconstruct_batch(chunk)) for chunk in chunks]

    def _live_mask(self) -> np.ndarray:
        """Per position: whether its id is live (not tombstoned)."""
        return ~np.isin(self._id_map(), self._dead)

    def _id_map(self) -> np.ndarray:
        """Index position -> id."""
        if self._positions_to_ids is None:
            self._positions_to_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        return self._positions_to_ids

    def _allowed_positions(self, allowed_ids: np.ndarray | None) -> np.ndarray | None:
        """Per position: whether its id is allowed and live. None without a filter."""
        if allowed_ids is None:
            return None
        mask = np.isin(self._id_map(), np.asarray(allowed_ids, dtype=np.int64))
        if self._dead.size:
            mask &= self._live_mask()
        return mask

    def _selector(self, allowed: np.ndarray | None) -> tuple[Any, np.ndarray | None]:
        """A faiss selector over index positions: those `allowed` (`_allowed_positions`), else the live ones (and
        the bitmap it reads, which must outlive the search). None without a filter or tombstones."""
        if allowed is None and not self._dead.size:
            return None, None
        if allowed is None:
            if self._live_bitmap is None:  # kept: every unfiltered search of an index with tombstones reads it
                self._live_bitmap = np.packbits(self._live_mask(), bitorder="little")
            bitmap = self._live_bitmap
        else:
            bitmap = np.packbits(allowed, bitorder="little")
        return faiss.IDSelectorBitmap(int(self._index.ntotal), faiss.swig_ptr(bitmap)), bitmap

    def _exact_pays(self, k: int, returnable: int) -> bool:
        """Whether an HNSW or IVF-PQ search is better exact among the `returnable` vectors: a filter allows few of
        the live ones (FEW_ALLOWED_SHARE), or k is a large share of them (LARGE_K_SHARE)."""
        return returnable <= FEW_ALLOWED_SHARE * len(self) or k >= LARGE_K_SHARE * returnable

    def _returnable_positions(self, allowed: np.ndarray | None) -> np.ndarray:
        """The positions a search may return: those `allowed` (`_allowed_positions`), else the live ones."""
        if allowed is not None:
            return np.flatnonzero(allowed)
        if not self._dead.size:
            return np.arange(int(self._index.ntotal))
        return np.flatnonzero(self._live_mask())

    def _approximate(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None, exact_top: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The faiss search itself (exact for a flat index), as `search` returns it; rows may come back short."""
        selector, _bitmap = self._selector(allowed)
        index = self._search_index() if selector is None else self._inner
        scores, positions = index.search(query, k, params=self._search_params(k, selector, exact_top))
        found = positions >= 0
        ids = np.where(found, self._id_map()[np.where(found, positions, 0)], -1)
        return np.where(found, scores, -np.inf).astype(np.float32), ids.astype(np.int64)

    def _exact_among(self, query: np.ndarray, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`search`'s results among the stored vectors at `positions`, by exact cosine (the stored vectors are unit
        length; IVF-PQ's are its refinement's, exact or 8-bit). They are read a chunk at a time, keeping the best k
        so far: memory grows with k, not with the positions (the whole library, for a large k)."""
        kept_scores, kept = np.empty((len(query), 0), np.float32), np.empty((len(query), 0), np.int64)
        for start in range(0, len(positions), _RECONSTRUCTED_ROWS):
            chunk = positions[start : start + _RECONSTRUCTED_ROWS]
            scores = np.concatenate([kept_scores, query @ self._inner.reconstruct_batch(chunk).T], axis=1)
            candidates = np.concatenate([kept, np.broadcast_to(chunk, (len(query), len(chunk)))], axis=1)
            best = _best_columns(scores, k)
            kept_scores, kept = np.take_along_axis(scores, best, axis=1), np.take_along_axis(candidates, best, axis=1)
        order = np.argsort(-kept_scores, axis=1)
        found_scores, found_ids = _empty_hits(len(query), k)
        found_scores[:, : order.shape[1]] = np.take_along_axis(kept_scores, order, axis=1)
        found_ids[:, : order.shape[1]] = self._id_map()[np.take_along_axis(kept, order, axis=1)]
        return found_scores, found_ids

    def _search_params(self, k: int, selector: Any, exact_top: int) -> Any:
        if self.type == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.params.ef_search, k), sel=selector)
        if self.type == "ivfpq":
            ivf = faiss.extract_index_ivf(self._inner)
            nprobe = self.params.nprobe or auto_nprobe(ivf.nlist)
            base = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
            k_factor = max(1.0, self.params.k_factor * exact_top / k)  # faiss re-ranks k x k_factor candidates
            return faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=base)
        return None if selector is None else faiss.SearchParameters(sel=selector)

    def _search_index(self) -> Any:
        """The inner index to search: a GPU copy of an exact index when a GPU is usable."""
        if not self._use_gpu or self.type != "flat":
            return self._inner
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


def _new_inner(kind: str, dim: int, count: int, params: IndexParams) -> tuple[Any, IndexParams]:
    """An empty faiss index of `kind` and the parameters with automatic choices filled in."""
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = params.ef_construction
        return hnsw, params
    if kind == "ivfpq":
        nlist = params.nlist or auto_nlist(count)
        pq_m = params.pq_m or auto_pq_m(dim)
        if dim % pq_m:
            raise VectorIndexError("pq_m", f"{pq_m} sub-quantizers do not divide the dimension {dim}")
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        if params.refine == "flat":
            refine = faiss.IndexFlatIP(dim)
        else:
            refine = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexRefine(ivf, refine), dataclasses.replace(params, nlist=nlist, pq_m=pq_m)
    return faiss.IndexFlatIP(dim), params


def _among(batches: VectorBatches, wanted: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows of each batch whose ids are among `wanted` (sorted)."""
    for ids, vectors in batches:
        keep = among(ids, wanted)
        yield ids[keep], vectors[keep]


def _stacked_unit(batches: VectorBatches, dim: int) -> np.ndarray:
    """The vectors of all `batches`, normalised, in one (n, dim) matrix."""
    return np.concatenate([np.empty((0, dim), np.float32), *(l2_normalise(rows, dim) for _, rows in batches)])


def _best_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of its k best scores (all of them when fewer), in no order."""
    take = min(k, scores.shape[1])
    return np.argpartition(-scores, take - 1, axis=1)[:, :take]


def _empty_hits(queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((queries, k), -np.inf, np.float32), np.full((queries, k), -1, np.int64)

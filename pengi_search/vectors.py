"""FAISS vector indexes over L2-normalised float32 vectors, searched by inner product (cosine similarity).

Ids are the database's window ids, so a hit leads straight to `Store.window_details`. The database is the source
of truth: `VectorIndex.load_or_rebuild` checks a saved index against the ids the database expects and rebuilds it
from the stored vectors when they differ, or when the file is missing, corrupt or was built for something else.

Index types:
- 'flat': exact search; the default, right for libraries up to a few hundred thousand windows.
- 'hnsw': HNSW graph (IndexHNSWFlat); fast and accurate, memory of flat plus the graph, slow to build.
- 'ivfpq': IVF with product-quantised codes, trained on the vectors, re-ranked with exact (or 8-bit) vectors so
  that recall stays high; needs IVFPQ_MIN_VECTORS to train and falls back to 'flat' below that.

When faiss has GPU support and a GPU is visible, exact ('flat') searches run on the GPU; everything else is CPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

from pengi_search.choices import IndexType
from pengi_search.errors import PengiSearchError

log = logging.getLogger(__name__)

INDEX_TYPES = tuple(t.value for t in IndexType)  # what a caller or a saved file may name
REFINE_TYPES = ("flat", "sq8")
IVFPQ_MIN_VECTORS = 10_000  # ~39 training points per IVF cell and 39 x 256 per PQ codebook

_MAGIC = b"PENGIVEC"
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQII")  # magic, format version, payload bytes, payload crc32, metadata bytes
_META_KEYS = {"params", "dim", "count", "tag"}
_IO_BLOCK = 1 << 22
_TRAIN_SEED = 1234

VectorsFn = Callable[[], tuple[np.ndarray, np.ndarray]]
FetchFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class VectorIndexError(PengiSearchError):
    """Bad vectors or ids, or an index file that cannot be read or written."""


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
        raise VectorIndexError(where, f"{int((norms == 0).sum())} zero vector(s) cannot be normalised")
    array /= norms
    return array


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    return int(getattr(faiss, "get_num_gpus", lambda: 0)())


class VectorIndex:
    """A FAISS index keyed by int64 ids. Build with `build`, `load` or `load_or_rebuild`.

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
        self._sorted_ids: np.ndarray | None = None

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
    ) -> VectorIndex:
        """An index of `vectors` (n, d) under `ids`; `dim` is needed only when there are no vectors."""
        params = params or IndexParams()
        matrix = np.asarray(vectors)
        count = len(np.asarray(ids))
        if dim is None:
            if matrix.ndim != 2 or matrix.shape[1] == 0:
                raise VectorIndexError("build", "no vectors and no dimension given")
            dim = int(matrix.shape[1])
        kind = effective_type(params.type, count)
        if kind != params.type:
            log.warning(
                "IVF-PQ needs at least %d vectors to train (have %d); using the exact flat index",
                IVFPQ_MIN_VECTORS,
                count,
            )
        unit = l2_normalise(matrix.reshape(-1, dim) if count == 0 else matrix, dim)
        inner, params = _new_inner(kind, dim, len(unit), dataclasses.replace(params, type=kind))
        if kind == "ivfpq":
            inner.train(_training_sample(unit, params.nlist or 1))
        index = cls(faiss.IndexIDMap2(inner), params, use_gpu=use_gpu)
        index._add_unit(np.asarray(ids, dtype=np.int64).reshape(-1), unit)
        return index

    # -- contents --------------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def type(self) -> str:
        return self.params.type

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        """The ids in the index, sorted (int64)."""
        return self._sorted().copy()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (normalised here) under new, unique ids."""
        new_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        unit = l2_normalise(vectors, self.dim) if len(new_ids) else np.empty((0, self.dim), np.float32)
        self._add_unit(new_ids, unit)

    def remove(self, ids: np.ndarray) -> int:
        """Remove these ids (unknown ones are ignored); returns how many were removed.

        Flat indexes remove in place; HNSW and IVF-PQ indexes are re-filled from their own stored vectors.
        """
        gone = np.asarray(ids, dtype=np.int64).reshape(-1)
        if gone.size == 0 or len(self) == 0:
            return 0
        if self.type == "flat":
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(gone)))
        else:
            id_map = self._id_map()
            keep = ~np.isin(id_map, gone)
            removed = int((~keep).sum())
            if removed:
                stored = self._inner.reconstruct_n(0, len(self))
                self._index.reset()
                self._index.add_with_ids(np.ascontiguousarray(stored[keep]), id_map[keep])
        self._changed()
        return removed

    def sync(self, expected_ids: np.ndarray, fetch: FetchFn) -> tuple[int, int]:
        """Make the ids equal `expected_ids`: drop extra ids, add missing ones with `fetch(missing) -> (ids, vecs)`.

        Returns (added, removed).
        """
        expected = np.unique(np.asarray(expected_ids, dtype=np.int64))
        current = self.ids()
        extra = np.setdiff1d(current, expected, assume_unique=True)
        missing = np.setdiff1d(expected, current, assume_unique=True)
        removed = self.remove(extra)
        added = 0
        if missing.size:
            new_ids, new_vectors = fetch(missing)
            self.add(new_ids, new_vectors)
            added = len(new_ids)
        return added, removed

    # -- search ----------------------------------------------------------------------------------------------

    def tune(self, *, ef_search: int | None = None, nprobe: int | None = None, k_factor: int | None = None) -> None:
        """Change search-time knobs: HNSW efSearch, IVF cells probed, IVF-PQ re-ranking factor."""
        knobs = {"ef_search": ef_search, "nprobe": nprobe, "k_factor": k_factor}
        self.params = dataclasses.replace(self.params, **{name: v for name, v in knobs.items() if v is not None})

    def search(
        self, queries: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best ids for each query row by cosine similarity: (scores float32 (q, k), ids int64 (q, k)).

        Queries are normalised here. `allowed_ids` restricts the search to those ids (a filtered search).
        Empty slots (fewer than k candidates) have id -1 and score -inf.
        """
        if int(k) < 1:
            raise VectorIndexError("search", f"k must be at least 1, got {k}")
        query = l2_normalise(queries, self.dim, where="query")
        selector, keep_alive = self._selector(allowed_ids)
        if len(self) == 0 or (keep_alive is not None and not keep_alive.any()):
            return _empty_hits(len(query), int(k))
        index = self._search_index() if selector is None else self._inner
        scores, positions = index.search(query, int(k), params=self._search_params(int(k), selector))
        found = positions >= 0
        ids = np.where(found, self._id_map()[np.where(found, positions, 0)], -1)
        return np.where(found, scores, -np.inf).astype(np.float32), ids.astype(np.int64)

    # -- files -----------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], tag: str = "") -> None:
        """Write the index atomically (temp file, fsync, rename, fsync of the folder).

        `tag` names what the vectors came from (e.g. the embedder); `load_or_rebuild` rebuilds on another tag.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        meta = json.dumps(
            {"params": dataclasses.asdict(self.params), "dim": self.dim, "count": len(self), "tag": tag}
        ).encode()
        try:
            with open(temp, "wb") as out:
                out.write(_HEADER.pack(_MAGIC, _FORMAT_VERSION, 0, 0, len(meta)))
                out.write(meta)
                size, crc = _write_payload(self._index, out, zlib.crc32(meta))
                out.seek(0)
                out.write(_HEADER.pack(_MAGIC, _FORMAT_VERSION, size, crc, len(meta)))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, (OSError, RuntimeError)):
                raise VectorIndexError(str(target), f"cannot write the index: {exc}") from exc
            raise
        _fsync_dir(target.parent)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], params: IndexParams | None = None, *, use_gpu: bool | None = None
    ) -> tuple[VectorIndex, str]:
        """Read an index written by `save`; returns it and its tag.

        The file's own build parameters are kept; the search knobs of `params` apply when given. Raises
        FileNotFoundError when missing and VectorIndexError when damaged.
        """
        source = Path(path)
        with open(source, "rb") as stream:
            meta = _read_header(source, stream)
            try:
                index = faiss.read_index(faiss.PyCallbackIOReader(stream.read, _IO_BLOCK))
            except RuntimeError as exc:
                raise VectorIndexError(str(source), f"faiss cannot read the index: {exc}") from exc
        if not isinstance(index, faiss.IndexIDMap2) or index.d != meta["dim"] or index.ntotal != meta["count"]:
            raise VectorIndexError(str(source), "index contents do not match the file header")
        try:
            stored = IndexParams(**meta["params"])
        except (TypeError, VectorIndexError) as exc:
            raise VectorIndexError(str(source), f"bad parameters in the header: {exc}") from exc
        loaded = stored if params is None else stored.with_search_knobs(params)
        return cls(index, loaded, use_gpu=use_gpu), str(meta["tag"])

    @classmethod
    def load_or_rebuild(
        cls,
        path: str | os.PathLike[str],
        expected_ids: np.ndarray,
        vectors_fn: VectorsFn,
        *,
        params: IndexParams | None = None,
        tag: str = "",
        save: bool = True,
        dim: int | None = None,
        use_gpu: bool | None = None,
    ) -> tuple[VectorIndex, bool]:
        """The index at `path` if it holds exactly `expected_ids` under `tag`, else one rebuilt from `vectors_fn()`.

        Returns (index, rebuilt). A rebuilt index is saved when `save` (a read-only folder only logs a warning).
        `vectors_fn` returns (ids, vectors), e.g. `lambda: store.vectors("text")`.
        """
        params = params or IndexParams()
        expected = np.unique(np.asarray(expected_ids, dtype=np.int64))
        try:
            index, stored_tag = cls.load(path, params, use_gpu=use_gpu)
            reason = _stale_reason(index, stored_tag, expected, params, tag)
            if reason is None:
                return index, False
        except FileNotFoundError:
            reason = "no index file"
        except VectorIndexError as exc:
            reason = exc.reason
        log.info("rebuilding vector index %s: %s", path, reason)
        ids, vectors = vectors_fn()
        index = cls.build(ids, vectors, params, dim=dim, use_gpu=use_gpu)
        if save:
            try:
                index.save(path, tag)
            except VectorIndexError as exc:
                log.warning("rebuilt index not saved: %s", exc)
        return index, True

    # -- internals -------------------------------------------------------------------------------------------

    def _add_unit(self, ids: np.ndarray, unit: np.ndarray) -> None:
        if len(unit) != len(ids):
            raise VectorIndexError("add", f"{len(ids)} ids for {len(unit)} vectors")
        if len(ids) == 0:
            return
        order = np.sort(ids)
        if (np.diff(order) == 0).any():
            raise VectorIndexError("add", "ids repeat within the batch")
        existing = self._sorted()
        pos = np.searchsorted(existing, order)
        clash = order[np.isin(order, existing, assume_unique=True)] if existing.size else order[:0]
        if clash.size:
            raise VectorIndexError("add", f"ids already in the index: {clash[:5].tolist()}")
        self._index.add_with_ids(unit, ids)
        self._changed(sorted_ids=np.insert(existing, pos, order))

    def _sorted(self) -> np.ndarray:
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self._id_map())
        return self._sorted_ids

    def _changed(self, sorted_ids: np.ndarray | None = None) -> None:
        self._gpu_index = None
        self._positions_to_ids = None
        self._sorted_ids = sorted_ids

    def _id_map(self) -> np.ndarray:
        """Index position -> id."""
        if self._positions_to_ids is None:
            self._positions_to_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        return self._positions_to_ids

    def _selector(self, allowed_ids: np.ndarray | None) -> tuple[Any, np.ndarray | None]:
        """A faiss selector over index positions (and the bitmap it reads, which must outlive the search)."""
        if allowed_ids is None:
            return None, None
        mask = np.isin(self._id_map(), np.asarray(allowed_ids, dtype=np.int64))
        bitmap = np.packbits(mask, bitorder="little")
        return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap)), bitmap

    def _search_params(self, k: int, selector: Any) -> Any:
        if self.type == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.params.ef_search, k), sel=selector)
        if self.type == "ivfpq":
            ivf = faiss.extract_index_ivf(self._inner)
            nprobe = self.params.nprobe or _auto_nprobe(ivf.nlist)
            base = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
            return faiss.IndexRefineSearchParameters(k_factor=self.params.k_factor, base_index_params=base)
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
        nlist = params.nlist or _auto_nlist(count)
        pq_m = params.pq_m or _auto_pq_m(dim)
        if dim % pq_m:
            raise VectorIndexError("pq_m", f"{pq_m} sub-quantizers do not divide the dimension {dim}")
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        if params.refine == "flat":
            refine = faiss.IndexFlatIP(dim)
        else:
            refine = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexRefine(ivf, refine), dataclasses.replace(params, nlist=nlist, pq_m=pq_m)
    return faiss.IndexFlatIP(dim), params


def _auto_nlist(count: int) -> int:
    """About 2 sqrt(n) IVF cells (a power of two), with at least 39 training points each."""
    nlist = 1 << max(4, round(np.log2(2 * np.sqrt(max(count, 1)))))
    while nlist > 16 and nlist * 39 > count:
        nlist //= 2
    return nlist


def _auto_pq_m(dim: int) -> int:
    """The largest divisor of dim up to dim / 16 (16 dimensions per byte of code), but up to 8 for small dims."""
    target = max(dim // 16, min(dim, 8))
    return max(m for m in range(1, target + 1) if dim % m == 0)


def _auto_nprobe(nlist: int) -> int:
    """nlist / 64 cells, at least 16: recall is bound by the PQ shortlist long before (benchmarks/bench_vectors.py)."""
    return int(min(nlist, max(16, nlist // 64)))


def _training_sample(unit: np.ndarray, nlist: int) -> np.ndarray:
    """A fixed random subset (50 points per cell, at least 256 x 39 for the PQ codebooks): deterministic builds."""
    size = min(len(unit), max(50 * nlist, 256 * 39))
    if size == len(unit):
        return unit
    rows = np.sort(np.random.default_rng(_TRAIN_SEED).choice(len(unit), size, replace=False))
    return unit[rows]


def _empty_hits(queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((queries, k), -np.inf, np.float32), np.full((queries, k), -1, np.int64)


def _stale_reason(
    index: VectorIndex, stored_tag: str, expected: np.ndarray, params: IndexParams, tag: str
) -> str | None:
    if stored_tag != tag:
        return f"built for {stored_tag!r}, expected {tag!r}"
    wanted = effective_type(params.type, len(expected))
    if index.type != wanted:
        return f"index type is {index.type}, expected {wanted}"
    if not np.array_equal(index.ids(), expected):
        return f"ids differ from the database ({len(index)} in the file, {len(expected)} expected)"
    return None


def _write_payload(index: Any, out: BinaryIO, crc: int) -> tuple[int, int]:
    """Stream faiss's serialisation into `out`; returns its size and the crc32 continued from `crc`."""
    size = 0

    def write(chunk: bytes) -> int:
        nonlocal size, crc
        out.write(chunk)
        size += len(chunk)
        crc = zlib.crc32(chunk, crc)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(write, _IO_BLOCK))
    return size, crc


def _read_header(source: Path, stream: BinaryIO) -> dict[str, Any]:
    """Check magic, version, length and checksum; leaves `stream` at the start of the faiss payload."""
    head = stream.read(_HEADER.size)
    if len(head) != _HEADER.size:
        raise VectorIndexError(str(source), "truncated header")
    magic, version, payload_size, crc, meta_size = _HEADER.unpack(head)
    if magic != _MAGIC:
        raise VectorIndexError(str(source), "not a pengi-search vector index")
    if version != _FORMAT_VERSION:
        raise VectorIndexError(str(source), f"format version {version}, this pengi-search reads {_FORMAT_VERSION}")
    expected_size = _HEADER.size + meta_size + payload_size
    actual_size = os.fstat(stream.fileno()).st_size
    if actual_size != expected_size:
        raise VectorIndexError(str(source), f"{actual_size} bytes where the header promises {expected_size}")
    meta_bytes = stream.read(meta_size)
    payload_start = stream.tell()
    actual_crc = zlib.crc32(meta_bytes)
    while chunk := stream.read(_IO_BLOCK):
        actual_crc = zlib.crc32(chunk, actual_crc)
    if actual_crc != crc:
        raise VectorIndexError(str(source), "checksum mismatch (the file is damaged)")
    try:
        meta = json.loads(meta_bytes)
        if not _META_KEYS.issubset(meta):
            raise ValueError(f"missing {sorted(_META_KEYS - set(meta))}")
    except (ValueError, TypeError) as exc:
        raise VectorIndexError(str(source), f"unreadable header metadata: {exc}") from exc
    stream.seek(payload_start)
    return meta


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); not possible on every platform."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

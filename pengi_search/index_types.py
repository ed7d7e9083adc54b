"""The FAISS index types a library's vectors go in, as faiss makes and searches each one.

- 'flat': exact search; the default, right for libraries up to a few hundred thousand windows.
- 'hnsw': HNSW graph (IndexHNSWFlat); fast and accurate, memory of flat plus the graph, slow to build.
- 'ivfpq': IVF with product-quantised codes, trained on the vectors, re-ranked with exact (or 8-bit) vectors so
  that recall stays high; needs IVFPQ_MIN_VECTORS to train and falls back to 'flat' below that.

`IndexParams` holds how an index is built and searched; `vectors.VectorIndex` keeps ids and removals around the
faiss index made here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

from .choices import IndexType
from .errors import OptionError
from .ivf_sizes import auto_nlist, auto_nprobe, auto_pq_m, training_rows
from .vector_file import VectorIndexError

INDEX_TYPES = tuple(t.value for t in IndexType)  # what a caller or a saved file may name
REFINE_TYPES = ("flat", "sq8")
IVFPQ_MIN_VECTORS = 10_000  # ~39 training points per IVF cell and 39 x 256 per PQ codebook

# The IVF-PQ fallback's own logger: a command that reports the index it built in its own words (`rebuild-index`)
# silences it, so that the user is not told twice.
fallback_log = logging.getLogger(f"{__name__}.fallback")

# The search knobs a user may set, and the index type each tunes: HNSW's efSearch (the candidates its graph walk
# keeps), IVF-PQ's nprobe (the cells it searches). Higher finds more of the exact results, and takes longer.
SEARCH_KNOBS = {"ef_search": "hnsw", "nprobe": "ivfpq"}
# A knob's setting: a value the user chose, or AUTO, the automatic choice (recorded as None: DEFAULT_EF_SEARCH for
# efSearch, a share of the cells for nprobe, `ivf_sizes.auto_nprobe`).
AUTO = "auto"
KnobSetting = int | Literal["auto"]
DEFAULT_EF_SEARCH = 64

Sample = Callable[[np.ndarray], np.ndarray]  # `sample(rows)`: the unit vectors at those positions of the ones indexed


@dataclass(frozen=True)
class IndexParams:
    """How an index is built and searched; ef_search, nprobe and k_factor may change on a loaded index.

    None for nlist, pq_m or nprobe means: chosen from the number of vectors and their dimension; for ef_search,
    DEFAULT_EF_SEARCH. A search knob left None is thus told from one the user chose, whatever its value.
    """

    type: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int | None = None
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
        sizes = {name: getattr(self, name) for name in ("hnsw_m", "ef_construction", "k_factor")}
        optional = ("ef_search", "nlist", "pq_m", "nprobe")
        sizes.update({name: getattr(self, name) for name in optional if getattr(self, name) is not None})
        for name, value in sizes.items():
            if int(value) < 1:
                raise VectorIndexError(name, f"must be at least 1, got {value}")

    def with_search_knobs(self, other: IndexParams) -> IndexParams:
        """These build parameters with the search-time knobs `other` sets (its None: these parameters' own)."""
        return dataclasses.replace(
            self,
            ef_search=other.ef_search or self.ef_search,
            nprobe=other.nprobe or self.nprobe,
            k_factor=other.k_factor,
        )


def checked_knobs(
    knobs: Mapping[str, KnobSetting | None], types: Iterable[str], *, asked: bool
) -> dict[str, int | None]:
    """The search knobs given (those not None), each for the index type it tunes (SEARCH_KNOBS), as IndexParams
    holds them (AUTO: None): `types` are the library's indexes' types, `asked`: as the caller asks for them (else as
    they are). OptionError otherwise (AUTO too: it sets the knob); a value under 1 is `IndexParams`'s to refuse."""
    given = {name: None if value == AUTO else int(value) for name, value in knobs.items() if value is not None}
    for name in given:
        tuned = SEARCH_KNOBS[name]
        others = sorted(set(types) - {tuned})
        if others:
            whose = "the type asked for" if asked else "the library's type; {index_type} " + tuned + " changes it"
            raise OptionError(name, f"tunes {tuned} indexes, not {' and '.join(others)} ({whose})")
    return given


def knob_setting(text: str) -> KnobSetting:
    """A search knob as a user writes it: a whole number of at least 1, or `auto` (ValueError otherwise)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a whole number nor {AUTO}") from None
    if value < 1:
        raise ValueError(f"{value} is under 1; give at least 1, or {AUTO}")
    return value


def searched_with(index_type: str | None, params: Mapping[str, Any]) -> dict[str, int | None]:
    """Each search knob (SEARCH_KNOBS) as a search of an index of `index_type` built with `params` uses it; None
    where that type has no such knob."""
    return {
        "ef_search": (params.get("ef_search") or DEFAULT_EF_SEARCH) if index_type == "hnsw" else None,
        "nprobe": cells_probed(params["nprobe"], params["nlist"]) if index_type == "ivfpq" else None,
    }


def cells_probed(nprobe: int | None, nlist: int) -> int:
    """The IVF cells a search probes: `nprobe` (None: chosen from the cells), at most every cell (as faiss does)."""
    return min(nlist, nprobe or auto_nprobe(nlist))


def effective_type(requested: str, count: int) -> str:
    """The index type actually built for `count` vectors: IVF-PQ needs enough vectors to train."""
    return "flat" if requested == "ivfpq" and count < IVFPQ_MIN_VECTORS else requested


def trained_faiss_index(
    params: IndexParams, dim: int, count: int, sample: Sample, *, name: str
) -> tuple[Any, IndexParams]:
    """An empty faiss index for `count` vectors of `dim`, of the type `effective_type` builds, trained on
    `sample(rows)` for IVF-PQ, and its parameters (`new_faiss_index`). `name` says which index a fallback's warning
    is about (a library has two, built one after the other)."""
    kind = effective_type(params.type, count)
    if kind != params.type:
        fallback_log.warning(
            "%s: IVF-PQ needs at least %d vectors to train (have %d); using the exact flat index",
            name,
            IVFPQ_MIN_VECTORS,
            count,
        )
    inner, params = new_faiss_index(dim, count, dataclasses.replace(params, type=kind))
    if kind == "ivfpq":
        inner.train(sample(training_rows(count, params.nlist or 1)))
    return inner, params


def new_faiss_index(dim: int, count: int, params: IndexParams) -> tuple[Any, IndexParams]:
    """An empty faiss index of `params.type` for `count` vectors of `dim`, and the parameters with the automatic
    choices filled in."""
    if params.type == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = params.ef_construction
        return hnsw, params
    if params.type == "ivfpq":
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


def search_parameters(params: IndexParams, inner: Any, k: int, selector: Any, exact_top: int) -> Any:
    """faiss's parameters for a search of `inner` (an index of `params.type`) for k results, of which the first
    `exact_top` need a search for that many (`WindowIndex.search`); `selector` picks the positions it may return."""
    if params.type == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(params.ef_search or DEFAULT_EF_SEARCH, k), sel=selector)
    if params.type == "ivfpq":
        ivf = faiss.extract_index_ivf(inner)
        base = faiss.SearchParametersIVF(nprobe=cells_probed(params.nprobe, ivf.nlist), sel=selector)
        k_factor = max(1.0, params.k_factor * exact_top / k)  # faiss re-ranks k x k_factor candidates
        return faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=base)
    return None if selector is None else faiss.SearchParameters(sel=selector)

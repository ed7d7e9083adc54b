"""Arrays of ids (window ids, FAISS ids) as numpy keeps them: sorted, distinct, never hashed."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def id_array(ids: Iterable[int]) -> np.ndarray:
    """`ids` as an int64 array (1-D): an array as it is, any other iterable read into one (never a Python set,
    which takes 60 bytes an id)."""
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64, copy=False).reshape(-1)
    return np.fromiter((int(i) for i in ids), dtype=np.int64)


def sorted_unique(ids: np.ndarray) -> np.ndarray:
    """The distinct ids, sorted: `np.unique` by sorting. numpy 2.4's `unique` (and `setdiff1d` without
    `assume_unique`) hashes integers, 20 times slower: half a second for the 200,000 ids of a library that every
    command checks its FAISS file against."""
    ordered = np.sort(ids)
    if ordered.size < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def among(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Per id: whether it is among `wanted` (sorted), found by binary search (no hashing)."""
    if not len(wanted):
        return np.zeros(len(ids), bool)
    return wanted[np.minimum(np.searchsorted(wanted, ids), len(wanted) - 1)] == ids

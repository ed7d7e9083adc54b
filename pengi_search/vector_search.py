"""A vector index's search side, over the positions of its faiss index (0 to n - 1; its id map turns them into
the database's window ids): which positions a search may return (those a filter allows, the live ones), the faiss
hits found there, and exact search among them, a chunk of stored vectors at a time.

An HNSW or IVF-PQ search is exact among the vectors it may return when a filter allows few of them
(FEW_ALLOWED_SHARE) or it asks for a large share of them (LARGE_K_SHARE); `vectors.VectorIndex.search` also scores a
row exactly that the graph walk or the cells probed leave short.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .chunking import chunk_slices

# A filtered HNSW or IVF-PQ search allowing at most this share of the live vectors (a folder, a rare name) is exact
# among them: the graph or the cells probed hold few allowed vectors near the query (of the 10 best allowed among
# 20,000 clustered vectors, HNSW found 4 at 1%, 1 at 0.2%; 9.6 at 5%). Exact, it costs at most this share of a flat
# search.
FEW_ALLOWED_SHARE = 0.1
# An HNSW or IVF-PQ search for at least this share of the vectors it may return is exact among them: an HNSW walk
# with efSearch k, or the IVF cells probed, reach fewer than k of them (100 of 102 windows; 715 of 2,000 asked of
# 20,000), and exact costs less: at a tenth of 20,000 64-d vectors, 0.7 ms a query against HNSW's 2.6 ms.
LARGE_K_SHARE = 0.1


def live_mask(id_map: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Per position: whether its id (`id_map`) is live, not among the tombstoned ids `dead`."""
    return ~np.isin(id_map, dead)


def allowed_positions(id_map: np.ndarray, allowed_ids: np.ndarray | None, dead: np.ndarray) -> np.ndarray | None:
    """Per position: whether its id is among `allowed_ids` and live. None without a filter."""
    if allowed_ids is None:
        return None
    mask = np.isin(id_map, np.asarray(allowed_ids, dtype=np.int64))
    if dead.size:
        mask &= live_mask(id_map, dead)
    return mask


def returnable_positions(allowed: np.ndarray | None, id_map: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """The positions a search may return: those `allowed` (`allowed_positions`), else the live ones."""
    if allowed is not None:
        return np.flatnonzero(allowed)
    if not dead.size:
        return np.arange(len(id_map))
    return np.flatnonzero(live_mask(id_map, dead))


def found_hits(scores: np.ndarray, positions: np.ndarray, id_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A faiss search's (scores, positions) as a search returns them: ids, and empty slots (position -1) as
    `empty_hits` has them."""
    found = positions >= 0
    ids = np.where(found, id_map[np.where(found, positions, 0)], -1)
    return np.where(found, scores, -np.inf).astype(np.float32), ids.astype(np.int64)


def exact_pays(k: int, returnable: int, live: int) -> bool:
    """Whether an HNSW or IVF-PQ search for k is better exact among the `returnable` vectors of the `live` ones: a
    filter allows few of them (FEW_ALLOWED_SHARE), or k is a large share of them (LARGE_K_SHARE)."""
    return returnable <= FEW_ALLOWED_SHARE * live or k >= LARGE_K_SHARE * returnable


def exact_among(
    stored: Any, id_map: np.ndarray, query: np.ndarray, k: int, positions: np.ndarray, chunk_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best ids among the vectors `stored` (a faiss index) holds at `positions`, by exact cosine, as
    `VectorIndex.search` returns them; `id_map` turns positions into ids. The stored vectors are unit length
    (IVF-PQ's are its refinement's, exact or 8-bit); they are read `chunk_rows` at a time, keeping the best k so far:
    memory grows with k, not with the positions (the whole library, for a large k)."""
    kept_scores, kept = np.empty((len(query), 0), np.float32), np.empty((len(query), 0), np.int64)
    for rows in chunk_slices(len(positions), chunk_rows):
        chunk = positions[rows]
        scores = np.concatenate([kept_scores, query @ stored.reconstruct_batch(chunk).T], axis=1)
        candidates = np.concatenate([kept, np.broadcast_to(chunk, (len(query), len(chunk)))], axis=1)
        best = _best_columns(scores, k)
        kept_scores, kept = np.take_along_axis(scores, best, axis=1), np.take_along_axis(candidates, best, axis=1)
    order = np.argsort(-kept_scores, axis=1)
    found_scores, found_ids = empty_hits(len(query), k)
    found_scores[:, : order.shape[1]] = np.take_along_axis(kept_scores, order, axis=1)
    found_ids[:, : order.shape[1]] = id_map[np.take_along_axis(kept, order, axis=1)]
    return found_scores, found_ids


def empty_hits(queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of k empty slots (score -inf, id -1), as a search that finds nothing returns them."""
    return np.full((queries, k), -np.inf, np.float32), np.full((queries, k), -1, np.int64)


def _best_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of its k best scores (all of them when fewer), in no order."""
    take = min(k, scores.shape[1])
    return np.argpartition(-scores, take - 1, axis=1)[:, :take]

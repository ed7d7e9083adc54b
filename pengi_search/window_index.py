"""What every index of the library's windows promises a search, stated once: `WindowIndex`, which the FAISS index
(`vectors.VectorIndex`), the hybrid ranking's index (`ranking.HybridIndex`) and the server's `serve.live.GuardedIndex`
(a `VectorIndex` behind a lock) all are, and `Wanted`, the windows a search may return and how exact it must be.

Search code (`search.search_index`) relies on the promise about empty slots to know when it holds every candidate.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod

import numpy as np

from .vector_file import VectorIndexError


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: == on the id array would compare element by element
class Wanted:
    """Which windows a search may return (`allowed_ids`; None: every one) and how exact it must be (`exact_top`,
    `exact`), as `WindowIndex.search` explains them."""

    allowed_ids: np.ndarray | None = None
    exact_top: int | None = None
    exact: bool = False


class WindowIndex(ABC):
    """An index of window vectors that a query row is searched against by cosine similarity."""

    @abstractmethod
    def __len__(self) -> int:
        """How many windows the index holds (a search without `allowed_ids` may return that many)."""

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

        `allowed_ids` restricts the search to those ids (a filtered search). `exact_top`: only the first that many
        results need the accuracy of a search for that many, the rest are spares. `exact`: exact, as flat.

        Every row holds min(k, m) distinct ids, m the windows the search may return (live, and allowed when
        filtered), whatever the index: empty slots (id -1, score -inf) come only after all m, so a caller may take a
        row with an empty slot as every candidate there is.
        """
        k = int(k)
        if k < 1:
            raise VectorIndexError("search", f"k must be at least 1, got {k}")
        return self._search(queries, k, Wanted(allowed_ids, exact_top, exact))

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int, wanted: Wanted) -> tuple[np.ndarray, np.ndarray]:
        """`search`, with k checked: what this index does to keep its promise."""

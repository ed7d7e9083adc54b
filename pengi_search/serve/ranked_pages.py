"""The ranked results of the server's latest deep searches, so that the pages after them are slices, not searches.

A page past the first asks `search_pages` for every result up to its last: an exact search of the whole index and
the details of every hit before the page, about a flat search's cost however few hits it shows. So such a search is
made a few pages deeper than asked (`LOOK_AHEAD`), and its hits are kept, for the `KEPT` searches used last, by what
ranks them (the query, its filters, `k`) and the library's version (`LiveLibrary.version`: a library found changed
is searched anew). A next page within them, or past the last result, is cut from them. A first page is searched
every time, as before: it is the index's own fast search, which keeping would save little.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from ..search import Hit

KEPT = 32  # searches whose ranked hits are kept (each at most the server's deepest page: 1,010 hits by default)
LOOK_AHEAD = 4  # pages searched past the one asked for, for the next ones


@dataclass(frozen=True)
class _Ranked:
    """A search's first hits, and whether they are all of its results (fewer were found than were asked for)."""

    hits: list[Hit]
    complete: bool


class RankedPages:
    """The ranked hits of recent deep searches, by a key that names the search and the library's version
    (thread-safe; two requests that miss at once both search, and the latter's hits are kept)."""

    def __init__(self, version: Callable[[], int], kept: int = KEPT) -> None:
        self._version = version  # the library's version now
        self._kept: OrderedDict[Hashable, _Ranked] = OrderedDict()
        self._most = kept
        self._lock = threading.Lock()

    def page(
        self,
        key: Hashable,
        seen: int,
        k: int,
        offset: int,
        stop: int,
        most_pages: int,
        search: Callable[[int], list[Hit]],
    ) -> list[Hit]:
        """Hits `offset` to `stop` of the search that `key` names, pages of `k`: cut from its kept hits when they
        reach `stop`, else from `search(pages)` (the hits of its first `pages` pages), asked for `LOOK_AHEAD` pages
        more than `stop` needs, at most `most_pages`. `seen`: the library's version, read before its indexes were
        taken for this search; its hits are not kept when the version changed since (they may be of either)."""
        kept_key = (key, seen)
        with self._lock:
            ranked = self._kept.get(kept_key)
            if ranked is not None:
                self._kept.move_to_end(kept_key)
        if ranked is None or (len(ranked.hits) < stop and not ranked.complete):
            needed = -(-stop // k)
            pages = max(needed, min(most_pages, needed + LOOK_AHEAD))
            hits = search(pages)
            ranked = _Ranked(hits, len(hits) < pages * k)
            if self._version() == seen:
                self._keep(kept_key, ranked)
        return ranked.hits[offset:stop]

    def _keep(self, key: Hashable, ranked: _Ranked) -> None:
        with self._lock:
            self._kept[key] = ranked
            self._kept.move_to_end(key)
            while len(self._kept) > self._most:
                self._kept.popitem(last=False)

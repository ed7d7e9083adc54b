"""Search over an indexed library: text -> audio (`query`) and audio -> audio (`similar`).

Both search a FAISS index of window vectors (cosine similarity) and turn window hits into results:
- `by="file"` (default): the best window of each file, with its time range; `by="window"`: every window.
- Filters (`search_filters`: score, path glob, extension, file duration) never cost results: the search fetches
  more candidates, doubling, until `k` results pass the filters or the candidates run out. Duration and a glob's
  literal folder also restrict the FAISS search itself (an id selector from `Store.filter_window_ids`), and so do
  names (the glob's wildcards, extensions) that few files have, once the first candidates show it, so selective
  filters stay cheap on large libraries.

A text query ranks windows by caption, by audio embedding or by both (`ranking`); without a choice, by caption once
every window has captions, else by audio (a library whose captions are still being written is searched whole).
Which embedders embed the query is `query_embedders`. `similar` lives in `similar.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .choices import DEFAULT_HYBRID_WEIGHT, By, Rank
from .chunking import doubling_chunks
from .db import WindowDetails, caption_counts
from .embedders import TextEmbedder, embed_given
from .index_hints import library_index_command
from .json_values import json_score, json_seconds
from .pathnames import path_fields
from .query_embedders import audio_query_embedder, audio_tower_known, query_embedder
from .ranking import HybridIndex
from .search_filters import Filters
from .window_index import WindowIndex

if TYPE_CHECKING:
    from .library import Library
    from .messages import Notify

log = logging.getLogger(__name__)
_FIRST_FETCH = 4  # candidates fetched per wanted result at first (files have several windows)
# Candidates per wanted result past which a search narrows itself to the files whose names pass (a name fewer than
# about one window in 16 has): `_windows_of_named_files`.
_NAMES_AFTER = 16


@dataclass(frozen=True)
class Hit:
    """One search result: a window (the best of its file with `by="file"`) and what Pengi said about it."""

    path: str
    start_s: float
    end_s: float
    score: float
    caption: str
    texts: dict[str, str]
    window_id: int
    query_start_s: float | None = None  # `similar`: the window of the query file that matched
    query_end_s: float | None = None
    ranking: Rank | None = None  # a text query: how it was ranked
    file_id: int | None = None  # the file's id in the store (not in the CLI's JSON)
    # The file is gone from disk (moved or deleted since it was indexed; the library holds it until a run over its
    # folder prunes it or `remove` forgets it): a stat per hit, when it is made.
    missing: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            **path_fields(self.path),
            "start_s": json_seconds(self.start_s),
            "end_s": json_seconds(self.end_s),
            "score": json_score(self.score),
            "caption": self.caption,
            "texts": self.texts,
            "window_id": self.window_id,
            "missing": self.missing,
        }
        if self.query_start_s is not None:
            data["query_start_s"] = json_seconds(self.query_start_s)
            data["query_end_s"] = json_seconds(self.query_end_s)
        if self.ranking is not None:
            data["ranking"] = self.ranking.value
        return data


@dataclass
class _Candidates:
    """Merged hits of all query rows: window id -> (best score, query row that gave it)."""

    best: dict[int, tuple[float, int]] = field(default_factory=dict)
    exhausted: bool = False
    threshold: float = -np.inf  # scores at or above this are final; below it, unfetched windows may compete

    def ranked(self) -> list[tuple[int, float, int]]:
        items = [(wid, score, row) for wid, (score, row) in self.best.items() if score >= self.threshold]
        return sorted(items, key=lambda item: (-item[1], item[0]))


@dataclass(frozen=True)
class SearchScope:
    """What a search returns: the `k` best results, each the best window of its file or any window (`by`), among
    the files the filters accept."""

    k: int = 10
    by: By = By.file
    filters: Filters = Filters()
    exact: bool = False  # searched exactly whatever the index type (HNSW, IVF-PQ): see `search_pages`

    def __post_init__(self) -> None:
        object.__setattr__(self, "by", By(self.by))  # a library caller's plain string: ValueError unless known
        if self.k < 1:
            raise ValueError(f"the number of results must be at least 1, got {self.k}")

    def excluding(self, path: str) -> SearchScope:
        """This scope without the file at `path`, however it is reached (a `similar` query leaves itself out)."""
        return self.without([path, os.path.realpath(path)])

    def without(self, paths: Iterable[str]) -> SearchScope:
        """This scope without the files at `paths`, each as the library holds it (see `Filters.accepts`)."""
        filters = dataclasses.replace(self.filters, exclude_paths=self.filters.exclude_paths.union(paths))
        return dataclasses.replace(self, filters=filters)


@dataclass(frozen=True)
class SearchQuery:
    """One search of `search_many`: its query rows (q, d), what it returns, and each row's time range (`similar`)."""

    rows: np.ndarray
    scope: SearchScope = SearchScope()
    spans: Sequence[tuple[float, float]] | None = None


def search_index(
    library: Library,
    index: WindowIndex,
    queries: np.ndarray,
    scope: SearchScope = SearchScope(),
    *,
    query_spans: Sequence[tuple[float, float]] | None = None,
    allowed: np.ndarray | None = None,
) -> list[Hit]:
    """The results in `scope` for the query rows (q, d), best first, from `index`: the library's
    `vector_index(kind)` or a `HybridIndex`.

    With several query rows a window's score is its best cosine similarity to any of them. `query_spans` gives
    each row's time range (for `similar`'s results). `allowed`: `allowed_ids(library, scope.filters)`, from a
    caller that searches an unchanging library many times with these filters (a folder's 40,000 window ids are
    read in 0.1 s, some 20 times the search itself); None: read here.
    """
    (hits,) = search_many(library, index, [SearchQuery(queries, scope, query_spans)], allowed=allowed)
    return hits


def search_many(
    library: Library, index: WindowIndex, searches: Sequence[SearchQuery], *, allowed: np.ndarray | None = None
) -> list[list[Hit]]:
    """`search_index` of each search, with the hits each would have alone, the searches run together: each round
    asks FAISS once for the rows of every search that wants the same candidates (the first round, all of them),
    and reads the details of their hits in one go (`similar` of a folder's files searched and read them file by
    file). `allowed`: as `search_index`'s, for every search (their filters on the store alike); None: read here,
    once for each set of such filters."""
    allowed_by_store: dict[tuple[Any, ...], np.ndarray | None] = {}

    def store_allowed(filters: Filters) -> np.ndarray | None:
        key = (filters.folder(), filters.min_duration_s, filters.max_duration_s)
        if key not in allowed_by_store:
            allowed_by_store[key] = allowed_ids(library, filters) if allowed is None else allowed
        return allowed_by_store[key]

    rounds = [_Rounds.first(index, search, store_allowed(search.scope.filters)) for search in searches]
    details: dict[int, WindowDetails | None] = {}  # of the windows met so far (None: gone): each is read once
    while pending := [one for one in rounds if one.hits is None]:
        found = _fetch_together(index, pending)
        ranked = [_ranked(candidates, one.search.scope) for one, candidates in zip(pending, found, strict=True)]
        pages = (items[: _first_page(one.search.scope)] for one, items in zip(pending, ranked, strict=True))
        _read_details(library, (wid for page in pages for wid, _, _ in page), details)
        for one, candidates, items in zip(pending, found, ranked, strict=True):
            one.next(library, candidates, _results(library, items, one.search, details))
    return [one.hits or [] for one in rounds]


@dataclass
class _Rounds:
    """Where one search of `search_many` stands: what its next round fetches (the top `fetch` windows of each row,
    among those `allowed`), until its `hits` are known. Filters never cost results: a round that found fewer than
    `k` that pass them is followed by one fetching twice as many candidates."""

    search: SearchQuery
    allowed: np.ndarray | None
    names_left: bool  # the filters on names are applied to hits; to the search itself once that pays (below)
    available: int
    fetch: int
    hits: list[Hit] | None = None

    @classmethod
    def first(cls, index: WindowIndex, search: SearchQuery, allowed: np.ndarray | None) -> _Rounds:
        available = len(index) if allowed is None else int(allowed.size)
        fetch = min(max(search.scope.k * _FIRST_FETCH, 16), available)
        return cls(search, allowed, search.scope.filters.names_files(), available, fetch)

    @property
    def complete(self) -> bool:
        """Whether this round fetches every candidate there is."""
        return self.fetch >= self.available

    def next(self, library: Library, found: _Candidates, hits: list[Hit]) -> None:
        """Take a round's candidates and the hits they gave: the search's hits, or the next round's fetch."""
        k, filters = self.search.scope.k, self.search.scope.filters
        below_min = filters.min_score is not None and found.threshold < filters.min_score
        if len(hits) >= k or found.exhausted or below_min or self.complete:
            self.hits = hits
            return
        if self.names_left and self.fetch >= _NAMES_AFTER * k:
            self.allowed, self.names_left = _windows_of_named_files(library, filters), False
            self.available = int(self.allowed.size)
        self.fetch = min(self.fetch * 2, self.available)


def search_pages(
    library: Library,
    index: WindowIndex,
    queries: np.ndarray,
    scope: SearchScope,
    *,
    offset: int = 0,
    pages: int = 1,
    query_spans: Sequence[tuple[float, float]] | None = None,
) -> list[Hit]:
    """`pages` pages of `scope.k` results from result `offset + 1` on, of one list that pages asked for one at a
    time (offset 0, k, 2k, ...) join without a hit repeated or skipped (`search_index`'s arguments otherwise).

    The first page is `search_index`'s. On an approximate index (HNSW, IVF-PQ) a deeper search does not continue
    it: its wider walk or re-ranking finds hits the first page's missed, which push others down, so that a hit near
    the cut would come twice or never. The later pages are therefore an exact search's results less the first
    page's (its files, or windows): the same list however deep the pages asked, at about a flat search's cost."""
    first = search_index(library, index, queries, scope, query_spans=query_spans)
    stop = offset + scope.k * pages
    if stop <= scope.k or len(first) < scope.k:  # a short first page holds every result
        return first[offset:stop]
    exact = dataclasses.replace(scope, k=stop, exact=True)
    shown = {_identity(hit, scope.by) for hit in first}
    rest = search_index(library, index, queries, exact, query_spans=query_spans)
    return [*first, *(hit for hit in rest if _identity(hit, scope.by) not in shown)][offset:stop]


def _identity(hit: Hit, by: By) -> str | int:
    """What a result is one of: its file (`by="file"`: a file's best window may differ between searches) or window."""
    return hit.path if by is By.file else hit.window_id


def allowed_ids(library: Library, filters: Filters) -> np.ndarray | None:
    """The windows the filters' conditions on the store (folder, durations) leave; None: every window."""
    if not filters.restricts_store():
        return None
    return library.store.filter_window_ids(
        under=filters.folder(), min_duration_s=filters.min_duration_s, max_duration_s=filters.max_duration_s
    )


def _windows_of_named_files(library: Library, filters: Filters) -> np.ndarray:
    """The windows of the files that every filter on files accepts: the store applies the glob's folder and the
    durations, Python the names (the glob's wildcards, the extensions) to the paths of the files left.

    A search whose names few files have (an extension no file had read the details of all 200,000 windows of a
    library, 36 s, looking for hits among ever more of the best windows) goes on among these windows alone. Not from
    the start: it reads every file's path, and names most files have find their hits at once among the best."""
    files = library.store.file_paths(
        under=filters.folder(), min_duration_s=filters.min_duration_s, max_duration_s=filters.max_duration_s
    )
    return library.store.window_ids_of_files(file_id for file_id, path in files if filters.accepts_name(path))


def _fetch_together(index: WindowIndex, rounds: Sequence[_Rounds]) -> list[_Candidates]:
    """Each round's candidates, from one FAISS search of the rows of all the rounds that fetch as many of the same
    windows for the same `k`: each row's top `fetch` windows, the first `k` of them as accurate as a search for `k`
    (the rest stand in for windows that results of the same file or the filters drop). FAISS searches each row on
    its own: together, they find what each would alone (the same scores, measured on flat, HNSW and IVF-PQ
    indexes, below faiss's BLAS threshold of 128,000 rows x dimensions). Past it (125 rows of 1024-d) a flat index
    scores the batch by one matrix product, as does the exact search an HNSW or IVF-PQ index falls back on among few
    allowed windows (`vector_search.exact_among`): a row's float32 score may then differ in the last bit with the
    rows beside it, which can swap near-tied hits between a search alone and one together."""
    groups: dict[tuple[int, int, int, bool], list[int]] = {}  # the rounds (their places) searched together
    for place, one in enumerate(rounds):
        scope = one.search.scope
        groups.setdefault((one.fetch, id(one.allowed), scope.k, scope.exact), []).append(place)
    found = [_Candidates(exhausted=True) for _ in rounds]  # as they stay when nothing is fetched: none is allowed
    for (fetch, _, k, exact), places in groups.items():
        if fetch < 1:
            continue
        rows = [rounds[place].search.rows for place in places]
        allowed = rounds[places[0]].allowed
        scores, ids = index.search(np.concatenate(rows), fetch, allowed_ids=allowed, exact_top=k, exact=exact)
        ends = np.cumsum([len(part) for part in rows])
        for place, part, end in zip(places, rows, ends, strict=True):
            start = end - len(part)
            found[place] = _candidates(scores[start:end], ids[start:end], complete=rounds[place].complete)
    return found


def _candidates(scores: np.ndarray, ids: np.ndarray, *, complete: bool) -> _Candidates:
    """The merged candidates of one search's rows; `complete` when its fetch was every candidate."""
    found = _Candidates(exhausted=True)
    for row in range(len(ids)):
        valid = ids[row] >= 0
        # A row with an empty slot holds every candidate: an index returns min(fetch, all it may), however
        # approximate (`WindowIndex.search`). A full one may have more below its last score.
        if valid.all() and not complete:
            found.exhausted = False
            found.threshold = max(found.threshold, float(scores[row, -1]))
        for wid, score in zip(ids[row][valid].tolist(), scores[row][valid].tolist(), strict=True):
            if wid not in found.best or score > found.best[wid][0]:
                found.best[wid] = (score, row)
    return found


def _ranked(found: _Candidates, scope: SearchScope) -> list[tuple[int, float, int]]:
    """The candidates whose scores are final, best first: (window id, score, query row), above the least score."""
    ranked = found.ranked()
    if scope.filters.min_score is not None:
        ranked = [item for item in ranked if item[1] >= scope.filters.min_score]
    return ranked


def _first_page(scope: SearchScope) -> int:
    """How many of its best candidates a search's hits are looked for among first (most searches need no more)."""
    return 2 * scope.k


def _read_details(library: Library, window_ids: Iterable[int], details: dict[int, WindowDetails | None]) -> None:
    """Add to `details` those of `window_ids` it lacks, read from the store in one go (None: no longer there)."""
    wanted = {wid for wid in window_ids if wid not in details}
    if wanted:
        read = library.store.window_details(wanted)
        details.update((wid, read.get(wid)) for wid in wanted)


def _results(
    library: Library,
    ranked: list[tuple[int, float, int]],
    search: SearchQuery,
    details: dict[int, WindowDetails | None],
) -> list[Hit]:
    """The hits of a search's `ranked` candidates in its scope: the windows its filters accept (with `by="file"`,
    the best of each file), up to `k`. Their `details` are read as needed, a page at a time."""
    scope, filters = search.scope, search.scope.filters
    hits: list[Hit] = []
    seen_files: set[int] = set()
    for page in doubling_chunks(ranked, first=_first_page(scope)):
        _read_details(library, (wid for wid, _, _ in page), details)
        for wid, score, row in page:
            window = details.get(wid)
            if window is None or not filters.accepts(window) or (scope.by == By.file and window.file_id in seen_files):
                continue
            seen_files.add(window.file_id)
            span = search.spans[row] if search.spans is not None else (None, None)
            hits.append(_hit(window, score, span))
            if len(hits) == scope.k:
                return hits
    return hits


def _hit(window: WindowDetails, score: float, span: tuple[float | None, float | None]) -> Hit:
    texts = {t.prompt: t.text for t in window.texts}
    return Hit(
        path=window.path,
        start_s=window.start_s,
        end_s=window.end_s,
        score=score,
        caption=window.texts[0].text if window.texts else "",  # the first prompt's answer is what was embedded
        texts=texts,
        window_id=window.window_id,
        query_start_s=span[0],
        query_end_s=span[1],
        file_id=window.file_id,
        missing=not os.path.exists(window.path),
    )


# ---------------------------------------------------------------------------------------------------------------
# text -> audio


def choose_rank(library: Library, requested: Rank | None = None, model: str | None = None) -> Rank:
    """`requested`, else caption when every window has captions (or no text tower can embed an audio query), else
    audio."""
    if requested is not None:
        return Rank(requested)
    if library.caption_counts().missing == 0 or not audio_tower_known(library, model):
        return Rank.caption
    return Rank.audio


def ranked_index(
    library: Library, rank: Rank, caption_query: np.ndarray | None, audio_query: np.ndarray | None, weight: float
) -> tuple[WindowIndex, np.ndarray]:
    """The index a `rank` searches and its query rows, from the query's caption and/or audio embedding (q, d)."""
    if rank is Rank.audio:
        assert audio_query is not None
        return library.vector_index("audio"), audio_query
    text_index = _caption_index(library)
    if rank is Rank.caption:
        assert caption_query is not None
        return text_index, caption_query
    assert caption_query is not None and audio_query is not None
    hybrid = HybridIndex(text_index, library.vector_index("audio"), library.store, weight, caption_query.shape[1])
    return hybrid, HybridIndex.queries(caption_query, audio_query)


def _caption_index(library: Library) -> WindowIndex:
    """The 'text' index; when windows exist but none has captions yet, an error that says what to do."""
    from .library import EmptyLibraryError

    try:
        return library.vector_index("text")
    except EmptyLibraryError as exc:
        if caption_counts(library.store).window_count == 0:
            raise
        raise EmptyLibraryError(
            exc.where,
            f"no window has captions yet: `{library_index_command(library.store)}` writes them; "
            "`--rank audio` searches without them",
        ) from None


def query_text(
    library: Library,
    text: str,
    scope: SearchScope = SearchScope(),
    *,
    model: str | None = None,
    device: str = "auto",
    embedder: TextEmbedder | None = None,
    rank: Rank | None = None,
    hybrid_weight: float = DEFAULT_HYBRID_WEIGHT,
    notify: Notify = log.warning,
) -> list[Hit]:
    """Text -> audio, ranked as `rank` says (None: `choose_rank`); every hit records the ranking.

    `embedder`: the library's caption embedder, if already open; else the one `query_embedder` opened for an earlier
    call is used again (`embedders.kept_text_embedder`). `notify`: told when an embedder cuts the text.
    """
    if not text.strip():
        raise ValueError("the query text is empty")
    rank = choose_rank(library, rank, model)
    caption_query = audio_query = None
    if rank is not Rank.audio:
        embedder = embedder or query_embedder(library, model, device)
        caption_query = embed_given(embedder, [text], notify, what="query")
    if rank is not Rank.caption:
        tower = audio_query_embedder(library, model, device, caption_embedder=embedder)
        if tower is embedder and caption_query is not None:  # the same tower: embedded (and said) once
            audio_query = caption_query
        else:
            audio_query = embed_given(tower, [text], notify, what="query")
    index, queries = ranked_index(library, rank, caption_query, audio_query, hybrid_weight)
    hits = search_index(library, index, queries, scope)
    return [dataclasses.replace(hit, ranking=rank) for hit in hits]

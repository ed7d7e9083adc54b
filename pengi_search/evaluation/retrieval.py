"""Text <-> audio retrieval on a captioned set that the library has indexed: every caption is a query.

Text -> audio: each caption searches the library (only files under the set's audio root compete) as `query` does,
best window per file; the caption's own file is the one relevant result. Audio -> text: each file ranks every
caption of the set; its own captions are the relevant ones. R@1, R@5, R@10 and mAP@10 as in `metrics`.

A ranking is one way of scoring text against audio, reported side by side with the others: the `--rank` modes of
`query` (`pengi_search.ranking`). "caption" is the paper's (section 5.4): the windows' generated captions and the
query, both embedded by the library's text embedder, compared by cosine; "audio" compares Pengi's audio embedding
of each window with the query's embedding by Pengi's text tower; "hybrid" weighs the two cosines.
"""

from __future__ import annotations

import functools
import glob
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..choices import DEFAULT_HYBRID_WEIGHT, By, Rank
from ..chunking import chunked
from ..embedders import warn_of_cuts
from ..ranking import RANK_LABELS
from ..search import SearchScope, allowed_ids, ranked_index, search_index
from ..search_filters import Filters
from ..stored import FILES_PER_READ, each_stored_windows, stored_windows_of
from ..ties import TIE_TOLERANCE, tied_groups
from ..vectors import l2_normalise
from .datasets import CaptionedFile, CaptionSet, left_out
from .metrics import average_precision_at_k, mean, recall_at_k
from .plots import DIRECTION_NAMES
from .ties import Span, rank_span, ranks_field, tie_bounds, tie_notes

if TYPE_CHECKING:
    from ..embedders import TextEmbedder
    from ..library import Library
    from ..messages import Notify
    from ..window_index import WindowIndex

RECALL_KS = (1, 5, 10)
AP_K = 10
_RECALL_CUTS = {f"R@{k}": k for k in RECALL_KS}  # the metrics a tie across the k-th place can move

log = logging.getLogger(__name__)


Scored = list[tuple[Any, float]]  # one query's results (a path, a caption's index), best first, with their scores


class Ranking(Protocol):
    name: str
    description: str
    embedders: list[TextEmbedder]  # what embeds its queries

    def text_to_audio(self, captions: Sequence[str], k: int) -> list[Scored]:
        """Per caption, the paths of its best `k` files with their scores, best first, and every further file
        that ties with the k-th (`TIE_TOLERANCE`), so that no order of tied results is left unseen."""
        ...

    def audio_to_text(self, paths: Sequence[str], captions: Sequence[str], k: int) -> list[Scored]:
        """Per file, the indices (into `captions`) of its best `k` captions with their scores, best first, and
        every further caption that ties with the k-th."""
        ...


class WindowMatching:
    """A `--rank` mode as a `Ranking`: text -> audio searches the library as `query --rank` does; audio -> text
    scores each caption by its best window of the file, with the same score (windows lacking a vector it needs
    are left out)."""

    def __init__(
        self,
        rank: Rank,
        library: Library,
        filters: Filters,
        caption_embedder: TextEmbedder | None,
        audio_embedder: TextEmbedder | None,
        hybrid_weight: float = DEFAULT_HYBRID_WEIGHT,
    ) -> None:
        self.rank = rank
        self.name = rank.value
        weight = f", caption weight {hybrid_weight:g}" if rank is Rank.hybrid else ""
        self.description = RANK_LABELS[rank] + weight
        self.library = library
        self.filters = filters
        self.weight = hybrid_weight
        # (vector kind, query embedder, weight) whose weighted cosines make a window's score
        parts = {
            Rank.caption: [("text", caption_embedder, 1.0)],
            Rank.audio: [("audio", audio_embedder, 1.0)],
            Rank.hybrid: [("text", caption_embedder, hybrid_weight), ("audio", audio_embedder, 1.0 - hybrid_weight)],
        }[rank]
        self.parts: list[tuple[str, TextEmbedder, float]] = []
        for kind, embedder, part_weight in parts:
            assert embedder is not None, f"--rank {rank.value} needs a {kind} query embedder"
            self.parts.append((kind, embedder, part_weight))
        self.embedders = list(dict.fromkeys(embedder for _, embedder, _ in self.parts))
        self._embedded: dict[tuple[str, str], np.ndarray] = {}
        self._allowed: np.ndarray | None = None  # the windows under the audio root, read at the first search

    def _vectors(self, embedder: TextEmbedder, captions: Sequence[str]) -> np.ndarray:
        """(n, d) normalised caption embeddings, each text embedded once for both directions, and alone, exactly as
        `query` embeds it: in a batch, padding and blocking can move the last bits, which reorders near ties."""
        for caption in captions:
            if (embedder.id, caption) not in self._embedded:
                self._embedded[embedder.id, caption] = embedder.embed([caption])[0]
        return np.stack([self._embedded[embedder.id, c] for c in captions])

    def _query_vectors(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
        return {kind: self._vectors(embedder, captions) for kind, embedder, _ in self.parts}

    def text_to_audio(self, captions: Sequence[str], k: int) -> list[Scored]:
        vectors = self._query_vectors(captions)
        ranked = []
        for row in range(len(captions)):
            caption, audio = (vectors[kind][row : row + 1] if kind in vectors else None for kind in ("text", "audio"))
            index, queries = ranked_index(self.library, self.rank, caption, audio, self.weight)
            ranked.append(self._search_with_ties(index, queries, k))
        return ranked

    def _search_with_ties(self, index: WindowIndex, queries: np.ndarray, k: int) -> Scored:
        """The best `k` files as `query` finds them, and as many more as tie with the k-th: a search for twice
        as many, until one ends below the tie (rarely needed: the first search's last file most often scores less)."""
        fetch = k
        if self._allowed is None:  # once, not once a caption: the library does not change while it is evaluated
            self._allowed = allowed_ids(self.library, self.filters)
        while True:
            scope = SearchScope(fetch, By.file, self.filters)
            hits = search_index(self.library, index, queries, scope, allowed=self._allowed)
            found = [(hit.path, hit.score) for hit in hits]
            last = found[min(k, len(found)) - 1][1] - TIE_TOLERANCE if found else 0.0  # the k-th, less a tie
            if len(found) < fetch or found[-1][1] < last:
                return found[:k] + [(path, score) for path, score in found[k:] if score >= last]
            fetch *= 2

    def audio_to_text(self, paths: Sequence[str], captions: Sequence[str], k: int) -> list[Scored]:
        # Each distinct text is scored once: a matrix product may round two equal columns differently (its blocking),
        # which would break the tie between two files' identical captions by chance instead of by order.
        # Found by hash: `list.index` would compare each caption with all before it (100,000 captions: 5e9).
        position = {caption: i for i, caption in enumerate(dict.fromkeys(captions))}
        column = [position[caption] for caption in captions]
        distinct = list(position)
        vectors = self._query_vectors(distinct)
        ranked: list[Scored] = []
        for chunk in chunked(paths, FILES_PER_READ):
            for scores in self._window_scores(chunk, vectors, len(distinct)):
                if scores is None:  # no window with every vector this ranking needs: no caption can be ranked
                    ranked.append([])
                    continue
                # A caption's score is its best over the file's windows, as text -> audio scores a file.
                ranked.append(_best_with_ties(scores[:, column].max(axis=0), k))
        return ranked

    def _window_scores(
        self, paths: Sequence[str], vectors: dict[str, np.ndarray], captions: int
    ) -> list[np.ndarray | None]:
        """Per file, the (windows, captions) scores of its windows that have every vector kind needed (None: it has
        none). The files' windows and vectors are read together: a few queries for all of them, not for each."""
        stored = stored_windows_of(self.library, paths)
        window_ids = [np.array([w.window_id for w in found.windows] if found else [], np.int64) for found in stored]
        every = np.concatenate(window_ids) if window_ids else np.empty(0, np.int64)
        found = {kind: self.library.store.vectors(kind, every.tolist()) for kind, _, _ in self.parts}
        usable = functools.reduce(np.intersect1d, [ids for ids, _ in found.values()])  # windows with every kind
        return [self._file_scores(np.intersect1d(ids, usable), found, vectors, captions) for ids in window_ids]

    def _file_scores(
        self,
        common: np.ndarray,
        found: dict[str, tuple[np.ndarray, np.ndarray]],
        vectors: dict[str, np.ndarray],
        captions: int,
    ) -> np.ndarray | None:
        """(windows, captions) scores of one file's windows `common` (sorted ids), from `found`'s rows of each kind
        (sorted by id, as `Store.vectors` gives them), or None when it has no such window."""
        if not common.size:
            return None
        total = np.zeros((common.size, captions), np.float32)
        for kind, _, weight in self.parts:
            ids, windows = found[kind]
            total += weight * (l2_normalise(windows[np.searchsorted(ids, common)]) @ vectors[kind].T)
        return total


def _best_with_ties(scores: np.ndarray, k: int) -> Scored:
    """The `k` best of `scores` by index, best first (equal scores by index), and every further one within
    `TIE_TOLERANCE` of the k-th. Only those are sorted: a partition finds the k-th, where sorting every caption of
    the set for every file (100,000 captions, 20,000 files) cost more than scoring them."""
    if not len(scores):
        return []
    place = len(scores) - min(k, len(scores))  # the k-th best's, in ascending order
    kth = np.partition(scores, place)[place]
    kept = np.flatnonzero(scores >= kth - TIE_TOLERANCE)  # in index order, which a stable sort keeps for equals
    return [(int(i), float(scores[i])) for i in kept[np.argsort(-scores[kept], kind="stable")]]


def available_rankings(
    library: Library,
    embedder: TextEmbedder,
    audio_root: str,
    audio_embedder: TextEmbedder | None = None,
    *,
    ranks: Sequence[Rank] = (),
    hybrid_weight: float = DEFAULT_HYBRID_WEIGHT,
) -> list[Ranking]:
    """The rankings `ranks` asks for (default: every one the library supports) over the files under `audio_root`.

    `embedder` embeds queries for caption matching; `audio_embedder` (Pengi's text tower of the index's model, None
    when it has none) for the audio and hybrid rankings.
    """
    filters = Filters(path_glob=glob.escape(audio_root.rstrip("/")) + "/*")
    possible = [Rank.caption] if audio_embedder is None else list(Rank)
    for rank in ranks:
        if rank not in possible:
            raise ValueError(f"--rank {rank.value} needs Pengi's text tower, which the index's model does not have")
    return [
        WindowMatching(rank, library, filters, embedder, audio_embedder, hybrid_weight)
        for rank in dict.fromkeys(ranks or possible)
    ]


@dataclass(frozen=True)
class _Queries:
    """The evaluated files and every caption of theirs, flattened (caption i belongs to file owner[i])."""

    files: list[CaptionedFile]
    captions: list[str]
    owner: list[int]


@dataclass(frozen=True)
class _Outcome:
    """One direction's queries: their results in tie order (`pengi_search.ties.tied_groups`), the relevant results
    of each, the rows of the report, and where each query's first relevant result could rank under any order of
    ties."""

    ranked: list[list[Any]]
    relevant: list[set[Any]]
    rows: list[dict[str, Any]]
    spans: list[Span | None]


def evaluate_retrieval(
    library: Library,
    caption_set: CaptionSet,
    rankings: Sequence[Ranking],
    index_failures: Mapping[str, str] | None = None,
    notify: Notify = log.warning,
) -> dict[str, Any]:
    """Metrics of each ranking in both directions, recall-at-k curves, per-query ranks, and the files left out
    (`index_failures`: the indexer's reasons, by path). `notify`: told of each caption an embedder cuts."""
    indexed = _indexed(library, caption_set.found)
    skipped = left_out(caption_set, {item.name for item in indexed}, index_failures)
    queries = _Queries(
        indexed,
        [caption for item in indexed for caption in item.captions],
        [i for i, item in enumerate(indexed) for _ in item.captions],
    )
    for embedder in dict.fromkeys(embedder for ranking in rankings for embedder in ranking.embedders):
        warn_of_cuts(embedder, queries.captions, notify, what="caption")
    names = {item.path: item.name for item in caption_set.found}
    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    details: dict[str, Any] = {}
    ties: dict[str, Any] = {}
    notes: list[str] = []
    for ranking in rankings:
        outcomes = {
            "text_to_audio": _text_to_audio(ranking, queries, names, caption_set.audio_root),
            "audio_to_text": _audio_to_text(ranking, queries),
        }
        metrics[ranking.name], curves[ranking.name], details[ranking.name], ties[ranking.name] = {}, {}, {}, {}
        for direction, outcome in outcomes.items():
            values, curves[ranking.name][direction] = _scores(outcome.ranked, outcome.relevant)
            metrics[ranking.name][direction] = values
            details[ranking.name][direction] = outcome.rows
            ties[ranking.name][direction] = tie_bounds(outcome.spans, _RECALL_CUTS, "queries")
            what = f"{ranking.name}, {DIRECTION_NAMES[direction]}: ties ordered by path"
            notes += tie_notes(what, values, ties[ranking.name][direction], ("query", "queries"))
    return {
        "metrics": metrics,
        "curves": curves,
        "ties": ties,
        "notes": notes,
        "rankings": {r.name: r.description for r in rankings},
        "evaluated": {"files": len(indexed), "captions": len(queries.captions)},
        "skipped": skipped,
        "queries": details,
    }


def _indexed(library: Library, items: Sequence[CaptionedFile]) -> list[CaptionedFile]:
    """The items whose file the library holds indexed and unchanged, read `FILES_PER_READ` files at a time."""
    stored = each_stored_windows(library, [item.path or "" for item in items])
    return [item for item, windows in zip(items, stored, strict=True) if windows is not None]


def _text_to_audio(ranking: Ranking, queries: _Queries, names: dict[str | None, str], audio_root: str) -> _Outcome:
    groups = [tied_groups(found, str) for found in ranking.text_to_audio(queries.captions, AP_K)]  # ties by path
    relevant = [{queries.files[owner].path} for owner in queries.owner]
    outcome = _outcome(groups, relevant)
    for row, caption, owner, found in zip(outcome.rows, queries.captions, queries.owner, outcome.ranked, strict=True):
        top = _shown(found[0], names, audio_root) if found else None
        row |= {"caption": caption, "path": queries.files[owner].name, "top": top}
    return outcome


def _audio_to_text(ranking: Ranking, queries: _Queries) -> _Outcome:
    paths = [item.path or "" for item in queries.files]

    def by_file(caption: int) -> tuple[str, str]:  # ties: by the caption's file, then its text
        return paths[queries.owner[caption]], queries.captions[caption]

    groups = [tied_groups(found, by_file) for found in ranking.audio_to_text(paths, queries.captions, AP_K)]
    relevant: list[set[Any]] = [set() for _ in queries.files]
    for caption, owner in enumerate(queries.owner):
        relevant[owner].add(caption)
    outcome = _outcome(groups, relevant)
    for row, item, found in zip(outcome.rows, queries.files, outcome.ranked, strict=True):
        row |= {"path": item.name, "top": queries.captions[found[0]] if found else None}
    return outcome


def _outcome(groups: Sequence[list[list[Any]]], relevant: list[set[Any]]) -> _Outcome:
    """Each query's first `AP_K` results in tie order, its row (rank in that order; `ranks`, the best and worst
    rank another order of tied results gives, where they differ) and that span."""
    ranked = [[item for group in query for item in group][:AP_K] for query in groups]
    spans = [rank_span(query, wanted) for query, wanted in zip(groups, relevant, strict=True)]
    rows: list[dict[str, Any]] = []
    for found, wanted, span in zip(ranked, relevant, spans, strict=True):
        rows.append({"rank": _first_rank(found, wanted), **ranks_field(span)})
    return _Outcome(ranked, relevant, rows, spans)


def _scores(ranked: Sequence[Sequence[Any]], relevant: Sequence[set[Any]]) -> tuple[dict[str, Any], list[Any]]:
    """R@k and mAP@10 over all queries, and the recall-at-k curve for k = 1 .. 10."""
    pairs = list(zip(ranked, relevant, strict=True))
    metrics: dict[str, Any] = {f"R@{k}": mean([recall_at_k(r, rel, k) for r, rel in pairs]) for k in RECALL_KS}
    metrics[f"mAP@{AP_K}"] = mean([average_precision_at_k(r, rel, AP_K) for r, rel in pairs])
    curve = [mean([recall_at_k(r, rel, k) for r, rel in pairs]) for k in range(1, AP_K + 1)]
    return metrics, curve


def _first_rank(found: Sequence[Any], relevant: set[Any]) -> int | None:
    return next((rank for rank, item in enumerate(found, 1) if item in relevant), None)


def _shown(path: str, names: dict[str | None, str], audio_root: str) -> str:
    """A result as the set names it, or relative to the audio root when the set does not list it."""
    if path in names:
        return names[path]
    return path[len(audio_root) :].lstrip("/") if path.startswith(audio_root) else path

"""Text <-> audio retrieval on a captioned set that the library has indexed: every caption is a query.

Text -> audio: each caption searches the library (only files under the set's audio root compete) as `query` does,
best window per file; the caption's own file is the one relevant result. Audio -> text: each file ranks every
caption of the set; its own captions are the relevant ones. R@1, R@5, R@10 and mAP@10 as in `metrics`.

A ranking is one way of scoring text against audio. `CaptionMatching` is the paper's (section 5.4): the windows'
generated captions and the query, both embedded by the library's text embedder, compared by cosine. Other rankings
(e.g. Pengi's audio embedding against the query's text embedding) plug in as further `Ranking`s and are reported
side by side.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..search import Filters, search_vectors, stored_windows
from .datasets import CaptionedFile, CaptionSet, left_out
from .metrics import average_precision_at_k, mean, recall_at_k

if TYPE_CHECKING:
    from ..embedders import TextEmbedder
    from ..library import Library

RECALL_KS = (1, 5, 10)
AP_K = 10


class Ranking(Protocol):
    name: str
    description: str

    def text_to_audio(self, captions: Sequence[str], k: int) -> list[list[str]]:
        """Per caption, the paths of its best `k` files, best first."""
        ...

    def audio_to_text(self, paths: Sequence[str], captions: Sequence[str], k: int) -> list[list[int]]:
        """Per file, the indices (into `captions`) of its best `k` captions, best first."""
        ...


class CaptionMatching:
    """The paper's retrieval: query text against the windows' generated captions, in the library's text embedding."""

    name = "caption"
    description = "generated captions matched with the text (the paper's retrieval)"

    def __init__(self, library: Library, embedder: TextEmbedder, filters: Filters) -> None:
        self.library = library
        self.embedder = embedder
        self.filters = filters
        self._embedded: dict[str, np.ndarray] = {}

    def _vectors(self, captions: Sequence[str]) -> np.ndarray:
        """(n, d) normalised caption embeddings, each text embedded once for both directions, and alone, exactly as
        `query` embeds it: in a batch, padding and blocking can move the last bits, which reorders near ties."""
        for caption in captions:
            if caption not in self._embedded:
                self._embedded[caption] = self.embedder.embed([caption])[0]
        return np.stack([self._embedded[c] for c in captions])

    def text_to_audio(self, captions: Sequence[str], k: int) -> list[list[str]]:
        vectors = self._vectors(captions)
        return [
            [hit.path for hit in search_vectors(self.library, "text", row[None], k=k, by="file", filters=self.filters)]
            for row in vectors
        ]

    def audio_to_text(self, paths: Sequence[str], captions: Sequence[str], k: int) -> list[list[int]]:
        vectors = self._vectors(captions)
        ranked = []
        for path in paths:
            stored = stored_windows(self.library, path)
            _, windows = self.library.store.vectors("text", [w.window_id for w in stored.windows] if stored else [])
            if not len(windows):  # nothing captioned: no caption can be ranked for this file
                ranked.append([])
                continue
            # A caption's score is its best cosine over the file's windows, as text -> audio scores a file.
            scores = (windows @ vectors.T).max(axis=0)
            ranked.append(np.argsort(-scores, kind="stable")[:k].tolist())
        return ranked


def available_rankings(library: Library, embedder: TextEmbedder, audio_root: str) -> list[Ranking]:
    """The rankings the library supports, restricted to files under `audio_root`."""
    filters = Filters(path_glob=glob.escape(audio_root.rstrip("/")) + "/*")
    return [CaptionMatching(library, embedder, filters)]


@dataclass(frozen=True)
class _Queries:
    """The evaluated files and every caption of theirs, flattened (caption i belongs to file owner[i])."""

    files: list[CaptionedFile]
    captions: list[str]
    owner: list[int]


# Per direction: the ranked results of every query, the relevant results of every query, and the per-query rows.
_Outcome = tuple[list[list[Any]], list[set[Any]], list[dict[str, Any]]]


def evaluate_retrieval(
    library: Library,
    caption_set: CaptionSet,
    rankings: Sequence[Ranking],
    index_failures: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Metrics of each ranking in both directions, recall-at-k curves, per-query ranks, and the files left out
    (`index_failures`: the indexer's reasons, by path)."""
    indexed = [item for item in caption_set.found if stored_windows(library, item.path or "") is not None]
    skipped = left_out(caption_set, {item.name for item in indexed}, index_failures)
    queries = _Queries(
        indexed,
        [caption for item in indexed for caption in item.captions],
        [i for i, item in enumerate(indexed) for _ in item.captions],
    )
    names = {item.path: item.name for item in caption_set.found}
    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for ranking in rankings:
        outcomes = {
            "text_to_audio": _text_to_audio(ranking, queries, names, caption_set.audio_root),
            "audio_to_text": _audio_to_text(ranking, queries),
        }
        metrics[ranking.name], curves[ranking.name], details[ranking.name] = {}, {}, {}
        for direction, (ranked, relevant, rows) in outcomes.items():
            metrics[ranking.name][direction], curves[ranking.name][direction] = _scores(ranked, relevant)
            details[ranking.name][direction] = rows
    return {
        "metrics": metrics,
        "curves": curves,
        "rankings": {r.name: r.description for r in rankings},
        "evaluated": {"files": len(indexed), "captions": len(queries.captions)},
        "skipped": skipped,
        "queries": details,
    }


def _text_to_audio(ranking: Ranking, queries: _Queries, names: dict[str | None, str], audio_root: str) -> _Outcome:
    ranked: list[list[Any]] = list(ranking.text_to_audio(queries.captions, AP_K))
    relevant = [{queries.files[owner].path} for owner in queries.owner]
    rows = [
        {
            "caption": caption,
            "file": queries.files[owner].name,
            "rank": _first_rank(found, wanted),
            "top": _shown(found[0], names, audio_root) if found else None,
        }
        for caption, owner, found, wanted in zip(queries.captions, queries.owner, ranked, relevant, strict=True)
    ]
    return ranked, relevant, rows


def _audio_to_text(ranking: Ranking, queries: _Queries) -> _Outcome:
    paths = [item.path or "" for item in queries.files]
    ranked: list[list[Any]] = list(ranking.audio_to_text(paths, queries.captions, AP_K))
    relevant: list[set[Any]] = [set() for _ in queries.files]
    for caption, owner in enumerate(queries.owner):
        relevant[owner].add(caption)
    rows = [
        {"file": item.name, "rank": _first_rank(found, wanted), "top": queries.captions[found[0]] if found else None}
        for item, found, wanted in zip(queries.files, ranked, relevant, strict=True)
    ]
    return ranked, relevant, rows


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

"""The ways a text query can rank windows (`--rank`), and the index that searches the hybrid one.

- caption: the paper's retrieval (section 5.4). The query, embedded by the library's text embedder, against the
  embeddings of the windows' generated captions. Needs captions.
- audio: the contrastive path. Pengi's own text tower (CLIP text model, then its projection) embeds the query into
  the model's d_proj space, where the audio encoder (HTSAT, then its projection) put every window; cosine between
  the two. The original code returns exactly these two from `get_audio_embeddings` (the projected audio embedding,
  L2-normalised) and `get_prompt_embeddings` (the projected text embedding), both d_proj wide. The two encoders
  come from a contrastively trained audio-text pair, but Pengi itself was trained only to caption, so how well the
  two spaces still agree depends on the weights: output that used this ranking says so. It needs no caption, so it
  searches a library whose captions are still being written, and it needs a model with a text tower (`base`).
- hybrid: weight x caption cosine + (1 - weight) x audio cosine, for windows that have both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .choices import Rank
from .db import Store
from .id_arrays import sorted_unique
from .vectors import l2_normalise
from .window_index import Wanted, WindowIndex

RANK_LABELS = {
    Rank.caption: "caption matching (the query against the windows' generated captions)",
    Rank.audio: "audio embeddings (Pengi's audio embedding of each window against the query's text embedding; "
    "no captions compared)",
    Rank.hybrid: "hybrid (weighted sum of the caption and audio-embedding cosines)",
}


def check_hybrid_weight(weight: float) -> float:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the hybrid weight must be between 0 and 1, got {weight}")
    return float(weight)


class HybridIndex(WindowIndex):
    """The caption ('text') and 'audio' indexes searched as one, scoring w * caption cosine + (1 - w) * audio cosine.

    A query row is the caption query and the audio query side by side, (caption_dim + d_proj) wide (`queries`).
    The search is exact over windows with both vectors (given exact indexes): it takes the top `fetch` of each
    index, scores their union from the stored vectors, and fetches twice as many until no window outside both
    lists can beat the k-th score (its score is at most w * the caption list's last + (1 - w) * the audio list's
    last), or one list holds every window it can. An index serves one query: the vectors it reads are kept for its
    later rounds and searches (`_StoredPairs`).
    """

    def __init__(
        self, text_index: WindowIndex, audio_index: WindowIndex, store: Store, weight: float, caption_dim: int
    ) -> None:
        self.text = text_index
        self.audio = audio_index
        self.weight = check_hybrid_weight(weight)
        self.caption_dim = caption_dim
        self.stored = _StoredPairs(store)

    @staticmethod
    def queries(caption: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """(q, caption_dim), (q, d_proj) -> the rows this index searches, (q, caption_dim + d_proj)."""
        return np.concatenate([l2_normalise(caption), l2_normalise(audio)], axis=1)

    def __len__(self) -> int:
        return len(self.text)  # only captioned windows can be ranked

    def _search(self, queries: np.ndarray, k: int, wanted: Wanted) -> tuple[np.ndarray, np.ndarray]:
        """`WindowIndex.search` of the windows with both vectors. Scores are exact from the stored vectors, so
        `exact_top` changes nothing here; `exact` searches the two indexes exactly (otherwise the candidates are
        only as good as theirs)."""
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, query in enumerate(queries):
            found_ids, found_scores = self._search_row(query, k, wanted)
            scores[row, : len(found_ids)], ids[row, : len(found_ids)] = found_scores, found_ids
        return scores, ids

    def _search_row(self, query: np.ndarray, k: int, wanted: Wanted) -> tuple[np.ndarray, np.ndarray]:
        caption_query, audio_query = query[None, : self.caption_dim], query[None, self.caption_dim :]
        fetch, most = k, max(len(self.text), len(self.audio), 1)
        # Not `exact_top`: the bound below reads each list's last score, which must be as accurate as its first.
        how: dict[str, Any] = {"allowed_ids": wanted.allowed_ids, "exact": wanted.exact}
        while True:
            text_scores, text_ids = _valid(*self.text.search(caption_query, fetch, **how))
            audio_scores, audio_ids = _valid(*self.audio.search(audio_query, fetch, **how))
            candidates = sorted_unique(np.concatenate([text_ids, audio_ids]))
            ids, scores = self._exact(candidates, caption_query[0], audio_query[0])
            order = np.lexsort((ids, -scores))[:k]  # best first, ties by id
            # A short list holds every window it may (`WindowIndex.search`), so the union holds every candidate.
            complete = len(text_ids) < fetch or len(audio_ids) < fetch or fetch >= most
            if complete or (len(order) == k and scores[order[-1]] >= self._bound(text_scores, audio_scores)):
                return ids[order], scores[order]
            fetch = min(fetch * 2, most)

    def _bound(self, text_scores: np.ndarray, audio_scores: np.ndarray) -> float:
        """The best score a window in neither list could have."""
        return float(self.weight * text_scores[-1] + (1.0 - self.weight) * audio_scores[-1])

    def _exact(self, candidates: np.ndarray, caption_query: np.ndarray, audio_query: np.ndarray) -> tuple[Any, Any]:
        """(ids, hybrid scores) of the candidates that have both vectors, from the stored vectors."""
        ids, text_vectors, audio_vectors = self.stored.of(candidates)
        if not len(ids):
            return ids, np.empty(0, np.float32)
        scores = self.weight * (text_vectors @ caption_query) + (1.0 - self.weight) * (audio_vectors @ audio_query)
        return ids, scores.astype(np.float32)


class _StoredPairs:
    """The caption and audio vectors of the windows one query has scored, L2-normalised, each window read from the
    store once: every doubling round asks for the previous round's candidates again, and reading them anew took
    0.26 s of a hybrid query at 200,000 windows."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.asked = np.empty(0, np.int64)  # sorted: every window read, with both vectors or not
        self.ids = np.empty(0, np.int64)  # sorted: those with both vectors, the rows of `text` and `audio`
        self.text: np.ndarray | None = None
        self.audio: np.ndarray | None = None

    def of(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, caption vectors, audio vectors) of the `candidates` (sorted, distinct) that have both vectors."""
        unread = np.setdiff1d(candidates, self.asked, assume_unique=True)
        if unread.size:
            self._read(unread)
            self.asked = np.sort(np.concatenate([self.asked, unread]))
        if self.text is None or self.audio is None:
            return self.ids, np.empty((0, 0), np.float32), np.empty((0, 0), np.float32)
        keep = np.isin(self.ids, candidates, assume_unique=True)
        return self.ids[keep], self.text[keep], self.audio[keep]

    def _read(self, unread: np.ndarray) -> None:
        text_ids, text_vectors = self.store.vectors("text", unread)
        audio_ids, audio_vectors = self.store.vectors("audio", text_ids)
        if not len(audio_ids):
            return
        keep = np.isin(text_ids, audio_ids, assume_unique=True)  # a window removed between the reads drops out
        text, audio = l2_normalise(text_vectors[keep]), l2_normalise(audio_vectors)
        if self.text is not None and self.audio is not None:
            audio_ids = np.concatenate([self.ids, audio_ids])
            text, audio = np.concatenate([self.text, text]), np.concatenate([self.audio, audio])
        order = np.argsort(audio_ids, kind="stable")
        self.ids, self.text, self.audio = audio_ids[order], text[order], audio[order]


def _valid(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One query row's real hits (FAISS pads with id -1)."""
    found = ids[0] >= 0
    return scores[0][found], ids[0][found]

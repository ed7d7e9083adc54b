"""Captions that come after the audio: the windows still waiting for them, and writing them in.

`pengi-search index` stores every window first with its audio embedding only (so that `similar` works on the whole
library at once), then writes the captions. Nothing in the schema says which windows wait: a window is captioned
when it has a 'text' vector (its texts and that vector are always written in one transaction), and waits for its
captions when it has none. Each function is one short transaction, like `Store`'s methods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import aliased

from ..choices import EXACT_MODE
from ..chunking import chunked
from .queries import IDS_PER_QUERY, encode_vector, paths_under, text_vector_dim, vectors_changed
from .records import VECTOR_KINDS, TextRecord
from .schema import AudioFileRow, GeneratedTextRow, WindowRow, WindowVectorRow
from .store import Store


@dataclass(frozen=True)
class CaptionCounts:
    """How many windows there are and how many of them have captions (below a folder, or in the whole library)."""

    window_count: int
    captioned: int

    @property
    def missing(self) -> int:
        return self.window_count - self.captioned

    def to_json(self) -> dict[str, Any]:
        return {"window_count": self.window_count, "captioned": self.captioned, "missing": self.missing}


@dataclass(frozen=True)
class UncaptionedWindow:
    """A window waiting for its captions, with the stored audio embedding that generation starts from."""

    window_id: int
    path: str
    index: int
    audio: np.ndarray  # (d_proj,) float32, as stored
    content_hash: str | None = None  # the sha256 of its file's bytes

    @property
    def twin_key(self) -> tuple[str, int, bytes] | int:
        """Equal for twins (see `uncaptioned_twins`); a window of a file never hashed has a key of its own."""
        if self.content_hash is None:
            return self.window_id
        return (self.content_hash, self.index, self.audio.tobytes())


@dataclass(frozen=True)
class Twin:
    """A window waiting for captions that another window's captions serve (`uncaptioned_twins`)."""

    of: int  # the other window's id
    window_id: int
    path: str


@dataclass(frozen=True)
class WindowCaptions:
    """What the caption pass writes for one window: the answer to every prompt and the caption's embedding."""

    window_id: int
    texts: Sequence[TextRecord]
    text_vector: np.ndarray


_AUDIO_VECTOR = (WindowVectorRow.window_id == WindowRow.id) & (WindowVectorRow.kind == "audio")  # a join's ON


def _has_text_vector() -> Any:
    """EXISTS (the window's 'text' vector), over its own alias: the outer query may join the 'audio' vectors."""
    text = aliased(WindowVectorRow)
    return select(text.window_id).where(text.window_id == WindowRow.id, text.kind == "text").exists()


def caption_counts(store: Store, under: str | None = None) -> CaptionCounts:
    """Windows of the files below `under` (all when None), and how many of them have captions."""
    if under is None:  # two index-only counts, cheap even for millions of windows (a query may ask every time)
        windows = select(func.count()).select_from(WindowRow)
        captioned = select(func.count()).select_from(WindowVectorRow).where(WindowVectorRow.kind == "text")
    else:
        windows = select(func.count(WindowRow.id)).join(AudioFileRow, WindowRow.file_id == AudioFileRow.id)
        windows = windows.where(paths_under(under))
        captioned = windows.where(_has_text_vector())
    with store.session() as session:
        return CaptionCounts(int(session.scalar(windows) or 0), int(session.scalar(captioned) or 0))


def missing_captions(store: Store, under: str | None = None) -> dict[str, int]:
    """Per file below `under` (all when None) that has windows without captions, how many: a caller that wants the
    files of many folders (an indexing run's roots) sums its own from one query."""
    # A path per window, counted here: grouped by path in SQL, SQLite reads every window instead of the paths' index.
    query = (
        select(AudioFileRow.path)
        .select_from(WindowRow)
        .join(AudioFileRow, WindowRow.file_id == AudioFileRow.id)
        .where(paths_under(under), ~_has_text_vector())
    )
    with store.session() as session:
        return dict(Counter(session.scalars(query)))


UNRECORDED_MODE = "unrecorded"  # texts written before revision 0004, which records how each text was generated


def caption_modes(store: Store) -> dict[str, int]:
    """Captioned windows by how their texts were generated: "exact", a --fast mode (e.g. "bf16+greedy"), or
    `UNRECORDED_MODE`; a window whose texts were generated in two modes counts in both."""
    # The (mode, window_id) index (revision 0006) holds the texts in this order: SQLite counts from it alone, with
    # no sort (32 ms of CPU at 400,000 texts, one mode or two; grouping the table itself sorted them all, 127 ms
    # for two modes: benchmarks/bench_open.py).
    windows = func.count(func.distinct(GeneratedTextRow.window_id))
    query = select(GeneratedTextRow.mode, windows).group_by(GeneratedTextRow.mode).order_by(GeneratedTextRow.mode)
    with store.session() as session:
        return {mode or UNRECORDED_MODE: int(count) for mode, count in session.execute(query).all()}


def caption_stats(store: Store) -> dict[str, Any]:
    """The `captions` block of `stats --json` and the server's `/api/stats`: the library's windows, how many have
    captions and how many wait for them, and the captioned ones `by_mode` (`caption_modes`)."""
    return {**caption_counts(store).to_json(), "by_mode": caption_modes(store)}


def uncaptioned_windows(
    store: Store, *, under: str | None = None, after_id: int = 0, limit: int = 256
) -> list[UncaptionedWindow]:
    """Up to `limit` windows below `under` with an audio vector and no captions, window ids above `after_id`, in
    id order (page through them by passing the last id seen)."""
    query = (
        select(WindowRow.id, AudioFileRow.path, WindowRow.index, WindowVectorRow.vector, AudioFileRow.content_hash)
        .join(AudioFileRow, WindowRow.file_id == AudioFileRow.id)
        .join(WindowVectorRow, _AUDIO_VECTOR)
        .where(paths_under(under), WindowRow.id > after_id, ~_has_text_vector())
        .order_by(WindowRow.id)
        .limit(limit)
    )
    with store.session() as session:
        rows = session.execute(query).all()
    return [
        UncaptionedWindow(window_id, path, index, np.frombuffer(blob, dtype="<f4").astype(np.float32), content_hash)
        for window_id, path, index, blob, content_hash in rows
    ]


def uncaptioned_twins(store: Store, window_ids: Sequence[int], *, under: str | None = None) -> list[Twin]:
    """The windows below `under` waiting for captions that are twins of one of `window_ids`: a window of a file with
    the same bytes (sha256), at the same index and with the same stored audio embedding. Captions are generated from
    that embedding alone, so a twin's captions are the other's, and identical files need captioning only once; the
    embedding is compared too, since files decoded apart may differ in its last bits (batches round differently)."""
    other, other_file = aliased(WindowRow), aliased(AudioFileRow)
    other_audio = aliased(WindowVectorRow)
    query = (
        select(other.id, WindowRow.id, AudioFileRow.path)
        .select_from(other)
        .join(other_file, other.file_id == other_file.id)
        .join(other_audio, (other_audio.window_id == other.id) & (other_audio.kind == "audio"))
        .join(AudioFileRow, AudioFileRow.content_hash == other_file.content_hash)
        .join(WindowRow, (WindowRow.file_id == AudioFileRow.id) & (WindowRow.index == other.index))
        .join(WindowVectorRow, _AUDIO_VECTOR & (WindowVectorRow.vector == other_audio.vector))
        .where(paths_under(under), WindowRow.id != other.id, ~_has_text_vector())
        .order_by(WindowRow.id)
    )
    twins: list[Twin] = []
    with store.session() as session:
        for chunk in chunked(sorted(set(window_ids)), IDS_PER_QUERY):
            twins += [Twin(*row) for row in session.execute(query.where(other.id.in_(chunk)))]
    return twins


def add_captions(store: Store, captions: Sequence[WindowCaptions]) -> int:
    """Write the texts and caption vector of each window, in one transaction; returns how many were written.

    A window that is gone (its file was re-indexed or removed meanwhile) or that got its captions from another
    process is skipped, so nothing is ever written twice. A bad vector (NaN, wrong size) raises RefusedInputError and
    writes nothing.
    """
    wanted = sorted({item.window_id for item in captions})
    with store.session(write=True) as session:
        text_dim = text_vector_dim(session)
        alive: set[int] = set()
        done: set[int] = set()
        for chunk in chunked(wanted, IDS_PER_QUERY):
            alive.update(session.scalars(select(WindowRow.id).where(WindowRow.id.in_(chunk)).with_for_update()))
            done.update(
                session.scalars(
                    select(WindowVectorRow.window_id).where(
                        WindowVectorRow.kind == "text", WindowVectorRow.window_id.in_(chunk)
                    )
                )
            )
        written = 0
        for item in captions:
            if item.window_id not in alive or item.window_id in done:
                continue
            vector = encode_vector(f"window {item.window_id}", "text", item.text_vector, text_dim)
            session.add_all(GeneratedTextRow.of(text, window_id=item.window_id) for text in item.texts)
            session.add(WindowVectorRow(window_id=item.window_id, kind="text", vector=vector))
            done.add(item.window_id)
            written += 1
        vectors_changed(session, ["text"] if written else [])
        return written


def drop_fast_captions(store: Store, under: str | None = None, owns: Callable[[str], bool] | None = None) -> int:
    """Make the windows below `under` whose captions a --fast mode wrote wait for captions again, so that the next
    caption pass writes exact ones; returns how many. Only windows with a stored audio embedding (what captions are
    generated from) qualify; `owns(path)` limits them to one shard's files.

    Each such window is written again under a new id with its audio embedding, and the old one is deleted with its
    texts and vectors, in one transaction: window ids are never reused for other vectors, so FAISS files and a
    running server, which follow the database by id, drop the old caption vector and never keep it for the new one.
    """
    fast = select(GeneratedTextRow.window_id).where(GeneratedTextRow.mode.is_not(None))
    fast = fast.where(GeneratedTextRow.mode != EXACT_MODE)
    query = (
        select(WindowRow.id, AudioFileRow.path)
        .join(AudioFileRow, WindowRow.file_id == AudioFileRow.id)
        .join(WindowVectorRow, _AUDIO_VECTOR)
        .where(paths_under(under), WindowRow.id.in_(fast))
        .order_by(WindowRow.id)
    )
    with store.session(write=True) as session:
        ids = [window_id for window_id, path in session.execute(query) if owns is None or owns(path)]
        for chunk in chunked(ids, IDS_PER_QUERY):
            rows = session.execute(
                select(WindowRow.file_id, WindowRow.index, WindowRow.start_s, WindowRow.end_s, WindowVectorRow.vector)
                .join(WindowVectorRow, _AUDIO_VECTOR)
                .where(WindowRow.id.in_(chunk))
                .order_by(WindowRow.id)
            ).all()
            session.execute(delete(WindowRow).where(WindowRow.id.in_(chunk)))  # texts and vectors go with them
            session.add_all(
                WindowRow(file_id=f, index=i, start_s=s, end_s=e, vectors=[WindowVectorRow(kind="audio", vector=v)])
                for f, i, s, e, v in rows
            )
        vectors_changed(session, VECTOR_KINDS if ids else [])
    return len(ids)

"""Audio -> audio: `similar`. A file that is indexed and unchanged reuses its stored audio vectors; any other file is
decoded and embedded with the full model (several such files together). A query file with several windows scores
each candidate window by its best match among the query's windows (so a short sound inside a long file is found),
rather than by the blurred mean of its windows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .chunking import chunked
from .db import WindowDetails, non_finite_vector
from .model_dir import ModelDir
from .scan import ScanError, absolute, scan

if TYPE_CHECKING:
    from .audio import Window
    from .inference import Engine
    from .library import Library
    from .window_batches import Progress

from .query_embedders import check_index_model
from .search import Hit, SearchScope, search_index
from .units import seconds_text

# ---------------------------------------------------------------------------------------------------------------
# audio -> audio


@dataclass(frozen=True)
class StoredWindows:
    """The stored windows of an indexed, unchanged file (in window order)."""

    windows: list[WindowDetails]
    vectors: np.ndarray | None  # (n, d) audio vectors, when asked for and stored
    content_hash: str | None = None  # the file's sha256, as recorded when it was indexed


def stored_windows(library: Library, path: str | os.PathLike[str], *, audio: bool = False) -> StoredWindows | None:
    """What the store holds for `path` if it is indexed and unchanged on disk (same size and mtime), else None."""
    try:
        entry = scan([path], frozenset()).entries[0]
    except ScanError:
        return None
    record = library.store.get_file(entry.path)
    if record is None or record.status != "indexed" or (record.size, record.mtime) != (entry.size, entry.mtime):
        return None
    windows = library.store.file_windows(record.id)
    if not windows:
        return None
    if not audio:
        return StoredWindows(windows, None, record.content_hash)
    ids, vectors = library.store.vectors("audio", [w.window_id for w in windows])
    if len(ids) != len(windows):
        return None
    return StoredWindows(windows, vectors, record.content_hash)  # both sorted by window id: window order


@dataclass(frozen=True)
class SimilarResult:
    """`similar` for one query file: its hits and where its vectors came from, "index" (stored, the file unchanged)
    or "decoded" (embedded now with the model); or why it could not be decoded (and `source` None: no vectors)."""

    path: str
    hits: list[Hit]
    source: str | None
    error: str | None = None
    # The query file's windows: with more than one, each hit says which of them it matched (`Hit.query_start_s`).
    query_windows: int = 0


def similar_to_file(
    library: Library,
    path: str | os.PathLike[str],
    scope: SearchScope = SearchScope(),
    *,
    model: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    engine: Engine | None = None,
) -> tuple[list[Hit], str]:
    """Audio -> audio for one file (see `similar_to_files`): the hits and their source. Raises AudioDecodeError when
    the file cannot be decoded."""
    from .audio_decoders import AudioDecodeError

    found = similar_to_files(library, [path], scope, model=model, device=device, batch_size=batch_size, engine=engine)
    (result,) = found
    if result.error is not None:
        raise AudioDecodeError(result.path, result.error)
    return result.hits, result.source


def similar_to_files(
    library: Library,
    paths: Sequence[str | os.PathLike[str]],
    scope: SearchScope = SearchScope(),
    *,
    model: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    fast: bool = False,
    progress: Progress | None = None,
    engine: Engine | None = None,
    within: tuple[float, float] | None = None,
) -> Iterator[SimilarResult]:
    """Audio -> audio: for each file in turn, the files that sound like it (itself left out, with its copies: see
    `excluding_query`). `within`: (start, end) in seconds, the query is only the file's windows that overlap it (a
    moment of a long recording); a file with none there is reported as an error.

    Files that are indexed and unchanged use their stored vectors; the others are decoded and embedded with the
    model that built the index, their windows batched together across files (`window_batches`), and hashed as they
    are decoded. A `model` that did not build the library is refused (StoreMismatchError) before any file is read,
    whether or not a file needs it, as is an `engine` of another. `engine`: that model already loaded (a script's or
    a server's, shared by its calls; it runs as it was loaded, whatever `device`, `batch_size` and `fast` say); else
    it is loaded when a file needs it.
    """
    from .window_batches import map_windows

    index = library.vector_index("audio")  # an empty library fails here, before any decoding
    # A model named (or given loaded) is one the query is meant to be embedded with: an indexed file's stored
    # vectors stand for it only when it is the library's model, and another's vectors cannot be compared with them.
    if engine is not None and engine.model_dir is not None:
        check_index_model(library, engine.model_dir)
    elif model is not None and engine is None:
        check_index_model(library, ModelDir.resolve(model))
    queries = [(os.fspath(path), stored_windows(library, path, audio=True)) for path in paths]
    to_embed = [path for path, stored in queries if stored is None or stored.vectors is None]
    engine = _index_engine(library, model, device, batch_size, fast, engine) if to_embed else None
    batch = engine.windows_per_batch(1) if engine else 1
    outcomes = map_windows(to_embed, _audio_vectors(engine), batch_size=batch, hash_files=True, progress=progress)
    for path, stored in queries:
        if stored is not None and stored.vectors is not None:
            vectors, spans, source = stored.vectors, [(w.start_s, w.end_s) for w in stored.windows], "index"
            content_hash = stored.content_hash
        else:
            outcome = next(outcomes)
            if outcome.error is not None:
                yield SimilarResult(path, [], None, outcome.error)
                continue
            vectors, spans, source = np.stack(outcome.results), [(s.start_s, s.end_s) for s in outcome.spans], "decoded"
            content_hash = outcome.content_hash
        if within is not None:
            kept = [i for i, (start, end) in enumerate(spans) if start < within[1] and end > within[0]]
            if not kept:
                yield SimilarResult(path, [], source, _no_window_within(within, spans[-1][1]))
                continue
            vectors, spans = vectors[kept], [spans[i] for i in kept]
        if not np.isfinite(vectors).all():  # the model overflowed on this file: reported as `index` records it
            yield SimilarResult(path, [], source, non_finite_vector("audio"))
            continue
        query_scope = excluding_query(library, scope, content_hash, absolute(path))
        hits = search_index(library, index, vectors, query_scope, query_spans=spans)
        yield SimilarResult(path, hits, source, query_windows=len(spans))


def _no_window_within(within: tuple[float, float], length_s: float) -> str:
    start, end = within
    until = "its end" if end == float("inf") else f"{end:g} s"
    return f"no window from {start:g} s to {until}: the file is {seconds_text(length_s)} long"


def excluding_query(
    library: Library, scope: SearchScope, content_hash: str | None, path: str | None = None
) -> SearchScope:
    """`scope` without the query's own file, which would come first, a perfect match that says nothing: every
    library file holding the query's bytes (`content_hash`, its sha256: the file itself, a copy, the file indexed
    through a link of another name) and the file at `path` however it is reached (`SearchScope.excluding`: a file
    changed since it was indexed). The one rule of `similar FILE` and of the server's uploads (no `path`)."""
    if path is not None:
        scope = scope.excluding(path)
    if content_hash is None:  # a file indexed before sha256s were recorded
        return scope
    return scope.without(record.path for record in library.store.files_with_hash(content_hash))


def _index_engine(
    library: Library, model: str | None, device: str, batch_size: int | None, fast: bool, engine: Engine | None = None
) -> Engine:
    """The model that built the library's audio vectors: `engine`, or `model` loaded (StoreMismatchError if the
    engine's model, else `model`, is another)."""
    from .inference import Engine

    if engine is not None:  # one not made by `Engine.load` knows no directory: `model` is the caller's word for it
        check_index_model(library, engine.model_dir or ModelDir.resolve(model))
        return engine
    model_dir = ModelDir.resolve(model)
    check_index_model(library, model_dir)
    return Engine.load(model_dir, device, batch_size, fast=fast)


def _audio_vectors(engine: Engine | None) -> Callable[[list[Window]], list[np.ndarray]]:
    """The work that embeds a batch of windows: one (d,) audio vector each."""

    def embed(windows: list[Window]) -> list[np.ndarray]:
        assert engine is not None
        return list(engine.audio_embeddings(np.stack([w.samples for w in windows])).cpu().numpy())

    return embed


def embed_audio_file(
    library: Library,
    path: str | os.PathLike[str],
    *,
    model: str | None,
    device: str,
    batch_size: int | None,
    engine: Engine | None = None,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Decode `path` and embed its windows with the model that built the index: (vectors (n, d), spans).

    `engine`: that model already loaded (a server shares one).
    Raises AudioDecodeError when the file cannot be decoded.
    """
    from .audio import iter_windows

    engine = _index_engine(library, model, device, batch_size, False, engine)
    vectors, spans = [], []
    embed = _audio_vectors(engine)
    for chunk in chunked(iter_windows(path), engine.windows_per_batch(1)):
        vectors += embed(chunk)
        spans += [(w.start_s, w.end_s) for w in chunk]
    return np.stack(vectors), spans

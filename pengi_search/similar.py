"""Audio -> audio: `similar`. A file that is indexed and unchanged reuses its stored audio vectors; any other file is
decoded and embedded with the full model (several such files together). A query file with several windows scores
each candidate window by its best match among the query's windows (so a short sound inside a long file is found),
rather than by the blurred mean of its windows. Many indexed files are read from the store together and searched
together (`search_many`), each with the results it has alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING

import numpy as np

from .chunking import chunked
from .db import FileRecord, non_finite_vector
from .model_dir import ModelDir
from .scan import absolute

if TYPE_CHECKING:
    from .audio import Window
    from .inference import Engine
    from .library import Library
    from .window_batches import FileOutcome, Progress
    from .window_index import WindowIndex

from .query_embedders import check_index_model
from .search import Hit, SearchQuery, SearchScope, search_many
from .stored import StoredWindows, stored_windows_of
from .units import seconds_text

# ---------------------------------------------------------------------------------------------------------------
# audio -> audio


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
    """Audio -> audio: for each file, in the order given, the files that sound like it (itself left out, with its
    copies: see `excluding_query`). `within`: (start, end) in seconds, the query is only the file's windows that
    overlap it (a moment of a long recording); a file with none there is reported as an error.

    Files that are indexed and unchanged use their stored vectors, read for all of them at once and searched
    `FILES_PER_SEARCH` at a time (a run of such files: one FAISS call); the others are decoded and embedded with
    the model that built the index, their windows batched together across files (`window_batches`), hashed as
    they are decoded, and each searched once embedded. A `model` that did not build the library is refused
    (StoreMismatchError) before any file is read, whether or not a file needs it, as is an `engine` of another.
    `engine`: that model already loaded (a script's or a server's, shared by its calls; it runs as it was loaded,
    whatever `device`, `batch_size` and `fast` say); else it is loaded when a file needs it.
    """
    from .window_batches import map_windows

    index = library.vector_index("audio")  # an empty library fails here, before any decoding
    # A model named (or given loaded) is one the query is meant to be embedded with: an indexed file's stored
    # vectors stand for it only when it is the library's model, and another's vectors cannot be compared with them.
    if engine is not None and engine.model_dir is not None:
        check_index_model(library, engine.model_dir)
    elif model is not None and engine is None:
        check_index_model(library, ModelDir.resolve(model))
    queries = list(zip([os.fspath(path) for path in paths], stored_windows_of(library, paths, audio=True), strict=True))
    to_embed = [path for path, stored in queries if stored is None or stored.vectors is None]
    engine = _index_engine(library, model, device, batch_size, fast, engine) if to_embed else None
    batch = engine.windows_per_batch(1) if engine else 1
    outcomes = map_windows(to_embed, _audio_vectors(engine), batch_size=batch, hash_files=True, progress=progress)
    prepared = (_query(path, stored, outcomes, within) for path, stored in queries)
    # Indexed files are searched together, a run of them at a time; a decoded one as soon as it is embedded (a
    # file that fails is said as it happens, not once the files after it are done).
    for from_index, run in groupby(prepared, key=lambda item: item.source == "index"):
        for group in chunked(run, FILES_PER_SEARCH if from_index else 1):
            yield from _searched(library, index, scope, group)


# Indexed query files searched at once (`search_many`): enough that the store's reads and FAISS's calls are shared
# by many files, few enough that the rows of long files and their candidates stay small.
FILES_PER_SEARCH = 64


@dataclass(frozen=True)
class _Query:
    """A query file's vectors, ready to search with: its windows' (n, d) vectors and time ranges, where they came
    from (`SimilarResult.source`) and the file's sha256 (its copies are left out)."""

    path: str
    vectors: np.ndarray
    spans: list[tuple[float, float]]
    source: str
    content_hash: str | None


def _query(
    path: str,
    stored: StoredWindows | None,
    outcomes: Iterator[FileOutcome[np.ndarray]],
    within: tuple[float, float] | None,
) -> _Query | SimilarResult:
    """A file's query (its stored vectors, or else the next of `outcomes`, the files decoded in order), or why there
    is none: it could not be decoded, has no window `within`, or its vectors are not finite."""
    if stored is not None and stored.vectors is not None:
        vectors, spans, source = stored.vectors, [(w.start_s, w.end_s) for w in stored.windows], "index"
        content_hash = stored.content_hash
    else:
        outcome = next(outcomes)
        if outcome.error is not None:
            return SimilarResult(path, [], None, outcome.error)
        vectors, spans, source = np.stack(outcome.results), [(s.start_s, s.end_s) for s in outcome.spans], "decoded"
        content_hash = outcome.content_hash
    if within is not None:
        kept = [i for i, (start, end) in enumerate(spans) if start < within[1] and end > within[0]]
        if not kept:
            return SimilarResult(path, [], source, _no_window_within(within, spans[-1][1]))
        vectors, spans = vectors[kept], [spans[i] for i in kept]
    if not np.isfinite(vectors).all():  # the model overflowed on this file: reported as `index` records it
        return SimilarResult(path, [], source, non_finite_vector("audio"))
    return _Query(path, vectors, spans, source, content_hash)


def _searched(
    library: Library, index: WindowIndex, scope: SearchScope, group: list[_Query | SimilarResult]
) -> Iterator[SimilarResult]:
    """The results of a group of query files, in order: each query searched (all in one `search_many`, their
    copies read in one go), each file with no query reported as it was."""
    queries = [item for item in group if isinstance(item, _Query)]
    copies = library.store.files_with_hashes(query.content_hash for query in queries if query.content_hash)
    searches = [
        SearchQuery(query.vectors, _excluding(scope, absolute(query.path), query.content_hash, copies), query.spans)
        for query in queries
    ]
    found = iter(search_many(library, index, searches))
    for item in group:
        if isinstance(item, SimilarResult):
            yield item
        else:
            yield SimilarResult(item.path, next(found), item.source, query_windows=len(item.spans))


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
    copies = {} if content_hash is None else {content_hash: library.store.files_with_hash(content_hash)}
    return _excluding(scope, path, content_hash, copies)


def _excluding(
    scope: SearchScope, path: str | None, content_hash: str | None, copies: dict[str, list[FileRecord]]
) -> SearchScope:
    """`excluding_query`, the files of each sha256 (`copies`) read beforehand."""
    if path is not None:
        scope = scope.excluding(path)
    if content_hash is None:  # a file indexed before sha256s were recorded
        return scope
    return scope.without(record.path for record in copies.get(content_hash, []))


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

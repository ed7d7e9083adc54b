"""Search over an indexed library: text -> audio (`query`) and audio -> audio (`similar`).

Both search a FAISS index of window vectors (cosine similarity) and turn window hits into results:
- `by="file"` (default): the best window of each file, with its time range; `by="window"`: every window.
- Filters (score, path glob, extension, file duration) never cost results: the search fetches more candidates,
  doubling, until `k` results pass the filters or the candidates run out. Duration and a glob's literal folder
  also restrict the FAISS search itself (an id selector from `Store.filter_window_ids`), and so do names (the
  glob's wildcards, extensions) that few files have, once the first candidates show it, so selective filters
  stay cheap on large libraries.

A text query ranks windows by caption, by audio embedding or by both (`ranking`); without a choice, by caption once
every window has captions, else by audio (a library whose captions are still being written is searched whole).
The caption query must be embedded by the embedder that built the index: `query_embedder` reads it from the store;
the audio query by Pengi's text tower of the model that made the audio vectors (`audio_query_embedder`). For
Pengi's own text tower they open the numpy implementation in `text_query`, which needs neither torch nor
transformers (importing those alone takes longer than a whole query should), and keep it for the process's next
queries (`embedders.kept_text_embedder`). `similar` lives in `similar.py`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .checkpoint import CheckpointError
from .choices import DEFAULT_HYBRID_WEIGHT, By, Rank
from .chunking import doubling_chunks
from .db import StoreMismatchError, WindowDetails, caption_counts
from .embedders import (
    EmbedderSpec,
    TextEmbedder,
    TextEmbedderError,
    embed_given,
    kept_text_embedder,
)
from .errors import OptionError
from .json_values import json_score, json_seconds
from .model_dir import PENGI_TEXT_PREFIX, ModelDir, ModelNotFoundError
from .pathnames import from_typed, path_fields
from .ranking import HybridIndex
from .releases import RELEASES
from .scan import has_extension, normalize_extensions, parse_extensions

if TYPE_CHECKING:
    from .library import Library
    from .messages import Notify

log = logging.getLogger(__name__)
_FIRST_FETCH = 4  # candidates fetched per wanted result at first (files have several windows)
# Candidates per wanted result past which a search narrows itself to the files whose names pass (a name fewer than
# about one window in 16 has): `_windows_of_named_files`.
_NAMES_AFTER = 16
_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Filters:
    """Conditions a hit's file must meet; None means no condition."""

    min_score: float | None = None
    path_glob: str | None = None  # fnmatch pattern over the full path
    extensions: frozenset[str] | None = None  # as given ("WAV", ".flac", "wav,flac"), kept lower-case with the dot
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    exclude_paths: frozenset[str] = frozenset()  # left out however they are reached (see `_left_out`)

    def __post_init__(self) -> None:
        # A script's {"mp3"} would match no file, silently, if kept as given: the names are compared with the dot.
        if (given := self.extensions) is not None:
            names = parse_extensions(given) if isinstance(given, str) else normalize_extensions(given)
            object.__setattr__(self, "extensions", names)
        low, high = self.min_duration_s, self.max_duration_s
        if low is not None and high is not None and low > high:
            # No file can match: say so rather than answer "no results" as if the library lacked them.
            raise OptionError(
                "min_duration", "{low:g} is more than {max_duration} {high:g}: no file can match", low=low, high=high
            )

    @classmethod
    def from_options(
        cls,
        *,
        min_score: float | None = None,
        path: str | None = None,
        ext: str | None = None,
        min_duration: float | None = None,
        max_duration: float | None = None,
    ) -> Filters:
        """Command-line values: a relative `path` glob is taken from the current folder (`\\xff` in it is the byte
        0xff of a name that is not UTF-8, see `pathnames.from_typed`), `ext` is "wav,.flac". A number that is not
        finite (`nan` parses as a float) is refused: no score or duration compares true with it."""
        if path == "":  # `--path "$UNSET"`: as a glob from the current folder it would match nothing, silently
            raise OptionError("path", "is empty; give a glob such as '*/dogs/*', or leave the option out")
        bounds = {"min_score": min_score, "min_duration": min_duration, "max_duration": max_duration}
        for option, value in bounds.items():
            if value is not None and not math.isfinite(value):
                raise OptionError(option, "{value} is not a finite number", value=value)
        return cls(
            min_score=min_score,
            path_glob=None if path is None else absolute_glob(from_typed(path)),
            extensions=None if ext is None else parse_extensions(ext),
            min_duration_s=min_duration,
            max_duration_s=max_duration,
        )

    def folder(self) -> str | None:
        """The literal folder the glob starts with (a store-side restriction), if any."""
        if self.path_glob is None:
            return None
        literal = _WILDCARD.split(self.path_glob, maxsplit=1)[0]
        folder = literal if literal == self.path_glob else literal.rpartition("/")[0]
        return folder or None

    def restricts_store(self) -> bool:
        return self.folder() is not None or self.min_duration_s is not None or self.max_duration_s is not None

    def names_files(self) -> bool:
        """Whether a condition is on the files' names (a path glob, extensions)."""
        return self.path_glob is not None or self.extensions is not None

    def accepts(self, window: WindowDetails) -> bool:
        """The conditions the store-side restriction does not cover (or covers only in part)."""
        if self.exclude_paths and _left_out(window.path, self.exclude_paths):
            return False
        return self.accepts_name(window.path)

    def accepts_name(self, path: str) -> bool:
        """Whether the path glob and the extensions accept the file at `path`."""
        if self.path_glob is not None and not fnmatch.fnmatch(path, self.path_glob):
            return False
        return self.extensions is None or has_extension(path, self.extensions)


def _left_out(path: str, excluded: frozenset[str]) -> bool:
    """Whether the file at `path` is one of `excluded`: by its path, or by the real path behind its links (a linked
    folder, a library indexed through a link). Only a path whose name is one of theirs is resolved: resolving every
    candidate would stat files on a mount that may not answer."""
    if path in excluded:
        return True
    name = os.path.basename(path)
    return any(os.path.basename(other) == name for other in excluded) and os.path.realpath(path) in excluded


def absolute_glob(pattern: str) -> str:
    """`pattern` as a glob over absolute paths: a relative one (not starting with a wildcard) is joined to the cwd."""
    pattern = os.path.expanduser(pattern)
    if pattern.startswith(("/", "*", "?", "[")):
        return pattern
    return Path.cwd().as_posix().rstrip("/") + "/" + pattern


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


def search_index(
    library: Library,
    index: Any,
    queries: np.ndarray,
    scope: SearchScope = SearchScope(),
    *,
    query_spans: Sequence[tuple[float, float]] | None = None,
) -> list[Hit]:
    """The results in `scope` for the query rows (q, d), best first, from an index with
    `search(queries, k, allowed_ids=)` and `len`: the library's `vector_index(kind)` or a `HybridIndex`.

    With several query rows a window's score is its best cosine similarity to any of them. `query_spans` gives
    each row's time range (for `similar`'s results).
    """
    k, filters = scope.k, scope.filters
    allowed = _allowed_ids(library, filters)
    names_left = filters.names_files()  # applied to hits; to the search itself once that pays (below)
    available = len(index) if allowed is None else int(allowed.size)
    fetch = min(max(k * _FIRST_FETCH, 16), available)
    while True:
        found = _fetch(index, queries, fetch, allowed, complete=fetch >= available, k=k, exact=scope.exact)
        hits = _results(library, found, scope, query_spans)
        below_min = filters.min_score is not None and found.threshold < filters.min_score
        if len(hits) >= k or found.exhausted or below_min or fetch >= available:
            return hits
        if names_left and fetch >= _NAMES_AFTER * k:
            allowed, names_left = _windows_of_named_files(library, filters), False
            available = int(allowed.size)
        fetch = min(fetch * 2, available)


def search_pages(
    library: Library,
    index: Any,
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


def _allowed_ids(library: Library, filters: Filters) -> np.ndarray | None:
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


def _fetch(
    index: Any, queries: np.ndarray, fetch: int, allowed: np.ndarray | None, *, complete: bool, k: int, exact: bool
) -> _Candidates:
    """The top `fetch` windows of every query row, the first `k` of them as accurate as a search for `k` (the rest
    stand in for windows that results of the same file or the filters drop); `complete` when that is every
    candidate."""
    found = _Candidates(exhausted=True)
    if fetch < 1:
        return found
    scores, ids = index.search(queries, fetch, allowed_ids=allowed, exact_top=k, exact=exact)
    for row in range(len(ids)):
        valid = ids[row] >= 0
        # A row with an empty slot holds every candidate: an index returns min(fetch, all it may), however
        # approximate (`VectorIndex.search`). A full one may have more below its last score.
        if valid.all() and not complete:
            found.exhausted = False
            found.threshold = max(found.threshold, float(scores[row, -1]))
        for wid, score in zip(ids[row][valid].tolist(), scores[row][valid].tolist(), strict=True):
            if wid not in found.best or score > found.best[wid][0]:
                found.best[wid] = (score, row)
    return found


def _results(
    library: Library, found: _Candidates, scope: SearchScope, query_spans: Sequence[tuple[float, float]] | None
) -> list[Hit]:
    filters = scope.filters
    ranked = found.ranked()
    if filters.min_score is not None:
        ranked = [item for item in ranked if item[1] >= filters.min_score]
    hits: list[Hit] = []
    seen_files: set[int] = set()
    for page in doubling_chunks(ranked, first=2 * scope.k):
        details = library.store.window_details(wid for wid, _, _ in page)  # most searches need one page
        for wid, score, row in page:
            window = details.get(wid)
            if window is None or not filters.accepts(window) or (scope.by == By.file and window.file_id in seen_files):
                continue
            seen_files.add(window.file_id)
            span = query_spans[row] if query_spans is not None else (None, None)
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


def query_embedder(library: Library, model: str | None = None, device: str = "auto") -> TextEmbedder:
    """The text embedder that built the library's 'text' index, loaded the cheapest way (see `open_text_embedder`)
    once per process (`kept_text_embedder`).

    Raises StoreMismatchError when `--model` (or the default model) is not the one the index was built with.
    """
    meta = library.store.index_meta()
    if meta is None:
        from .library import EmptyLibraryError

        raise EmptyLibraryError(
            library.name, f"the index is empty: run `pengi-search index PATH{library.store.db_option}` first"
        )
    spec = EmbedderSpec.of_embedder_id(meta.embedder.name)
    if spec is None:
        raise StoreMismatchError(
            library.name, f"the index was built with an unknown text embedder {meta.embedder.name!r}"
        )
    model_dir = _text_tower_model(library, meta.embedder.name, model) if spec.is_pengi else None
    embedder = kept_text_embedder(spec, model_dir, device)
    if embedder.dim != meta.embedder.dim:
        raise StoreMismatchError(
            library.name, f"{embedder.id} makes {embedder.dim}-d vectors, the index holds {meta.embedder.dim}-d ones"
        )
    return embedder


def _text_tower_model(library: Library, embedder_id: str, model: str | None) -> ModelDir:
    """The model whose text tower made `embedder_id`: `--model` (or the default), else, without `--model`, an
    installed model with the index's identity. Without either, a library built by a released model asks for it
    (ModelNotFoundError: the first-use download); one built by another model names that model."""
    missing: ModelNotFoundError | None = None
    try:
        model_dir: ModelDir | None = ModelDir.resolve(model)
    except ModelNotFoundError as err:
        if model is not None:
            raise
        model_dir, missing = None, err
    if model is None and (model_dir is None or model_dir.text_embedder_id != embedder_id):
        found = (candidate for candidate in ModelDir.installed() if candidate.text_embedder_id == embedder_id)
        model_dir = next(found, model_dir)
    builder = embedder_id.removeprefix(PENGI_TEXT_PREFIX)  # the model's identity, `name@fingerprint`
    if model_dir is None:
        if missing is not None and builder.partition("@")[0] in RELEASES:
            raise missing  # the released model can be fetched (the first-use download)
        raise StoreMismatchError(
            library.name,
            f"the index was built with model {builder}, which is not installed here: pass its directory with --model",
        )
    if model_dir.text_embedder_id != embedder_id:
        raise StoreMismatchError(
            library.name,
            f"the index was built with the text embedder of model {builder}, "
            f"but {model_dir.path} is {model_dir.identity}. Pass that model with --model, or re-index the library "
            f"with this one (pengi-search index PATH --model ...{library.store.db_option})",
        )
    return model_dir


def audio_query_embedder(
    library: Library, model: str | None = None, device: str = "auto", *, caption_embedder: TextEmbedder | None = None
) -> TextEmbedder:
    """Pengi's text tower of the model that made the library's audio vectors (for `Rank.audio` and `Rank.hybrid`).

    When that tower also embedded the captions, `caption_embedder` (the library's, if already open) is it.
    Raises TextEmbedderError when the model has no text tower (base_no_text_enc).
    """
    meta = library.store.index_meta()
    if meta is not None and meta.embedder.name.startswith(PENGI_TEXT_PREFIX):
        if caption_embedder is not None and caption_embedder.id == meta.embedder.name:
            return caption_embedder
        return query_embedder(library, model, device)
    model_dir = _audio_model(library, model)
    if not model_dir.has_text_encoder:
        raise TextEmbedderError(
            "--rank",
            f"the index's model {model_dir.identity} has no text tower (base_no_text_enc), so a text query can only "
            "be matched with captions: use --rank caption",
        )
    return kept_text_embedder(EmbedderSpec(), model_dir, device)


def _audio_model(library: Library, model: str | None) -> ModelDir:
    """The model that made the audio vectors: `--model` (or the default), else an installed one with its weights."""
    model_dir = ModelDir.resolve(model)
    if not built_by(library, model_dir) and model is None:
        model_dir = next((found for found in ModelDir.installed() if built_by(library, found)), model_dir)
    check_index_model(library, model_dir)
    return model_dir


def choose_rank(library: Library, requested: Rank | None = None, model: str | None = None) -> Rank:
    """`requested`, else caption when every window has captions (or no text tower can embed an audio query), else
    audio."""
    if requested is not None:
        return Rank(requested)
    if library.caption_counts().missing == 0 or not _audio_tower_known(library, model):
        return Rank.caption
    return Rank.audio


def _audio_tower_known(library: Library, model: str | None) -> bool:
    """Whether the model that made the audio vectors has a text tower (nothing is loaded to find out)."""
    meta = library.store.index_meta()
    if meta is not None and meta.embedder.name.startswith(PENGI_TEXT_PREFIX):
        return True
    try:
        return _audio_model(library, model).has_text_encoder
    except (StoreMismatchError, CheckpointError):  # not installed here, or another model
        return False


def ranked_index(
    library: Library, rank: Rank, caption_query: np.ndarray | None, audio_query: np.ndarray | None, weight: float
) -> tuple[Any, np.ndarray]:
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


def _caption_index(library: Library) -> Any:
    """The 'text' index; when windows exist but none has captions yet, an error that says what to do."""
    from .library import EmptyLibraryError

    try:
        return library.vector_index("text")
    except EmptyLibraryError as exc:
        if caption_counts(library.store).window_count == 0:
            raise
        raise EmptyLibraryError(
            exc.where,
            f"no window has captions yet: `pengi-search index PATH{library.store.db_option}` writes them; "
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


def built_by(library: Library, model_dir: ModelDir) -> bool:
    """Whether the library's texts and audio vectors were made by the model in `model_dir` (same weights)."""
    meta = library.store.index_meta()
    return meta is not None and meta.model.fingerprint == model_dir.fingerprint


def check_index_model(library: Library, model_dir: ModelDir) -> None:
    """Raise StoreMismatchError unless the model in `model_dir` built the library's audio vectors."""
    if not built_by(library, model_dir):
        meta = library.store.index_meta()
        raise StoreMismatchError(
            library.name,
            f"the index was built with {meta.model if meta else 'no model'}, not with the model at {model_dir.path}: "
            "pass the index's model with --model (audio embeddings of different models cannot be compared)",
        )

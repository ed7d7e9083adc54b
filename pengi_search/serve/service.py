"""What the server does, shared by the pages and the JSON API: search, similar, files, describe, classify, stats.

One `Service` lives as long as the server. It opens the database read-only, loads the query text embedder once
(the numpy text tower, reloaded only when the library is re-indexed with another embedder), keeps the embeddings
of recent query texts (refining a search re-embeds nothing) and loads the full model only when an uploaded clip
needs it. Results have the shapes of the CLI's `--json` output, plus the ids the pages link.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..choices import Rank
from ..db import FileRecord, OtherModelError, Store, WindowDetails
from ..embedders import TextEmbedderError, warn_of_cuts
from ..hashing import file_sha256
from ..index_hints import other_model_fix
from ..json_values import json_seconds
from ..library import EmptyLibraryError
from ..library_stats import stats_json
from ..pathnames import path_fields
from ..query_embedders import audio_query_embedder, check_index_model, installed_builder, query_embedder
from ..search import Hit, SearchScope, choose_rank, ranked_index, search_pages
from ..units import span_text
from . import catalog, media
from .batching import EmbedBatcher
from .conversions import Conversions
from .errors import InvalidParameter, RequestError
from .http_cache import AudioFile, Made, entity_tag
from .kept_clips import KeptClip, KeptClips
from .live import LiveLibrary
from .not_installed import USE_ITS_MODEL, LibraryModelNotInstalled, not_installed, refused_unless_installed
from .ranked_pages import RankedPages
from .search_params import SearchParams
from .security import servable_path
from .settings import ServeSettings

if TYPE_CHECKING:
    from ..embedders import TextEmbedder
    from ..inference import Engine
    from ..model_dir import ModelDir
    from ..window_index import WindowIndex
    from .uploads import Upload

log = logging.getLogger(__name__)

PEAKS = 120  # waveform points per hit
PEAKS_KEPT = 4096  # windows whose peaks are kept
QUERY_CACHE = 4096  # query embeddings kept
ENGINES_KEPT = 2  # full models kept loaded: the server's (describe, classify) and the library's (uploads' similar)
RUNS_SHOWN = 10  # the latest runs /api/stats gives
FAILED_SHOWN = 200  # the first failed files /api/stats gives
MAX_ID = 2**63 - 1  # the largest database row id (SQLite INTEGER, PostgreSQL BIGINT); a larger one names no row
GONE = "no longer in the index (its file was indexed again, moved or removed since): search again"


@dataclass(frozen=True)
class Found:
    """A text search's hits, and `warnings`: what `query` says on stderr meanwhile (the query text cut by a text
    embedder), for the client who sent the text, where the server's log would tell it to no one."""

    hits: list[dict[str, Any]]
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class _Embedded:
    """A query text's embedding (1, d) and the warnings embedding it gave (`warn_of_cuts`), kept together."""

    vector: np.ndarray
    warnings: tuple[str, ...]


class Service:
    """The server's state and operations (thread-safe: requests run in a thread pool)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.library = LiveLibrary(Store.open(settings.db, read_only=True), check_s=settings.check_s)
        # Transcodes, spectrograms, peaks and cut windows: different files' side by side, a few at a time
        self.conversions = Conversions()
        self.transcodes = media.TranscodeCache(settings.transcode_cache_bytes, self.conversions)
        self._peaks = lru_cache(maxsize=PEAKS_KEPT)(self._read_peaks)
        self._embedder: TextEmbedder | None = None
        self._embedder_generation = -1
        self._audio_embedder: TextEmbedder | None = None
        self._audio_generation = -1
        self._query_cache: OrderedDict[tuple[int, str, str], _Embedded] = OrderedDict()
        self._batcher = EmbedBatcher()
        self._ranked = RankedPages(lambda: self.library.version)
        self._engines: OrderedDict[Path, Engine] = OrderedDict()  # by model directory, the latest used last
        self._model_dir: ModelDir | None = None
        self._library_model: tuple[int, ModelDir] | None = None  # the library's generation, its installed model
        self._model_checked = -1  # the library's generation found built by the server's --model (-1: none yet)
        self._embedder_lock = threading.Lock()
        self._model_lock = threading.Lock()  # one model run at a time: uploads are CPU-bound
        # Uploads' embeddings, for their next pages: in the folder the server's processes share, else one of its own
        self._own_folder: tempfile.TemporaryDirectory[str] | None = None
        folder = settings.kept_dir
        if folder is None:
            self._own_folder = tempfile.TemporaryDirectory(prefix="pengi-serve-clips-")
            folder = Path(self._own_folder.name)
        self.kept = KeptClips(folder)

    def close(self) -> None:
        """Release the database connections and temporary files; closing again does nothing."""
        self._batcher.close()
        self.library.close()
        self.transcodes.close()
        if self._own_folder is not None:
            self._own_folder.cleanup()

    def warm_up(self) -> None:
        """Load the indexes and the query embedder now, so the first search is as fast as the next; a server whose
        --model did not build the library does not start (`check_model`). One without --model whose library's model
        is not installed here starts, and says what it refuses until then (`not_installed`)."""
        self.check_model()
        try:
            self.embedder()
        except EmptyLibraryError as exc:
            log.warning("%s", exc)
        except LibraryModelNotInstalled as exc:
            log.warning("text search needs the library's model: %s", exc)

    # -- models ----------------------------------------------------------------------------------------------

    def embedder(self) -> TextEmbedder:
        """The text embedder that built the index (reloaded when the library was re-indexed with another)."""
        self.library.refresh()
        with self._embedder_lock, refused_unless_installed(self.library, self.settings.model):
            if self._embedder is None or self._embedder_generation != self.library.generation:
                generation = self.library.generation
                self._embedder = query_embedder(self.library, self.settings.model, self.settings.device)
                self._embedder_generation = generation
            return self._embedder

    def audio_embedder(self) -> TextEmbedder:
        """Pengi's text tower of the model that made the audio vectors (the caption embedder when it is that)."""
        self.library.refresh()
        with self._embedder_lock, refused_unless_installed(self.library, self.settings.model):
            if self._audio_embedder is None or self._audio_generation != self.library.generation:
                generation = self.library.generation
                caption = self._embedder if self._embedder_generation == generation else None
                self._audio_embedder = audio_query_embedder(
                    self.library, self.settings.model, self.settings.device, caption_embedder=caption
                )
                self._audio_generation = generation
            return self._audio_embedder

    def engine(self, model_dir: ModelDir | None = None) -> Engine:
        """The full model in `model_dir` (by default the server's), loaded on first use for uploaded clips; the
        ENGINES_KEPT used last stay loaded (without --model, the library's model may be another than the default)."""
        model_dir = model_dir or self.model_dir()
        with self._model_lock:
            engine = self._engines.get(model_dir.path)
            if engine is None:
                from ..inference import Engine

                engine = Engine.load(model_dir, self.settings.device, self.settings.batch_size)
                self._engines[model_dir.path] = engine
                while len(self._engines) > ENGINES_KEPT:
                    self._engines.popitem(last=False)
            self._engines.move_to_end(model_dir.path)
            return engine

    def check_model(self) -> None:
        """Refuse (OtherModelError, 409) what compares with the library's vectors while the server's --model is not
        the model that built them, as `similar --model other` is refused, for an indexed file too: the server says
        it runs with that model, whose embeddings cannot be compared with another's. Without --model the server
        runs with the library's own, as the commands do; an empty library has none to differ. Checked again once
        the library is indexed anew (its generation)."""
        if self.settings.model is None:
            return
        self.library.refresh()
        generation = self.library.generation
        if generation == self._model_checked or self.library.store.index_meta() is None:
            return
        try:
            check_index_model(self.library, self.model_dir())
        except OtherModelError as exc:
            raise exc.fixed_by(other_model_fix(self.library.store, self.settings.model, USE_ITS_MODEL)) from None
        self._model_checked = generation

    def library_model(self) -> ModelDir:
        """The model an uploaded clip is embedded with to be compared with the library's audio vectors: the server's
        --model (`check_model`), else the model that built the library as installed here, found by its weights as
        `query` finds it (`installed_builder`), which need not be the default model. None installed: refused
        (OtherModelError, 409) rather than compared with another model's vectors."""
        if self.settings.model is not None:
            self.check_model()
            return self.model_dir()
        self.library.refresh()
        generation = self.library.generation
        if self._library_model is not None and self._library_model[0] == generation:
            return self._library_model[1]
        found = installed_builder(self.library)
        if found is None:
            raise not_installed(self.library, "audio embeddings of different models cannot be compared")
        self._library_model = (generation, found)
        return found

    def model_dir(self) -> ModelDir:
        from ..model_dir import ModelDir

        if self._model_dir is None:  # resolving twice in a race is harmless
            self._model_dir = ModelDir.resolve(self.settings.model)
        return self._model_dir

    # -- search ----------------------------------------------------------------------------------------------

    def search(self, text: str, params: SearchParams) -> Found:
        """Text -> audio, as `pengi-search query --json` (plus each hit's file id), ranked as `params.rank` says;
        with what the command would warn of (each warning once: a hybrid ranking may embed the text twice)."""
        if not text.strip():
            raise InvalidParameter("q", "the query text is empty")
        scope = self._scope(params)
        seen = self._library_version()
        self.check_model()
        requested, weight = params.ranking()
        rank = choose_rank(self.library, requested, self.settings.model)
        warnings: list[str] = []
        caption = None if rank is Rank.audio else self._query_vector(text, Rank.caption, warnings)
        try:
            audio = None if rank is Rank.caption else self._query_vector(text, Rank.audio, warnings)
        except TextEmbedderError:  # worded for the command line's --rank
            raise RequestError(
                "rank",
                f"{rank.value}: the library's model has no text tower, so a text query can only be matched "
                "with captions: use rank=caption",
            ) from None
        index, queries = ranked_index(self.library, rank, caption, audio, weight)
        hits = self._pages(("text", text, rank, weight), seen, index, queries, scope, params)
        ranked = [dataclasses.replace(hit, ranking=rank) for hit in hits]
        return Found(self._hits_json(ranked), list(dict.fromkeys(warnings)))

    def _query_vector(self, text: str, rank: Rank, warnings: list[str]) -> np.ndarray:
        """The text's embedding (1, d) for matching captions or audio, what embedding it warns of added to
        `warnings`; the latest QUERY_CACHE texts are kept with their warnings (a refined search reuses its text).
        Concurrent requests share the tower's passes (`EmbedBatcher`)."""
        embedder = self.audio_embedder() if rank is Rank.audio else self.embedder()
        key = (self.library.generation, embedder.id, text)  # one tower for captions and audio: embedded once
        with self._embedder_lock:
            embedded = self._query_cache.get(key)
            if embedded is not None:
                self._query_cache.move_to_end(key)
        if embedded is None:
            said: list[str] = []
            warn_of_cuts(embedder, [text], said.append, what="query")
            embedded = _Embedded(self._batcher.embed(embedder, text), tuple(said))
            with self._embedder_lock:
                self._query_cache[key] = embedded
                while len(self._query_cache) > QUERY_CACHE:
                    self._query_cache.popitem(last=False)
        warnings += embedded.warnings
        return embedded.vector

    def similar_to_window(self, window_id: int, params: SearchParams) -> list[dict[str, Any]]:
        """Audio -> audio from an indexed window ("more like this"); its own file is left out, with its copies, as
        `similar FILE` leaves FILE out (`excluding_query`)."""
        from ..similar import excluding_query

        window = self.window(window_id)
        seen = self._library_version()
        self.check_model()
        ids, vectors = self.library.store.vectors("audio", [window_id])
        if len(ids) == 0:
            raise RequestError(f"window {window_id}", "has no audio embedding", HTTPStatus.NOT_FOUND)
        record = self.library.store.get_file(window.path)
        scope = self._scope(params).without([window.path])
        scope = excluding_query(self.library, scope, record.content_hash if record is not None else None)
        index = self.library.vector_index("audio")
        spans = [(window.start_s, window.end_s)]
        return self._hits_json(self._pages(("window", window_id), seen, index, vectors, scope, params, spans))

    def similar_to_upload(self, upload: Upload, params: SearchParams) -> tuple[str, list[dict[str, Any]]]:
        """Audio -> audio from a clip sent by the client (`keep_upload`): the token its next pages are asked for by
        (`similar_to_kept`), and its hits."""
        token, clip = self.keep_upload(upload, params)
        return token, self._similar_to_clip(token, clip, params)

    def keep_upload(self, upload: Upload, params: SearchParams) -> tuple[str, KeptClip]:
        """Embed a clip sent by the client with the model that built the index, and keep the embedding for the
        pages of its results (`kept_clips`): its token, and the clip. `params` are checked first: a search refused
        is refused before the model runs."""
        from ..similar import embed_audio_file

        self._scope(params)
        self.library.vector_index("audio")  # an empty library fails here, before the model is loaded
        model_dir = self.library_model()
        engine = self.engine(model_dir)
        with self._model_lock:
            vectors, spans = embed_audio_file(
                self.library,
                upload.path,
                model=str(model_dir.path),
                device=self.settings.device,
                batch_size=self.settings.batch_size,
                engine=engine,
            )
        clip = KeptClip(upload.name, file_sha256(upload.path), vectors, spans, model_dir.fingerprint)
        return self.kept.keep(clip), clip

    def similar_to_kept(self, token: str, params: SearchParams) -> tuple[str, list[dict[str, Any]]]:
        """The results of a clip sent earlier, by the token `keep_upload` gave it: the clip's name, and its hits.
        The library must still be one of the server's model (re-indexed by another, its vectors are not comparable
        with the clip's)."""
        clip = self.kept.get(token)
        model_dir = self.library_model()
        if clip.model is not None and clip.model != model_dir.fingerprint:  # indexed anew since by another model
            raise OtherModelError(
                self.library.name,
                "this clip was embedded by another model than the library's vectors now are (indexed anew since): "
                "audio embeddings of different models cannot be compared",
                "send the clip again",
            )
        return clip.name, self._similar_to_clip(token, clip, params)

    def _similar_to_clip(self, token: str, clip: KeptClip, params: SearchParams) -> list[dict[str, Any]]:
        """A clip's hits. A clip that is a library file (the same sha256) leaves that file out, with its copies, as
        `similar FILE` leaves FILE out: else the file itself would come first, a perfect match that says nothing."""
        from ..similar import excluding_query

        seen = self._library_version()
        scope = excluding_query(self.library, self._scope(params), clip.sha256)
        index = self.library.vector_index("audio")
        return self._hits_json(self._pages(("clip", token), seen, index, clip.vectors, scope, params, clip.spans))

    def _library_version(self) -> int:
        """The library's version, refreshed first: read before a search takes its indexes (`RankedPages.page`)."""
        self.library.refresh()
        return self.library.version

    def _pages(
        self,
        query: Hashable,
        seen: int,
        index: WindowIndex,
        queries: np.ndarray,
        scope: SearchScope,
        params: SearchParams,
        spans: Sequence[tuple[float, float]] | None = None,
    ) -> list[Hit]:
        """The pages `params` ask for (`search_pages`): pages fetched one by one are one list. A first page is
        searched; pages past it are cut from the hits of that search made deeper (`RankedPages`), kept by `query`
        (what was searched for), the search's options and the library's version `seen`."""
        stop = params.offset + params.k * params.pages
        if stop <= params.k:
            return search_pages(self.library, index, queries, scope, offset=params.offset, query_spans=spans)

        def first_pages(pages: int) -> list[Hit]:
            return search_pages(self.library, index, queries, scope, pages=pages, query_spans=spans)

        key = (query, dataclasses.replace(params, offset=0, pages=1))
        most_pages = -(-(self.settings.max_offset + params.k) // params.k)  # the deepest page the server gives
        page = self._ranked.page(key, seen, params.k, params.offset, stop, most_pages, first_pages)
        # Whether a hit's file is on disk is said as of now (a search says it as it reads the hit), not as kept
        return [dataclasses.replace(hit, missing=not os.path.exists(hit.path)) for hit in page]

    def _scope(self, params: SearchParams) -> SearchScope:
        """The search `params` ask for, pages of `k` results: its filters (`SearchParams.filters`), checked, and
        the server's limits: `k` per page (`max_k`), and `max_offset` for the start of the deepest page."""
        filters = params.filters()
        most = self.settings.max_offset
        if not 1 <= params.k <= self.settings.max_k:
            raise InvalidParameter("k", f"the number of results must be between 1 and {self.settings.max_k}")
        if not 0 <= params.offset <= most:
            raise InvalidParameter("offset", f"the results skipped must be between 0 and {most}")
        if params.pages < 1 or params.offset + params.k * (params.pages - 1) > most:
            raise InvalidParameter("pages", f"the deepest page must start at result {most + 1} or before")
        return SearchScope(params.k, params.by, filters)

    def _hits_json(self, hits: Sequence[Hit]) -> list[dict[str, Any]]:
        return [{**hit.to_json(), **path_fields(hit.path, readable=True), "file_id": hit.file_id} for hit in hits]

    # -- files and windows -----------------------------------------------------------------------------------

    def window(self, window_id: int) -> WindowDetails:
        window = self.library.store.window_details([window_id]).get(window_id) if abs(window_id) <= MAX_ID else None
        if window is None:
            raise self._not_found("window", window_id, catalog.highest_window_id)
        return window

    def file_record(self, file_id: int) -> FileRecord:
        record = catalog.file_by_id(self.library.store, file_id) if abs(file_id) <= MAX_ID else None
        if record is None:
            raise self._not_found("file", file_id, catalog.highest_file_id)
        return record

    def _not_found(self, what: str, item_id: int, highest: Callable[[Store], int]) -> RequestError:
        """The 404 of a window or file id that names none. Ids are never given twice: one up to the highest given
        was there once, and went since the page that names it was made (its file indexed again, moved or removed);
        said so, with what to do, to the user who pressed it there, where "no such window" would contradict the
        page."""
        was_there = 0 < item_id <= highest(self.library.store)
        return RequestError(
            f"{what} {item_id}", GONE if was_there else f"no such {what} in the index", HTTPStatus.NOT_FOUND
        )

    def file(self, file_id: int) -> dict[str, Any]:
        """A file with its windows and what Pengi wrote for each (the shape of `pengi-search export`, plus ids)."""
        record = self.file_record(file_id)
        windows = self.library.store.file_windows(record.id)
        return {"id": record.id, **record.to_json(readable=True), "windows": [_window_json(w) for w in windows]}

    def file_audio(self, file_id: int) -> AudioFile:
        """The file to send for a file's player: the file itself, or a FLAC transcode (named as the file, with the
        extension of what it is), kept on disk until it is sent."""
        record = self.file_record(file_id)
        real = servable_path(record, self.settings.roots)
        name = Path(record.path).name  # as indexed: a link's own name, not its target's
        mime = media.browser_type(real)
        if mime is not None:
            return AudioFile(real, mime, name)
        key = (record.id, record.size, record.mtime)
        flac = self.transcodes.flac(key, real, self.settings.max_transcode_s)
        return AudioFile(flac.path, "audio/flac", f"{Path(name).stem}.flac", flac.release)

    def unplayable(self, file_id: int) -> str | None:
        """Why the file's audio cannot be served (gone or changed on disk, outside the served folders), or None: the
        file's page says so, where its player would otherwise fail without a word."""
        return self._unservable(self.file_record(file_id))

    def unplayable_hits(self, hits: Sequence[dict[str, Any]]) -> dict[int, str]:
        """Why the files of `hits` cannot be played, by file id (the others are left out): a page of results says
        so at each, where *Play hit* would otherwise do nothing visible."""
        file_ids = sorted({hit["file_id"] for hit in hits if hit.get("file_id") is not None})
        records = catalog.files_by_id(self.library.store, file_ids) if file_ids else {}
        reasons = {file_id: self._unservable(record) for file_id, record in records.items()}
        return {file_id: reason for file_id, reason in reasons.items() if reason is not None}

    def _unservable(self, record: FileRecord) -> str | None:
        try:
            servable_path(record, self.settings.roots)
        except RequestError as exc:
            return exc.reason
        return None

    def window_audio(self, window_id: int) -> Made:
        """The window cut from its file as WAV (made only when the client does not hold it: see `http_cache`)."""
        window = self.window(window_id)
        record = self.file_record(window.file_id)
        real = servable_path(record, self.settings.roots)
        tag = entity_tag("window", window_id, record.size, record.mtime)
        name = f"{Path(record.path).stem}_{span_text(window.start_s, window.end_s)}.wav"  # bell_2.5-9.5s.wav
        return self._made(tag, lambda: media.window_wav(real, window.start_s, window.end_s), name)

    def window_peaks(self, window_id: int) -> Made:
        """A window's waveform, (min, max) pairs over it, as the JSON of `/api/windows/ID/peaks` (made only when
        the client does not hold it)."""
        window = self.window(window_id)
        record = self.file_record(window.file_id)
        real = servable_path(record, self.settings.roots)
        stamp = (record.size, record.mtime)
        tag = entity_tag("peaks", window_id, *stamp, PEAKS)

        def make() -> bytes:
            pairs = self._peaks(real, stamp, window.start_s, window.end_s)
            return json.dumps({"window_id": window_id, "peaks": pairs}, separators=(",", ":")).encode()

        return Made(tag, make)

    def _read_peaks(
        self, path: Path, stamp: tuple[int | None, float | None], start_s: float, end_s: float
    ) -> tuple[tuple[float, float], ...]:
        """Peaks of a stretch of a file (`_peaks` keeps them; `stamp`, (size, mtime), keys them, so that a changed
        file is read again)."""
        key = ("peaks", path, stamp, start_s, end_s)
        return tuple(self.conversions.run(key, lambda: media.peaks(path, start_s, end_s, PEAKS)))

    def spectrogram(self, file_id: int) -> Made:
        """The file's spectrogram as PNG (made only when the client does not hold it: see `http_cache`)."""
        record = self.file_record(file_id)
        real = servable_path(record, self.settings.roots)
        tag = entity_tag("spectrogram", file_id, record.size, record.mtime, self.settings.spectrogram_s)
        return self._made(tag, lambda: media.spectrogram_png(real, self.settings.spectrogram_s))

    def _made(self, tag: str, make: Callable[[], bytes], name: str | None = None) -> Made:
        """`make` as `Made` by `tag`, run among the server's conversions: once for clients that ask at once."""
        return Made(tag, lambda: self.conversions.run(tag, make), name)

    # -- uploaded clips --------------------------------------------------------------------------------------

    def describe(self, upload: Upload) -> dict[str, Any]:
        """Audio -> text for every window, as `pengi-search describe --json` gives one file."""
        from ..audio import load_audio
        from ..decoding import GenerationConfig

        engine = self.engine()
        gen = GenerationConfig(beam=self.settings.beam, max_len=self.settings.max_len)
        samples = load_audio(upload.path)  # decoded before taking the model, which other requests wait for
        with self._model_lock:
            described = engine.describe(samples, generation=gen)
        rows = [window.to_json() for window in described]
        return {"path": upload.name, "duration_s": json_seconds(upload.duration_s), "windows": rows, "error": None}

    def classify(
        self, upload: Upload, labels: list[str], method: str = "text", top: int = 5, texts: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Zero-shot classification of a clip, as `pengi-search classify --json` gives one file, and `warnings`: what
        the command says on stderr (a label cut by the text embedder), for the client, who sent the labels. `texts`:
        what a label is scored as, where it is not the label itself."""
        from ..classify import Classifier, ClassifySettings

        warnings: list[str] = []
        try:
            settings = ClassifySettings(method=method, beam=self.settings.beam, max_len=self.settings.max_len)
            engine = self.engine()
            classifier = Classifier(
                labels,
                settings,
                model_dir=self.model_dir(),
                device=self.settings.device,
                batch_size=self.settings.batch_size,
                engine=engine,
                texts=texts,
                notify=warnings.append,
            )
        except ValueError as exc:
            raise RequestError("classify", str(exc)) from None
        with self._model_lock:
            prediction = classifier.classify(upload.path)
        result = {**prediction.to_json(top), "path": upload.name}
        return {
            "method": method,
            "labels": labels,
            "results": [result],
            "errors": [],
            "metrics": None,
            "warnings": warnings,
        }

    # -- the library -----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """`pengi-search stats --json`, with each index's vectors in memory, the latest runs and failed files."""
        self.library.refresh()
        stats = stats_json(self.library.store, runs=RUNS_SHOWN, failed=FAILED_SHOWN, readable=True)
        live = self.library.live_indexes()
        for kind, index in stats["vector_indexes"].items():  # what this server searches now (null: not loaded)
            index["vectors_in_memory"] = len(live[kind]) if kind in live else None
        return stats


def _window_json(window: WindowDetails) -> dict[str, Any]:
    """A window of `/api/files`: as `export` writes it, with its id."""
    return {
        "window_id": window.window_id,
        "index": window.index,
        "start_s": json_seconds(window.start_s),
        "end_s": json_seconds(window.end_s),
        "texts": [text.to_json() for text in window.texts],
    }

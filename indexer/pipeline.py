"""The indexing run, in two passes: scan -> compare with the database -> files whose bytes are indexed already (moved,
renamed, copied) copied from them (`indexer.reuse`) -> decode the others (worker processes) -> audio embeddings ->
store, file by file -> prune -> FAISS files saved (pass 1: `similar` works on the whole library);
then batched Pengi generation for the windows without captions -> caption embeddings -> store, batch by batch
(pass 2, `indexer.captions`; with `--captions later`, a later run does it) -> new files identical to one the run
decoded copied from it -> FAISS files in line with the database.

Incremental: a file whose size and mtime match the database is skipped without being opened; one whose mtime moved
but whose size and sha256 match is only re-stamped. Resumable: each file is committed in one transaction as soon as
its last window is embedded, and each batch of captions in one transaction, so a run killed in either pass loses at
most the batch in flight and a re-run picks up exactly there. Per-file failures are recorded with their reason and
never stop the run, whatever the file is called (names that are not valid UTF-8 are stored as they are; a failure to
record a failure is reported, not raised). A file that decodes shorter than its header says is indexed with a note,
or recorded as failed with `strict`.

Model work starts only when there is something to do: an unchanged, captioned library costs a scan and a few
queries.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pengi_search.audio import AUDIO_EXTENSIONS, Window
from pengi_search.audio_workers import Decoded, Failed, Job, Windows, decode_all
from pengi_search.choices import Captions
from pengi_search.db import (
    TRUNCATED_NOTE,
    BuiltWithOtherError,
    EmbedderInfo,
    FileStamp,
    IndexMeta,
    ModelInfo,
    RefusedInputError,
    Store,
    StoredAudio,
    StoreError,
    WindowInput,
    caption_counts,
    drop_fast_captions,
    library_exists,
)
from pengi_search.db.run_lock import indexing_lock
from pengi_search.embedders import EmbedderSpec
from pengi_search.errors import PengiSearchError
from pengi_search.hashing import file_sha256
from pengi_search.library import Library
from pengi_search.model_dir import ModelDir
from pengi_search.pathnames import shown
from pengi_search.scan import Entry, ScanResult, has_extension, hidden_path, inside, scan
from pengi_search.torchrun_env import said_once_per_machine
from pengi_search.units import count_text, for_count

from .captions import CaptionPass, CaptionResult, IndexModel
from .emptied_folders import emptied_folders
from .hold_points import FILE_STORED, hold_at
from .left_behind import left_behind
from .reuse import Copies, IdenticalFiles, Reuse
from .run_report import FailedFile, FileNote, IndexOptions, IndexSummary, ProgressReporter, RunInterrupted
from .shard import Rank, Shard

DECODER_NOTE = "decoder: "  # how a line a C decoder printed begins among a file's notes

log = logging.getLogger(__name__)


class IndexerError(PengiSearchError):
    """A run that cannot start as asked (e.g. --reindex with --shard)."""


def run_index(options: IndexOptions, progress: ProgressReporter | None = None) -> IndexSummary:
    """Index `options.roots` into the library at `options.db`; see the module docstring."""
    started = time.monotonic()
    rank = Rank.from_env()
    # Every rank of a torchrun run checks the same options, paths, model and database before the ranks connect (at
    # the end), and meets the same mistakes there: the first rank of each machine alone says them.
    with said_once_per_machine():
        options, shard = _placed(options, rank)
        scanned = scan(options.roots, options.extensions, hidden=options.hidden)
        # A new library is created only once the run can work: a missing model fails first, leaving nothing behind.
        choice = None
        if not library_exists(options.db):
            _check_something_to_index(options, scanned)
            choice = _choose_model(options, None)
        library = Library.open(options.db, progress=None if progress is None else progress.filling)
    shard_name = None if shard is None else str(shard)
    try:
        with library, indexing_lock(library.store, shard_name, wait=options.wait):
            stale = library.store.interrupt_stale_runs(shard_name)
            summary = _Run(library, options, shard, rank, progress, started, choice).execute(scanned)
            summary.stale_runs = stale
    finally:
        if rank is not None:
            rank.close()
    summary.seconds = time.monotonic() - started
    return summary


def _placed(options: IndexOptions, rank: Rank | None) -> tuple[IndexOptions, Shard | None]:
    """The options with this rank's device (said once per machine where it has too few GPUs), and the shard this
    process indexes: `--shard`, else its torchrun rank's."""
    if rank is not None:
        options = replace(options, device=rank.device(options.device))
    shard = options.shard or (rank.shard if rank is not None and rank.world_size > 1 else None)
    if options.reindex and shard is not None and rank is None:
        raise IndexerError(
            "--reindex", "cannot be combined with --shard (shards run apart); re-index without --shard, or use torchrun"
        )
    return options, shard


def _check_something_to_index(options: IndexOptions, scanned: ScanResult) -> None:
    """Refuse to create a library from paths that hold no audio at all (a mistyped folder, a wrong --ext), as
    `describe` refuses such a folder, unless asked to (`create_empty`). An existing library's run goes on: it
    records what vanished."""
    if options.create_empty or scanned.entries or scanned.unreadable_dirs:
        return
    default = options.extensions == AUDIO_EXTENSIONS
    asked = "" if default else f" with the extensions {', '.join(sorted(options.extensions))}"
    where = for_count(len(options.roots), "this folder", "these folders")
    raise IndexerError(", ".join(map(os.fspath, options.roots)), f"no audio file{asked} in {where}")


# ---------------------------------------------------------------------------------------------------------------
# Model and embedder


@dataclass(frozen=True)
class _ModelChoice:
    model_dir: ModelDir
    model: ModelInfo
    embedder_spec: EmbedderSpec
    embedder: EmbedderInfo | None  # None: known only once loaded (a sentence-transformers model not yet recorded)


def _choose_model(options: IndexOptions, meta: IndexMeta | None) -> _ModelChoice:
    """The model asked for and the text embedder: --text-embedder, else the one the index was built with, else
    Pengi's own text tower."""
    model_dir = ModelDir.resolve(options.model)
    model = ModelInfo(model_dir.name, model_dir.fingerprint or "unknown")
    spec = EmbedderSpec.parse(options.text_embedder) if options.text_embedder else _recorded_spec(meta)
    embedder_id = spec.embedder_id(model_dir)  # refuses Pengi's tower for a model without one
    if spec.is_pengi:
        return _ModelChoice(model_dir, model, spec, EmbedderInfo(embedder_id, model_dir.config.d_proj))
    recorded = meta.embedder if meta is not None and meta.embedder.name == embedder_id else None
    return _ModelChoice(model_dir, model, spec, recorded)


def _recorded_spec(meta: IndexMeta | None) -> EmbedderSpec:
    """The embedder the index was built with (Pengi's tower for a new index, or an id this version does not know)."""
    return (EmbedderSpec.of_embedder_id(meta.embedder.name) if meta else None) or EmbedderSpec()


def _check_compatible(store: Store, choice: _ModelChoice) -> None:
    """Refuse a run whose model or embedder differs from the index's (before any work), saying each once."""
    meta = store.index_meta()
    if meta is None:
        return
    if choice.embedder is None:  # a sentence-transformers model the library does not have: its size is not known
        raise BuiltWithOtherError(store.name, str(meta.embedder), f"text embedder {str(choice.embedder_spec)!r}")
    # Pengi's text tower is its model's: another model brings another tower, which naming the model says.
    towers = choice.embedder_spec.is_pengi and EmbedderSpec.of_embedder_id(meta.embedder.name) == EmbedderSpec()
    store.check_compatible(choice.model, None if towers else choice.embedder)


# ---------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class _Plan:
    todo: list[Entry] = field(default_factory=list)  # to decode and describe
    broken: list[Entry] = field(default_factory=list)  # unreadable without opening (broken link, FIFO)
    touched: list[Entry] = field(default_factory=list)  # new mtime, same size and content
    unchanged: int = 0
    skipped_errors: int = 0


@dataclass
class _InFlight:
    """A file whose windows are being described."""

    entry: Entry
    done: list[WindowInput] = field(default_factory=list)
    queued: int = 0  # windows waiting in the batch buffer
    decoded: Decoded | None = None


class _Run:
    def __init__(
        self,
        library: Library,
        options: IndexOptions,
        shard: Shard | None,
        rank: Rank | None,
        progress: ProgressReporter | None,
        started: float,
        choice: _ModelChoice | None = None,
    ) -> None:
        self.library = library
        self.store = library.store
        self.options = options
        self.shard = shard
        self.rank = rank
        self.progress = progress
        self.started = started
        self.summary = IndexSummary(database=library.db_url, shard=None if shard is None else str(shard))
        self.run_id: int | None = None
        self._choice = choice  # found before a new library was created, else on first need (`_choose`)
        self._model_loaded: IndexModel | None = None
        self._identical: IdenticalFiles  # set by `_reuse`, before pass 1
        self._copied_from: list[str] = []  # the source of each file indexed as a copy (`_reused`)
        self._stored: list[Entry] = []  # every file this run indexed, decoded or copied (`_indexed`)

    @property
    def leads(self) -> bool:
        """Prunes and writes the FAISS files: the only process, shard 0, or torchrun's rank 0."""
        if self.rank is not None and self.rank.world_size > 1:
            return self.rank.leads
        return self.shard is None or self.shard.index == 0

    def execute(self, scanned: ScanResult) -> IndexSummary:
        summary = self.summary
        summary.unreadable_dirs = [FailedFile(path, reason) for path, reason in scanned.unreadable_dirs]
        if self.options.reindex or self.options.model is not None or self.options.text_embedder is not None:
            with said_once_per_machine():  # asked for explicitly, so by every rank alike
                self._choose()  # checked even when nothing needs indexing
        self.run_id = summary.run_id = self.store.start_run(summary.shard)
        status = "failed"
        try:
            if self.options.reindex:
                self._reset()
            mine = [e for e in scanned.entries if self.shard is None or self.shard.owns(e.path)]
            summary.files_seen = len(mine)
            self.store.note_files_seen(self.run_id, summary.files_seen)
            plan = self._plan(mine, self._stamps(scanned.roots))
            summary.recaptioned = self._drop_fast_captions(scanned.roots)
            if plan.todo:
                self._choose()  # a library built with another model or embedder is refused before any work
            self._settle(plan)
            # Before pass 1, and so before the prune: a file moved within the library is copied from its old path.
            reuse = self._reuse(plan.todo)
            plan.todo = reuse.decode
            captions_now = self.options.captions is Captions.now
            waiting = captions_now and self._captions_missing(scanned.roots) > 0  # from an earlier run, or copied
            if waiting:
                self._choose()
            if plan.todo:
                self._index(plan.todo)
            if self.leads:
                summary.pruned = self._prune(scanned)
            if captions_now and (plan.todo or waiting):
                # Any process may save the FAISS files (they are locked while saved); the final sync, after all
                # ranks, is the leader's. From here on `similar` and `query --rank audio` see every window.
                self.library.sync_vector_indexes(self.options.index_type)
                summary.searchable_s = time.monotonic() - self.started
                self._caption(scanned.roots)
            self._copy_later(reuse.later, scanned.roots)
            self._sync()
            summary.searchable_s = summary.searchable_s or time.monotonic() - self.started
            summary.captions_missing = self._captions_missing(scanned.roots)
            summary.gone_sources = left_behind(self.store, self._copied_from, scanned.roots, self._stored)
            status = "finished"
        except KeyboardInterrupt as stop:
            status = "interrupted"
            raise RunInterrupted(summary) from stop
        finally:
            self.store.finish_run(
                self.run_id,
                status=status,
                files_seen=summary.files_seen,
                files_indexed=summary.indexed,
                files_failed=len(summary.failed),
                files_pruned=summary.pruned,
            )
        return summary

    # -- planning --------------------------------------------------------------------------------------------

    def _stamps(self, roots: list[str]) -> dict[str, FileStamp]:
        stamps: dict[str, FileStamp] = {}
        for root in roots:
            stamps.update(self.store.all_file_stamps(under=root))
        return stamps

    def _plan(self, entries: list[Entry], stamps: dict[str, FileStamp]) -> _Plan:
        plan = _Plan()
        retry = self.options.retry_errors
        for entry in entries:
            stamp = stamps.get(entry.path)
            same_stamp = stamp is not None and (stamp.size, stamp.mtime) == (entry.size, entry.mtime)
            if stamp is not None and same_stamp and stamp.status == "indexed":
                plan.unchanged += 1
            elif stamp is not None and same_stamp and stamp.status == "error" and not retry:
                plan.skipped_errors += 1
            elif entry.problem is not None:
                plan.broken.append(entry)
            elif stamp is not None and _same_content(entry, stamp, retry):
                plan.touched.append(entry)
                if stamp.status == "error":
                    plan.skipped_errors += 1
            else:
                plan.todo.append(entry)
        return plan

    def _settle(self, plan: _Plan) -> None:
        """What the plan settles without decoding: unchanged and known-bad files counted, files with a new mtime
        and the same content re-stamped, files unreadable without opening them recorded as failed."""
        self.summary.unchanged, self.summary.skipped_errors = plan.unchanged, plan.skipped_errors
        for entry in plan.touched:
            self.store.touch_file(entry.path, size=entry.size, mtime=entry.mtime)
        self.summary.touched = len(plan.touched)
        for entry in plan.broken:
            self._fail(entry, entry.problem or "unreadable")

    def _captions_missing(self, roots: list[str]) -> int:
        """Windows below `roots` without captions (all shards' windows: one count query per root)."""
        return sum(caption_counts(self.store, under=root).missing for root in roots)

    def _reset(self) -> None:
        """--reindex: forget every caption and vector and record the new model and embedder (rank 0 only)."""
        if self.rank is None or self.rank.leads:
            model = self._model()
            self.store.reset_index(self._choose().model, model.embedder_info)
        if self.rank is not None:
            self.rank.barrier()

    # -- indexing --------------------------------------------------------------------------------------------

    def _choose(self) -> _ModelChoice:
        """Find the model and embedder and refuse them if the index was built with others (unless --reindex).

        Deferred until needed: finding a model imports torch, which an unchanged library never has to pay for.
        """
        if self._choice is None:
            choice = _choose_model(self.options, self.store.index_meta())
            if not self.options.reindex:
                _check_compatible(self.store, choice)
            self._choice = choice
        return self._choice

    def _model(self) -> IndexModel:
        if self._model_loaded is None:
            choice, options = self._choose(), self.options
            self._model_loaded = IndexModel.load(choice.model_dir, choice.embedder_spec, options.device, options)
        return self._model_loaded

    def _index(self, todo: list[Entry]) -> None:
        """Pass 1: decode every file and store its windows with their audio embeddings, file by file."""
        model = self._model()
        self.store.set_index_meta(self._choose().model, model.embedder_info)  # before the first window
        batch_size = model.windows_per_batch
        flights: dict[int, _InFlight] = {}
        buffer: list[tuple[int, Window]] = []
        if self.progress is not None:
            self.progress.start(len(todo))
        messages = decode_all([Job(seq, entry.path) for seq, entry in enumerate(todo)], self.options.workers)
        try:
            for message in messages:
                flight = flights.setdefault(message.seq, _InFlight(todo[message.seq]))
                if isinstance(message, Windows):
                    buffer.extend((message.seq, window) for window in message.windows)
                    flight.queued += len(message.windows)
                    while len(buffer) >= batch_size:
                        self._embed(model, buffer[:batch_size], flights)
                        del buffer[:batch_size]
                elif isinstance(message, Decoded):
                    flight.decoded = message
                    self._counted(message.count)
                    self._commit_ready(flights)
                elif isinstance(message, Failed):
                    buffer = [(seq, window) for seq, window in buffer if seq != message.seq]
                    del flights[message.seq]
                    self._fail(flight.entry, message.reason, message.content_hash, message.notes)
                    self._counted(0)
                    self._advance(files=1)
            while buffer:
                self._embed(model, buffer[:batch_size], flights)
                del buffer[:batch_size]
        finally:
            messages.close()

    def _embed(self, model: IndexModel, batch: list[tuple[int, Window]], flights: dict[int, _InFlight]) -> None:
        embedded = model.audio_windows([window for _, window in batch])
        for (seq, _), window in zip(batch, embedded, strict=True):
            flights[seq].done.append(window)
            flights[seq].queued -= 1
        self._advance(windows=len(batch))
        self._commit_ready(flights)

    def _commit_ready(self, flights: dict[int, _InFlight]) -> None:
        """Store every file whose windows are all embedded (one transaction per file)."""
        for seq in [seq for seq, flight in flights.items() if flight.decoded is not None and flight.queued == 0]:
            self._commit(flights.pop(seq))
            self._advance(files=1)
            hold_at(FILE_STORED)

    def _commit(self, flight: _InFlight) -> None:
        entry, decoded = flight.entry, flight.decoded
        assert decoded is not None
        if decoded.truncation is not None and self.options.strict:
            self._fail(entry, decoded.truncation, decoded.content_hash, decoded.notes)
            return
        truncation = () if decoded.truncation is None else (decoded.truncation,)
        notes = truncation + tuple(DECODER_NOTE + note for note in decoded.notes)
        audio = StoredAudio(decoded.duration_s, decoded.sample_rate, decoded.channels, decoded.format, notes)
        try:
            file_id = self.store.upsert_file(
                entry.path, size=entry.size, mtime=entry.mtime, content_hash=decoded.content_hash, run_id=self.run_id
            )
            self.store.replace_file_windows(file_id, flight.done, audio=audio, run_id=self.run_id)
        except RefusedInputError as exc:  # e.g. a non-finite embedding: this file fails, the others go on
            self._fail(entry, exc.reason, decoded.content_hash, decoded.notes)
            return
        self._indexed(entry, len(flight.done), notes)

    def _reuse(self, todo: list[Entry]) -> Reuse:
        """Index each file that holds the bytes of an indexed file from that file (`indexer.reuse`); returns the
        others: to decode, or to copy from one of those once it is indexed (`_copy_later`)."""
        self._identical = IdenticalFiles(self.store, self.options, self.run_id, self.progress)
        reuse = self._identical.copy_all(todo)
        self._reused(reuse.copied)
        return reuse

    def _copy_later(self, later: list[Entry], roots: list[str]) -> None:
        """Index each file identical to one this run decoded from that one, now stored (and captioned, captions
        now); a file whose twin could not be indexed is decoded and captioned as its own."""
        if not later:
            return
        copied, rest = self._identical.copy_later(later)
        self._reused(copied)
        if rest:
            self._index(rest)
            if self.options.captions is Captions.now:
                self._caption(roots)

    def _reused(self, copied: Copies) -> None:
        for entry, copy in copied:
            self._indexed(entry, copy.windows, copy.notes)
            self._copied_from.append(copy.source)
        self.summary.reused += len(copied)

    def _indexed(self, entry: Entry, windows: int, notes: Sequence[str]) -> None:
        """Count a file stored with `windows` windows and its `notes` (a truncation, then the decoders' messages)."""
        self._stored.append(entry)
        self.summary.indexed += 1
        self.summary.window_count += windows
        self.summary.truncated += [FileNote(entry.path, note) for note in notes[:1] if note.startswith(TRUNCATED_NOTE)]
        decoder = [note.removeprefix(DECODER_NOTE) for note in notes if note.startswith(DECODER_NOTE)]
        self.summary.decoder_notes += [FileNote(entry.path, note) for note in decoder]

    def _drop_fast_captions(self, roots: list[str]) -> int:
        """--recaption-fast: the windows below `roots` (this shard's files) that a --fast run captioned wait for
        captions again."""
        if not self.options.recaption_fast:
            return 0
        owns = None if self.shard is None else self.shard.owns
        return sum(drop_fast_captions(self.store, root, owns) for root in roots)

    def _caption(self, roots: list[str]) -> None:
        """Pass 2: captions for the windows below `roots` that have none (this run's and any earlier run's)."""
        caption_pass = CaptionPass(
            self.store,
            roots,
            self.shard,
            sync=lambda: self.library.sync_vector_indexes(self.options.index_type),
        )
        if self.progress is not None:
            self.progress.start_captions(None if self.shard is not None else self._captions_missing(roots))
        result = CaptionResult()
        try:
            caption_pass.run(self._model(), result, advance=lambda windows: self._advance(windows=windows))
        finally:  # counted also when interrupted: each batch stored is kept
            self.summary.captioned += result.captioned
            self.summary.failed += [FailedFile(path, reason) for path, reason in result.failed]

    def _fail(self, entry: Entry, reason: str, content_hash: str | None = None, notes: Sequence[str] = ()) -> None:
        """Record the file as failed (the decoders' messages below the reason). A failure to record it is
        reported with it and ends nothing: the next run tries the file again."""
        try:
            self.store.record_file_error(
                entry.path,
                "\n".join([reason, *(DECODER_NOTE + note for note in notes)]),
                size=entry.size,
                mtime=entry.mtime,
                content_hash=content_hash,
                run_id=self.run_id,
            )
        except StoreError as exc:
            log.warning("could not record the failure of %r: %s", entry.path, exc)
            reason = f"{reason} (not recorded in the database: {exc.reason})"
        self.summary.failed.append(FailedFile(entry.path, reason))
        self.summary.decoder_notes += [FileNote(entry.path, note) for note in notes]

    def _advance(self, files: int = 0, windows: int = 0) -> None:
        if self.progress is not None:
            self.progress.advance(files=files, windows=windows)

    def _counted(self, windows: int) -> None:
        """A file of pass 1 has all its windows sent (none more: it failed), for the progress's estimate."""
        if self.progress is not None:
            self.progress.counted(windows)

    # -- finishing -------------------------------------------------------------------------------------------

    def _prune(self, scanned: ScanResult) -> int:
        """Forget files under the scanned roots that are gone, keeping what this scan did not see: files under
        unreadable folders or hidden names (not AppleDouble files: earlier versions recorded those as failed), files
        of extensions not asked for, and every file of a root where the scan found nothing (an unmounted drive)."""
        present = {entry.path for entry in scanned.entries}
        unlisted = [folder for folder, _ in scanned.unreadable_dirs]
        pruned = 0
        for root in scanned.roots:
            missing = self.store.all_file_stamps(under=root).keys() - present
            unseen = self._hidden_kept(root, missing) | {
                path
                for path in missing
                if not has_extension(path, self.options.extensions) or any(inside(path, d) for d in unlisted)
            }
            gone = missing - unseen
            if gone and not any(inside(path, root) for path in present):
                words = _counted(len(gone), root, self.store.db_option)
                self.summary.unseen_roots.append(FileNote(root, _EMPTY_ROOT.format(**words)))
                continue
            kept = self._emptied_kept(root, gone, present)
            pruned += self.store.prune_missing(present | unseen | kept, under=root)
        return pruned

    def _emptied_kept(self, root: str, gone: set[str], present: set[str]) -> set[str]:
        """Of the `gone` files under `root`, those kept for a folder still there without audio (`emptied_folders`),
        each folder noted once with its count, as a root with no audio is."""
        kept = emptied_folders(gone, root, present)
        self.summary.unseen_roots += self._kept_notes(kept, _EMPTY_ROOT)
        return set(kept)

    def _kept_notes(self, kept: dict[str, str], note: str) -> list[FileNote]:
        """One note (`_HIDDEN_KEPT`, `_EMPTY_ROOT`) for each place that files were `kept` at, with their count."""
        counts = sorted(Counter(kept.values()).items())
        return [FileNote(at, note.format(**_counted(count, at, self.store.db_option))) for at, count in counts]

    def _hidden_kept(self, root: str, missing: set[str]) -> set[str]:
        """Of the files under `root` this scan did not find, those it passed over for a hidden name (without
        --hidden): kept, each hidden path noted once with its count."""
        if self.options.hidden:
            return set()
        kept = {path: at for path in missing if (at := hidden_path(path, root)) is not None}
        self.summary.hidden_kept += self._kept_notes(kept, _HIDDEN_KEPT)
        return set(kept)

    def _sync(self) -> None:
        """The FAISS files follow the database: after all ranks finished, by the leading one."""
        if self.rank is not None and self.rank.world_size > 1:
            self.rank.barrier()
            if not self.rank.leads:
                return
        self.library.sync_vector_indexes(self.options.index_type)


def _same_content(entry: Entry, stamp: FileStamp, retry_errors: bool) -> bool:
    """Whether a file with a new mtime still holds what was indexed (same size and sha256)."""
    if stamp.size != entry.size or stamp.content_hash is None:
        return False
    if stamp.status == "pending" or (stamp.status == "error" and retry_errors):
        return False
    try:
        return file_sha256(entry.path) == stamp.content_hash
    except OSError:
        return False  # decoding will report why it cannot be read


_HIDDEN_KEPT = (
    "{files} at or under this hidden path {were} kept {as_is}: runs without --hidden do not look at hidden names "
    "(`{remove}` forgets {them})"
)
_EMPTY_ROOT = "no audio file found here, so its {files} {were} kept (an unmounted drive?); `{remove}` forgets {them}"


def _counted(files: int, at: str, db_option: str) -> dict[str, str]:
    """The words of a note on indexed files kept at the path `at` (`_HIDDEN_KEPT`, `_EMPTY_ROOT`), in the number of
    `files`, and the `remove` that forgets them: the path shell-quoted and the library's `Store.db_option`, so that,
    pasted, it acts on that path of that library."""
    words = {"were": ("was", "were"), "as_is": ("as it is", "as they are"), "them": ("it", "them")}
    remove = f"pengi-search remove {shlex.quote(shown(at))}{db_option}"
    return {"files": count_text(files, "indexed file"), "remove": remove} | {
        key: for_count(files, *forms) for key, forms in words.items()
    }

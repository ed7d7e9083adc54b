"""The indexing run, in two passes: scan -> compare with the database (`indexer.plan`) -> files whose bytes are
indexed already (moved, renamed, copied) copied from them (`indexer.reuse`) -> decode the others (worker processes)
-> audio embeddings -> store, file by file (pass 1, `indexer.audio_pass`) -> prune (`indexer.pruning`) -> FAISS
files saved (`similar` works on the whole library); then batched Pengi generation for the windows without captions
-> caption embeddings -> store, batch by batch (pass 2, `indexer.captions`; with `--captions later`, a later run
does it) -> new files identical to one the run decoded copied from it -> FAISS files in line with the database.
What became of each file is kept by `indexer.file_outcomes`; the model and embedder are chosen and checked by
`indexer.model_choice`.

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

import contextlib
import os
import time
from dataclasses import replace

from pengi_search.audio import AUDIO_EXTENSIONS
from pengi_search.choices import Captions
from pengi_search.db import BuiltWithOtherError, drop_fast_captions, library_exists
from pengi_search.db.run_lock import alone_in_library, indexing_lock, no_restart_under_way
from pengi_search.errors import PengiSearchError
from pengi_search.library import Library
from pengi_search.scan import Entry, ScanResult, scan
from pengi_search.torchrun_env import said_once_per_machine
from pengi_search.units import for_count

from .audio_pass import AudioPass
from .captions import CaptionPass, CaptionResult, IndexModel, captions_missing
from .file_outcomes import FileOutcomes
from .left_behind import left_behind
from .model_choice import ModelChoice, check_compatible, choose_model
from .plan import Plan, file_stamps, plan_files
from .pruning import prune
from .reuse import IdenticalFiles, Reuse
from .roots import Roots
from .run_report import FailedFile, IndexOptions, IndexSummary, ProgressReporter, RunInterrupted
from .shard import Rank, Shard


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
            choice = choose_model(options, None)
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
# The run


class _Run:
    """One run of `run_index`, once the library is open and locked: its steps, in order (`execute`)."""

    def __init__(
        self,
        library: Library,
        options: IndexOptions,
        shard: Shard | None,
        rank: Rank | None,
        progress: ProgressReporter | None,
        started: float,
        choice: ModelChoice | None = None,
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
        self._outcomes: FileOutcomes  # set once the run is recorded (its id known), by `execute`
        self._restarting = False  # --reindex starts the whole library over here (`_restarts_library`)
        self._held_for_restart = contextlib.ExitStack()  # no other job's run writes until then (`_alone`)

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
        with self._held_for_restart:  # released by `_reset` once done, or by a failure before
            self._restarting = self._restarts_library()
            if self._restarting:  # refused before the run is recorded: a refusal leaves no failed run behind
                self._held_for_restart.enter_context(self._alone("re-index this library with another model"))
            self._meet_before_recording()
            return self._recorded(scanned)

    def _recorded(self, scanned: ScanResult) -> IndexSummary:
        """The run's steps, recorded in the library's runs as it goes and as it ends."""
        summary = self.summary
        self.run_id = summary.run_id = self.store.start_run(summary.shard)
        self._outcomes = FileOutcomes(self.store, self.run_id, summary)
        status = "failed"
        try:
            if self.options.reindex:
                self._reset([entry.path for entry in scanned.entries])  # with its check for restarts (`_past_restarts`)
            else:
                self._past_restarts()
            mine = [e for e in scanned.entries if self.shard is None or self.shard.owns(e.path)]
            summary.files_seen, summary.files_found = len(mine), len(scanned.entries)
            self.store.note_files_seen(self.run_id, summary.files_seen)
            roots = Roots(scanned.roots)  # `eval` gives every file of its set as a root: asked about below their folder
            plan = plan_files(mine, file_stamps(self.store, roots), self.options.retry_errors)
            summary.recaptioned = self._drop_fast_captions(roots)
            if plan.todo:
                self._choose()  # a library built with another model or embedder is refused before any work
            self._settle(plan)
            # Before pass 1, and so before the prune: a file moved within the library is copied from its old path.
            reuse = self._reuse(plan.todo)
            plan.todo = reuse.decode
            captions_now = self.options.captions is Captions.now
            waiting = captions_now and captions_missing(self.store, roots) > 0  # from an earlier run, or copied
            if waiting:
                self._choose()
            if plan.todo:
                self._index(plan.todo)
            if self.leads:
                self._prune(scanned)
            if captions_now and (plan.todo or waiting):
                # Any process may save the FAISS files (they are locked while saved); the final sync, after all
                # ranks, is the leader's. From here on `similar` and `query --rank audio` see every window.
                self.library.sync_vector_indexes(self.options.index_type)
                summary.searchable_s = time.monotonic() - self.started
                self._caption(roots)
            self._copy_later(reuse.later, roots)
            self._sync()
            summary.searchable_s = summary.searchable_s or time.monotonic() - self.started
            summary.captions_missing = captions_missing(self.store, roots)
            outcomes = self._outcomes
            summary.gone_sources = left_behind(self.store, outcomes.copied_from, roots, outcomes.stored)
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

    def _settle(self, plan: Plan) -> None:
        """What the plan settles without decoding: unchanged and known-bad files counted, files with a new mtime
        and the same content re-stamped, files unreadable without opening them recorded as failed."""
        self.summary.unchanged, self.summary.skipped_errors = plan.unchanged, plan.skipped_errors
        for entry in plan.touched:
            self.store.touch_file(entry.path, size=entry.size, mtime=entry.mtime)
        self.summary.touched = len(plan.touched)
        for entry in plan.broken:
            self._outcomes.failed(entry, entry.problem or "unreadable")

    def _reset(self, selected: list[str]) -> None:
        """--reindex (rank 0 only): with the library's model and embedder, forget the windows of the files this run
        selected (under its paths, of its extensions), which it indexes anew, and leave the library's other files as
        they are. With another model or embedder, whose vectors cannot share the indexes with the old ones, forget
        every caption and vector and record the new model and embedder (`_restarting`: other jobs' runs were
        checked, and held off, before this run was recorded).

        Its check for other jobs' restarts (`_past_restarts`) comes before it forgets: that job, once done, writes
        new windows for these files, which forgetting after its restart would delete. The job's other processes
        check once it has restarted the library, if it does: until then its hold on the RESTART lock refuses them,
        and its old model theirs."""
        forgets = not self._restarting and (self.rank is None or self.rank.leads)
        if forgets:
            self._past_restarts()
            self.store.forget_windows(selected)
        elif self._restarting:
            self.store.reset_index(self._choose().model, self._model().embedder_info)
        self._held_for_restart.close()  # other jobs' shards may write again: to the library started over
        if self.rank is not None:
            self.rank.barrier()
        if not forgets:
            self._past_restarts()

    def _restarts_library(self) -> bool:
        """Whether this process's --reindex starts the whole library over: rank 0's (or the only process's), with
        another model or embedder than the library's."""
        if not self.options.reindex or not (self.rank is None or self.rank.leads):
            return False
        try:
            check_compatible(self.store, self._choose())
        except BuiltWithOtherError:
            return True
        return False

    def _past_restarts(self) -> None:
        """A shard's run, recorded, before it writes: refused while another job restarts the library with another
        model, which may have looked for runs before this one was recorded (`run_lock.no_restart_under_way`); and
        its model and embedder, if chosen before, checked again against the library's, which that job may have
        changed since. An unsharded run holds the library alone: no job restarts it meanwhile."""
        if self.shard is None:
            return
        no_restart_under_way(self.store)
        if self._choice is None:
            return
        if self.options.reindex:  # a new embedder may be known only once loaded (`ModelChoice`): the model says it
            self.store.check_compatible(self._choice.model, None)
        else:
            check_compatible(self.store, self._choice)

    def _meet_before_recording(self) -> None:
        """A torchrun job's --reindex: its ranks meet before any records its run, rank 0 once it knows that the
        re-index may go ahead (`_restarts_library`, `_alone`). Refused, rank 0 never comes, and torchrun stops the
        others still waiting: no rank leaves a run recorded that never ran (they recorded theirs first, and were
        left `interrupted`)."""
        if self.options.reindex and self.rank is not None:
            self.rank.barrier()

    def _alone(self, doing: str) -> contextlib.AbstractContextManager[None]:
        """Within: no other job's run writes to the library, for `doing` what would restart it under that run. An
        unsharded run holds the library alone already; a torchrun job's ranks hold it shared, as another job's
        shards (other machines' `--shard`) do (`run_lock.alone_in_library`)."""
        if self.rank is None or self.rank.world_size < 2:
            return contextlib.nullcontext()
        job = {str(Shard(index, self.rank.world_size)) for index in range(self.rank.world_size)}
        return alone_in_library(self.store, job, doing=doing, wait=self.options.wait)

    # -- indexing --------------------------------------------------------------------------------------------

    def _choose(self) -> ModelChoice:
        """Find the model and embedder and refuse them if the index was built with others (unless --reindex).

        Deferred until needed: finding a model imports torch, which an unchanged library never has to pay for.
        """
        if self._choice is None:
            choice = choose_model(self.options, self.store.index_meta())
            if not self.options.reindex:
                check_compatible(self.store, choice)
            self._choice = choice
        return self._choice

    def _model(self) -> IndexModel:
        if self._model_loaded is None:
            choice, options = self._choose(), self.options
            self._model_loaded = IndexModel.load(choice.model_dir, choice.embedder_spec, options.device, options)
        return self._model_loaded

    def _index(self, todo: list[Entry]) -> None:
        """Pass 1 (`indexer.audio_pass`): decode every file and store its windows with their audio embeddings."""
        model = self._model()
        self.store.set_index_meta(self._choose().model, model.embedder_info)  # before the first window
        AudioPass(self.store, self.options, self.run_id, self._outcomes, self.progress).run(model, todo)

    def _reuse(self, todo: list[Entry]) -> Reuse:
        """Index each file that holds the bytes of an indexed file from that file (`indexer.reuse`); returns the
        others: to decode, or to copy from one of those once it is indexed (`_copy_later`)."""
        self._identical = IdenticalFiles(self.store, self.options, self.run_id, self.progress)
        reuse = self._identical.copy_all(todo)
        self._outcomes.copied(reuse.copied)
        return reuse

    def _copy_later(self, later: list[Entry], roots: Roots) -> None:
        """Index each file identical to one this run decoded from that one, now stored (and captioned, captions
        now); a file whose twin could not be indexed is decoded and captioned as its own."""
        if not later:
            return
        copied, rest = self._identical.copy_later(later)
        self._outcomes.copied(copied)
        if rest:
            self._index(rest)
            if self.options.captions is Captions.now:
                self._caption(roots)

    def _drop_fast_captions(self, roots: Roots) -> int:
        """--recaption-fast: the windows below `roots` (this shard's files) that a --fast run captioned wait for
        captions again."""
        if not self.options.recaption_fast:
            return 0
        shard = self.shard

        def owns(path: str) -> bool:
            return roots.covers(path) and (shard is None or shard.owns(path))

        return sum(drop_fast_captions(self.store, folder, owns) for folder in roots.folders)

    def _caption(self, roots: Roots) -> None:
        """Pass 2: captions for the windows below `roots` that have none (this run's and any earlier run's)."""
        caption_pass = CaptionPass(
            self.store,
            roots,
            self.shard,
            sync=lambda: self.library.sync_vector_indexes(self.options.index_type),
        )
        progress = self.progress
        if progress is not None:
            progress.start_captions(None if self.shard is not None else captions_missing(self.store, roots))
        result = CaptionResult()
        try:
            advance = None if progress is None else lambda windows: progress.advance(windows=windows)
            caption_pass.run(self._model(), result, advance=advance)
        finally:  # counted also when interrupted: each batch stored is kept
            self.summary.captioned += result.captioned
            self.summary.failed += [FailedFile(path, reason) for path, reason in result.failed]

    # -- finishing -------------------------------------------------------------------------------------------

    def _prune(self, scanned: ScanResult) -> None:
        """Forget the files under the scanned roots that are gone (`indexer.pruning`), noting what was kept."""
        pruned = prune(self.store, scanned, self.options)
        self.summary.pruned = pruned.count
        self.summary.unseen_roots += pruned.unseen_roots
        self.summary.hidden_kept += pruned.hidden_kept

    def _sync(self) -> None:
        """The FAISS files follow the database: after all ranks finished, by the leading one."""
        if self.rank is not None and self.rank.world_size > 1:
            self.rank.barrier()
            if not self.rank.leads:
                return
        self.library.sync_vector_indexes(self.options.index_type)

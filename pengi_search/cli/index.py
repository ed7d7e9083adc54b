"""`index`: building a library, and what a run says when it ends (`rebuild-index`, `stats`, `remove` and `export`,
which look after it, are in `cli.library`)."""

from __future__ import annotations

import functools
import os
import shlex
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from ..choices import Captions, IndexType, LongPrompt, StopRule
from ..index_hints import index_command
from ..messages import print_interrupted, print_problem
from ..stop_signals import interrupted_exit_code
from ..units import count_text, elapsed_text, for_count
from .common import (
    EXIT_OK,
    EXIT_PARTIAL,
    BatchOption,
    BeamOption,
    FastOption,
    HiddenOption,
    LongPromptsOption,
    MaxLenOption,
    QuietOption,
    StopOption,
    ThreadsOption,
    UsageError,
    UsingOptions,
    WaitOption,
    apply_threads,
    err_console,
    given_input,
    given_options,
    given_prompt,
    handle_errors,
    json_option,
    options_from,
    out_console,
    print_json,
    warn,
)
from .first_use import fetches_model
from .progress_bars import IndexProgress, progress_bar, show_progress

if TYPE_CHECKING:
    from indexer.run_report import IndexOptions, IndexSummary


IndexTypeOption = Annotated[
    IndexType | None,
    typer.Option(
        "--index-type",
        help="FAISS index: flat (exact), hnsw or ivfpq (millions of windows). Default: the type in use, else flat.",
    ),
]


IndexJsonOption = json_option("an object, the run's summary (with --watch, JSON lines: one summary per run).")


@handle_errors
@fetches_model
@options_from(UsingOptions, "using")
def index(
    context: typer.Context,
    paths: Annotated[
        list[str], typer.Argument(help="Folders (walked, following links) or files to index.", parser=given_input)
    ],
    *,
    using: UsingOptions,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=0, help="Decoding processes; 0 decodes in this process. \\[default: cores/2, <= 4]"
        ),
    ] = None,
    batch_size: BatchOption = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt",
            "-p",
            help="Prompt answered for every window (repeatable); the first one's answer is what text search matches. "
            "Default: caption and sound events.",
            parser=given_prompt,
        ),
    ] = None,
    text_embedder: Annotated[
        str | None,
        typer.Option(
            "--text-embedder",
            help="Caption embedder: pengi or sentence-transformers:NAME. Default: the one the index uses, else pengi.",
        ),
    ] = None,
    index_type: IndexTypeOption = None,
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="Index only shard i of n (e.g. 0/4); under torchrun it comes from RANK."),
    ] = None,
    ext: Annotated[
        str | None, typer.Option("--ext", help="Comma-separated extensions to index, e.g. .wav,.flac \\[default: all]")
    ] = None,
    hidden: HiddenOption = False,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Try again files that failed before and did not change.")
    ] = False,
    reindex: Annotated[
        bool,
        typer.Option(
            "--reindex",
            help="Index the selected files anew (paths, --ext); with another model or text embedder, the whole "
            "library starts over.",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Record files that decode shorter than their header says as failed, not indexed."
        ),
    ] = False,
    beam: BeamOption = 3,
    max_len: MaxLenOption = 30,
    stop: StopOption = StopRule.both,
    long_prompts: LongPromptsOption = LongPrompt.cut,
    wait: WaitOption = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="After the run, keep watching PATH... and run again whenever audio files change, until Ctrl-C "
            "(waits for other runs, as --wait).",
        ),
    ] = False,
    debounce: Annotated[
        float | None,
        typer.Option(
            "--debounce",
            min=0.1,
            max=3600,  # an hour: a longer quiet spell is no debounce, and inf (accepted as a float) would never run
            help="With --watch: start a run once the paths have not changed for this many seconds \\[default: 2]",
        ),
    ] = None,
    captions: Annotated[
        Captions,
        typer.Option(
            "--captions",
            help="now: caption every window in this run, after all audio embeddings are stored; later: store audio "
            "embeddings only (similar and query --rank audio work at once) and let a later index run caption them.",
        ),
    ] = Captions.now,
    threads: ThreadsOption = None,
    fast: FastOption = False,
    recaption_fast: Annotated[
        bool,
        typer.Option(
            "--recaption-fast",
            help="Give exact captions to the windows a --fast run captioned (`stats` counts them by mode); they "
            "are searchable by caption again once captioned.",
        ),
    ] = False,
    quiet: QuietOption = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show what the audio decoders printed about each file.")
    ] = False,
    json_output: IndexJsonOption = False,
) -> None:
    """Index every audio file under PATH... into the library (incremental, resumable), in two passes.

    Pass 1 stores every window's audio embedding (fast: `similar` works on the whole library as soon as it ends);
    pass 2 captions the windows that have no captions yet, this run's and any earlier run's. Unchanged files are
    skipped, changed ones indexed again, deleted ones forgotten. Files that cannot be read are recorded with the
    reason and reported; the run goes on (exit code 3 when any failed). A file cut short is indexed as far as it
    decodes, with a warning (--strict: recorded as failed). One run writes to a library at a time: a second one
    refuses (exit code 1), or waits with --wait. With --watch it then watches PATH... and indexes what changes.

    Example: pengi-search index ~/sounds --workers 4 --batch-size 32
    """
    from indexer.run_report import IndexOptions
    from indexer.shard import Shard

    from ..audio import AUDIO_EXTENSIONS
    from ..audio_workers import default_workers
    from ..scan import parse_extensions
    from ..torchrun_env import first_on_machine, said_once_per_machine
    from .index_watch import check_watch_options, keep_watching

    with said_once_per_machine():  # under torchrun, every rank meets a mistake here: the machine's first says it
        if fast and recaption_fast:
            raise UsageError("--recaption-fast", "writes exact captions: leave out --fast")
        check_watch_options(watch, debounce, shard=shard, reindex=reindex, retry_errors=retry_errors)
        try:
            extensions = AUDIO_EXTENSIONS if ext is None else parse_extensions(ext)
        except ValueError as exc:
            raise UsageError("", str(exc)) from exc
        try:
            shard_part = None if shard is None else Shard.parse(shard)
        except ValueError as exc:
            raise UsageError("", f"--shard: {exc}") from exc
    apply_threads(threads)
    options = IndexOptions(
        roots=paths,
        db=using.db,
        model=using.model,
        device=using.device,
        workers=default_workers() if workers is None else workers,
        batch_size=batch_size,
        prompts=tuple(prompt or ()),
        text_embedder=text_embedder,
        index_type=index_type,
        shard=shard_part,
        extensions=extensions,
        hidden=hidden,
        retry_errors=retry_errors,
        reindex=reindex,
        strict=strict,
        beam=beam,
        max_len=max_len,
        stop=stop,
        long_prompts=long_prompts,
        wait=wait or watch,  # a watch outlives other runs: it waits for them rather than ending
        captions=captions,
        fast=fast,
        recaption_fast=recaption_fast,
        create_empty=watch,  # a watch waits for the files to come
    )

    if ext is not None and first_on_machine():  # under torchrun every rank is given the same paths
        _warn_of_files_named_outside(paths, extensions)
    anew = _reindex_command(context, paths, using.db)

    def run() -> IndexSummary:
        return _run_once(options, show_progress(quiet, json_output), anew)

    from ..db.urls import db_option

    option = db_option(using.db)  # carried by the commands that the summary and notes suggest

    def report(summary: IndexSummary) -> None:
        if json_output:  # with --watch, JSON lines: one summary a run, the first one's too
            _print_json_summary(summary, line=watch, verbose=verbose, db_option=option)
        else:
            _print_summary(summary, paths=paths, verbose=verbose, db_option=option)
        _warn_if_nothing_found(summary, paths, ext)

    if watch:
        each = (
            functools.partial(_print_json_summary, line=True, verbose=verbose, db_option=option)
            if json_output
            else functools.partial(_print_run_line, quiet=quiet, verbose=verbose, db_option=option)
        )
        keep_watching(options, debounce, run, report, each, quiet=quiet)
    summary = run()
    report(summary)
    raise typer.Exit(EXIT_PARTIAL if summary.partial else EXIT_OK)


def _run_once(options: IndexOptions, visible: bool, anew: str) -> IndexSummary:
    """One run, its paths named as the user reached them; an interrupted run says what it kept (with --json too:
    stdout gets no summary of a run that did not end). `anew`: the command that indexes the library anew with the
    run's model and embedder, for a library built with others."""
    from indexer.pipeline import IndexerError, run_index
    from indexer.run_report import RunInterrupted

    from ..db import BuiltWithOtherError, DatabaseUnreachableError
    from ..db.run_lock import RESUME_HINT
    from ..scan import ScanError
    from .inputs import name_as_reached

    try:
        with progress_bar() as bar:
            summary = run_index(options, IndexProgress(bar, visible=visible))
        return summary.renamed(functools.partial(name_as_reached, targets=list(map(os.fspath, options.roots))))
    except (IndexerError, ScanError) as exc:
        raise UsageError("", str(exc)) from exc
    except DatabaseUnreachableError as exc:  # a server down or restarted: the run resumes once it answers
        if RESUME_HINT in exc.reason:
            raise
        raise DatabaseUnreachableError(exc.where, f"{exc.reason}; {RESUME_HINT} once the database answers") from exc
    except BuiltWithOtherError as exc:  # the run's own command, to paste
        fix = f"`{anew}` indexes it anew (every caption and vector made again)"
        raise exc.fixed_by(fix) from exc
    except RunInterrupted as stop:
        print_interrupted(err_console, _kept(stop.summary))
        raise typer.Exit(interrupted_exit_code()) from None


# ---------------------------------------------------------------------------------------------------------------
# Helpers


# What the suggested `index --reindex` leaves out: --reindex, which it adds; a watch or a shard, which would index
# the library anew at every change or in parts (both refused with it); --db, which `index_command` adds, its
# password hidden.
_NOT_WITH_REINDEX = ("--reindex", "--watch", "--debounce", "--shard", "--db")


def _reindex_command(context: typer.Context, paths: Sequence[str], db: str | None) -> str:
    """This command with --reindex: its paths and every option given (its prompts, decoding, device, extensions:
    all that shapes what is stored), so that pasted it indexes the library anew as this run would have; its
    library as the user named it."""
    from ..db.urls import db_option

    given = given_options(context, leaving_out=_NOT_WITH_REINDEX)
    return index_command(paths, *given, "--reindex", db_option=db_option(db))


def _warn_of_files_named_outside(paths: Sequence[str], extensions: frozenset[str]) -> None:
    """A file given by name is indexed whatever --ext says, as ripgrep searches a file it is given whatever its
    --type or --glob (and as a hidden file named is used): said, so that a slip in --ext or a path goes seen."""
    from ..pathnames import shown
    from ..scan import has_extension

    asked = ", ".join(sorted(extensions))
    for path in paths:
        if os.path.isfile(path) and not has_extension(path, extensions):
            warn(f"{shown(path)}: indexed as it is given by name, though --ext asks for {asked}")


def _warn_if_nothing_found(summary: IndexSummary, paths: list[str], ext: str | None) -> None:
    """A run that found no audio file at all under `paths`: a wrong folder, or a wrong --ext. A shard without files
    of its own is no such run; under torchrun, the ranks given the same paths, the machine's first says it."""
    from ..torchrun_env import first_on_machine

    if first_on_machine() and not (summary.files_found or summary.unseen_roots or summary.unreadable_dirs):
        from ..pathnames import shown

        asked = "" if ext is None else f" with the extensions {ext!r}"
        warn(f"no audio file{asked} found in {', '.join(map(shown, paths))}")


def _print_json_summary(summary: IndexSummary, *, line: bool, verbose: bool, db_option: str) -> None:
    """The run's summary on stdout (with `line`, as one line of `--watch`'s stream), and what it found wrong on
    stderr as without --json: a script that logs stderr reads `failed PATH: reason` there, as it reads the
    `skipped` lines of `describe --json` and `classify --json`."""
    print_json(summary.to_json(), line=line)
    _print_problems(summary, verbose=verbose, db_option=db_option)


def _print_run_line(summary: IndexSummary, *, quiet: bool, verbose: bool, db_option: str) -> None:
    """A run of `index --watch` after the first: what changed, on one line with the time (none with --quiet), and
    what went wrong, as every run says it."""
    if not quiet:
        out_console.print(
            f"{time.strftime('%H:%M:%S')} indexed {count_text(summary.indexed, 'file')}{_reused(summary, ' reused')}, "
            f"removed {summary.pruned}, {len(summary.failed)} failed ({elapsed_text(summary.seconds)})",
            markup=False,
            soft_wrap=True,
        )
    _print_problems(summary, verbose=verbose, db_option=db_option)


def _print_summary(summary: IndexSummary, *, paths: list[str], verbose: bool, db_option: str) -> None:
    """The run's summary on stdout; `db_option`: what the commands it suggests add to act on this library
    (`urls.db_option`: ` --db VALUE` when the user named one)."""
    shard = f" (shard {summary.shard})" if summary.shard else ""
    # When pass 1 stored windows: a run with nothing new was searchable all along.
    searchable = f" (searchable by sound after {elapsed_text(summary.searchable_s)})" if summary.window_count else ""
    out_console.print(
        f"indexed {count_text(summary.indexed, 'file')}{_reused(summary, ' reused from identical files')}, "
        f"{count_text(summary.window_count, 'window')} in {elapsed_text(summary.seconds)}{shard}{searchable}, "
        f"{count_text(summary.captioned, 'window')} captioned; "
        f"{summary.unchanged} unchanged, {summary.touched} touched, {len(summary.failed)} failed, "
        f"{summary.pruned} pruned",
        soft_wrap=True,
    )
    if summary.recaptioned:
        recaptioned = count_text(summary.recaptioned, "window")
        out_console.print(f"{recaptioned} captioned by --fast went to pass 2 for exact captions")
    if missing := summary.captions_missing:  # `paths`: the command's, as typed, for a command to paste
        out_console.print(
            f"{count_text(missing, 'window')} {for_count(missing, 'has', 'have')} no captions yet: "
            f"`{index_command(paths, db_option=db_option)}` writes them (meanwhile `query` ranks by audio embeddings)",
            markup=False,  # the --db value is the user's text
            soft_wrap=True,
        )
    if skipped := summary.skipped_errors:
        failed_before = f"{count_text(skipped, 'file')} that failed before {for_count(skipped, 'was', 'were')}"
        out_console.print(f"{failed_before} skipped (--retry-errors; `stats` lists them)")
    _print_problems(summary, verbose=verbose, db_option=db_option)


def _kept(summary: IndexSummary) -> str:
    """What an interrupted run leaves done: each file and each batch of captions is committed as it is finished,
    and a re-run goes on from there. A shard's run names its shard: under torchrun each rank says what it kept."""
    run = "this run" if summary.shard is None else f"this run (shard {summary.shard})"
    return (
        f"{run} kept {count_text(summary.indexed, 'file')} indexed and {count_text(summary.captioned, 'window')} "
        "captioned; run the same command again to resume"
    )


def _reused(summary: IndexSummary, what: str) -> str:
    """How many of the files indexed took the windows of an indexed file with the same bytes, when any did."""
    return f" ({summary.reused}{what})" if summary.reused else ""


def _print_problems(summary: IndexSummary, *, verbose: bool, db_option: str) -> None:
    """What a run found wrong or odd, on stderr: runs left dead, files that failed, warnings (decoders' messages
    with `verbose`)."""
    from ..pathnames import shown
    from ..torchrun_env import first_on_machine

    for run_id in summary.stale_runs:
        err_console.print(f"run {run_id} was still marked running, but its process had ended: marked interrupted")
    # Every rank of a torchrun job scans the same paths, and meets the same unreadable folders: the machine's first
    # says them (the files that failed are each rank's own).
    unreadable = summary.unreadable_dirs if first_on_machine() else []
    for label, items in (("failed", summary.failed), ("unreadable folder", unreadable)):
        for item in items:
            print_problem(err_console, label, item.path, item.message)
    for note in [*summary.unseen_roots, *summary.hidden_kept, *summary.truncated]:
        warn(f"{shown(note.path)}: {note.message}")
    for note in summary.decoder_notes if verbose else ():
        err_console.print(f"decoder {shown(note.path)}: {note.message}", markup=False, soft_wrap=True)
    for gone in summary.gone_sources:
        err_console.print(f"note: {_gone_note(gone.path, gone.files, db_option)}", markup=False, soft_wrap=True)


def _gone_note(path: str, files: int, db_option: str) -> str:
    """How a run says that files it copied came from indexed files gone from disk at or under `path`: they are
    still indexed (each query finds those sounds twice), and the run leaves them to the user to forget."""

    from ..pathnames import shown

    copies = for_count(files, "is a copy of an indexed file", "are copies of indexed files")
    them = for_count(files, "it", "them")
    return (
        f"{count_text(files, 'file')} {copies} gone from disk at or under {shown(path)} (queries still find "
        f"{them} there): pengi-search remove {shlex.quote(shown(path))}{db_option} forgets {them}"
    )

"""`index`, `rebuild-index`, `stats`, `remove` and `export`: building and looking after a library."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from ..choices import Captions, Device, IndexType, LongPrompt, StopRule
from ..messages import print_interrupted
from ..stop_signals import interrupted_exit_code
from ..units import count_text, duration_text, for_count
from ..written_aside import written_aside
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    BatchOption,
    BeamOption,
    DbOption,
    DeviceOption,
    FastOption,
    HiddenOption,
    IndexProgress,
    JsonOption,
    LongPromptsOption,
    MaxLenOption,
    ModelOption,
    QuietOption,
    StopOption,
    ThreadsOption,
    UsageError,
    apply_threads,
    check_output_file,
    err_console,
    fail,
    fetches_model,
    given_input,
    given_prompt,
    handle_errors,
    out_console,
    print_json,
    progress_bar,
    show_progress,
    warn,
)

if TYPE_CHECKING:
    from indexer.run_report import IndexOptions, IndexSummary

    from ..library import Library

IndexTypeOption = Annotated[
    IndexType | None,
    typer.Option(
        "--index-type",
        help="FAISS index: flat (exact), hnsw or ivfpq (millions of windows). Default: the type in use, else flat.",
    ),
]


@handle_errors
@fetches_model
def index(
    paths: Annotated[
        list[str], typer.Argument(help="Folders (walked, following links) or files to index.", parser=given_input)
    ],
    db: DbOption = None,
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
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
        bool, typer.Option("--reindex", help="Re-index everything (needed to switch model or text embedder).")
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
    wait: Annotated[
        bool, typer.Option("--wait", help="When another index run is writing to the library, wait for it to end.")
    ] = False,
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
    json_output: JsonOption = False,
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
    from .index_watch import check_watch_options, keep_watching

    if fast and recaption_fast:
        raise UsageError("--recaption-fast", "writes exact captions: leave out --fast")
    check_watch_options(watch, debounce, shard=shard, reindex=reindex, retry_errors=retry_errors)
    apply_threads(threads)
    try:
        extensions = AUDIO_EXTENSIONS if ext is None else parse_extensions(ext)
    except ValueError as exc:
        raise UsageError("", str(exc)) from exc
    try:
        shard_part = None if shard is None else Shard.parse(shard)
    except ValueError as exc:
        raise UsageError("", f"--shard: {exc}") from exc
    options = IndexOptions(
        roots=paths,
        db=db,
        model=model,
        device=device,
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

    def run() -> IndexSummary:
        return _run_once(options, show_progress(quiet, json_output))

    def report(summary: IndexSummary) -> None:
        _print_summary(summary, paths=len(paths), verbose=verbose)
        if not (summary.files_seen or summary.unseen_roots or summary.unreadable_dirs):  # a wrong folder, or --ext
            from ..pathnames import shown

            asked = "" if ext is None else f" with the extensions {ext!r}"
            warn(f"no audio file{asked} found in {', '.join(map(shown, paths))}")

    if watch:  # with --json, JSON lines: one summary a run, the first one's too
        each = _json_line if json_output else functools.partial(_print_run_line, quiet=quiet, verbose=verbose)
        keep_watching(options, debounce, run, _json_line if json_output else report, each, quiet=quiet)
    summary = run()
    if json_output:
        print_json(summary.to_json())
    else:
        report(summary)
    raise typer.Exit(EXIT_PARTIAL if summary.partial else EXIT_OK)


def _run_once(options: IndexOptions, visible: bool) -> IndexSummary:
    """One run, its paths named as the user reached them; an interrupted run says what it kept (with --json too:
    stdout gets no summary of a run that did not end)."""
    from indexer.pipeline import IndexerError, run_index
    from indexer.run_report import RunInterrupted

    from ..scan import ScanError
    from .inputs import name_as_reached

    try:
        with progress_bar() as bar:
            summary = run_index(options, IndexProgress(bar, visible=visible))
        return summary.renamed(functools.partial(name_as_reached, targets=list(map(os.fspath, options.roots))))
    except (IndexerError, ScanError) as exc:
        raise UsageError("", str(exc)) from exc
    except RunInterrupted as stop:
        print_interrupted(err_console, _kept(stop.summary))
        raise typer.Exit(interrupted_exit_code()) from None


@handle_errors
def rebuild_index(db: DbOption = None, index_type: IndexTypeOption = None, json_output: JsonOption = False) -> None:
    """Rebuild the FAISS indexes from the database (e.g. to change the index type).

    Example: pengi-search rebuild-index --index-type hnsw
    """
    from ..library import Library

    started = time.monotonic()
    with Library.open(db, create=False) as library, _fallback_told_below():
        counts = library.rebuild(index_type)
        indexes = _indexes_json(library)
    seconds = time.monotonic() - started
    if json_output:
        print_json({"vectors": counts, "vector_indexes": indexes, "seconds": round(seconds, 3)})
        return
    for kind, count in counts.items():
        built = _index_kind(indexes[kind]["index_type"], indexes[kind]["requested_type"])
        out_console.print(f"{kind}: {count} vectors ({built})", markup=False, soft_wrap=True)
    out_console.print(f"rebuilt in {seconds:.1f} s")


@contextlib.contextmanager
def _fallback_told_below() -> Iterator[None]:
    """Without the warning an IVF-PQ request on a small library logs (once per index): the summary says what was
    built and when IVF-PQ will be, and --json has both types."""
    from ..vectors import fallback_log

    def drop(_record: logging.LogRecord) -> bool:
        return False

    fallback_log.addFilter(drop)
    try:
        yield
    finally:
        fallback_log.removeFilter(drop)


@handle_errors
def stats(db: DbOption = None, json_output: JsonOption = False) -> None:
    """Show what the library holds: files by status (those cut short or failed by name, with the reason), windows
    (and how many have captions), texts, model, embedder, runs, sizes on disk.

    Example: pengi-search stats --json
    """
    from ..db import caption_counts, caption_modes, sqlite_file
    from ..library import Library
    from ..pathnames import path_fields

    with Library.open(db, read_only=True) as library:
        data = library.store.stats()
        data["captions"] = {**caption_counts(library.store).to_json(), "by_mode": caption_modes(library.store)}
        data["truncated"] = [
            {**path_fields(record.path), "note": record.truncated} for record in library.store.truncated_files()
        ]
        data["failed"] = [{**path_fields(path), "error": error} for path, error in library.store.failed_files()]
        data["runs"] = [run.to_json() for run in library.store.runs(limit=5)]
        db_file = sqlite_file(library.db_url)
        data["database_bytes"] = None if db_file is None else _sqlite_bytes(db_file)
        data["vector_indexes"] = _indexes_json(library)
    if json_output:
        print_json(data)
    else:
        _print_stats(data)


@handle_errors
def remove(
    path: Annotated[str, typer.Argument(help="A file, or a folder: everything indexed below it.", parser=given_input)],
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Forget a file, or every file under a folder (the files on disk are not touched).

    Example: pengi-search remove ~/sounds/old-recordings
    """
    from ..library import Library
    from ..pathnames import path_fields, shown
    from ..scan import absolute

    target = absolute(path)
    with Library.open(db, create=False) as library:
        removed = library.store.remove(target)
        library.sync_vector_indexes()
    if removed == 0:  # named as typed, as every command names a path given; the library holds it absolute
        fail(f"{shown(path)}: nothing in the index at or under this path", EXIT_FAILED)
    if json_output:
        print_json({**path_fields(path), "removed_files": removed})
    else:
        out_console.print(f"removed {count_text(removed, 'file')} at or under {shown(path)}", markup=False)


@handle_errors
def export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the JSON lines to this file \\[default: stdout].")
    ] = None,
    under: Annotated[Path | None, typer.Option("--under", help="Only files at or under this path.")] = None,
    db: DbOption = None,
) -> None:
    """Export the library as JSON lines: one file per line, with its windows and their texts (no vectors).

    A file name that is not valid UTF-8 is written with \\udcXX escapes (lossless in any JSON parser that keeps
    them, e.g. Python's) and its bytes in base64 as `path_bytes`; `truncated` and `notes` flag files cut short.

    Example: pengi-search export --output library.jsonl
    """
    from ..library import Library
    from ..scan import absolute

    prefix = None if under is None else absolute(under)
    if output is not None:
        check_output_file(output, "JSON lines")
    with Library.open(db, read_only=True) as library:
        if output is None:  # `export | head`: a reader that had enough ends it as any command (`handle_errors`)
            _write_rows(library.store.export_rows(prefix), sys.stdout)
            return
        with written_aside(output) as partial, open(partial, "w", encoding="utf-8") as stream:
            _write_rows(library.store.export_rows(prefix), stream)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _json_line(summary: IndexSummary) -> None:
    print_json(summary.to_json(), line=True)


def _print_run_line(summary: IndexSummary, *, quiet: bool, verbose: bool) -> None:
    """A run of `index --watch` after the first: what changed, on one line with the time (none with --quiet), and
    what went wrong, as every run says it."""
    if not quiet:
        out_console.print(
            f"{time.strftime('%H:%M:%S')} indexed {count_text(summary.indexed, 'file')}{_reused(summary, ' reused')}, "
            f"removed {summary.pruned}, {len(summary.failed)} failed ({summary.seconds:.1f} s)",
            markup=False,
            soft_wrap=True,
        )
    _print_problems(summary, verbose=verbose)


def _print_summary(summary: IndexSummary, *, paths: int, verbose: bool = False) -> None:
    shard = f" (shard {summary.shard})" if summary.shard else ""
    out_console.print(
        f"indexed {count_text(summary.indexed, 'file')}{_reused(summary, ' reused from identical files')}, "
        f"{count_text(summary.windows, 'window')} in {summary.seconds:.1f} s{shard} (searchable by sound after "
        f"{summary.searchable_s:.1f} s), {count_text(summary.captioned, 'window')} captioned; "
        f"{summary.unchanged} unchanged, {summary.touched} touched, {len(summary.failed)} failed, "
        f"{summary.pruned} pruned",
        soft_wrap=True,
    )
    if summary.recaptioned:
        recaptioned = count_text(summary.recaptioned, "window")
        out_console.print(f"{recaptioned} captioned by --fast went to pass 2 for exact captions")
    if missing := summary.captions_missing:  # `paths`: how many the command was given
        out_console.print(
            f"{count_text(missing, 'window')} {for_count(missing, 'has', 'have')} no captions yet: run `pengi-search "
            f"index` on the same {for_count(paths, 'path', 'paths')} again to write them (meanwhile `query` ranks by "
            "audio embeddings)",
            soft_wrap=True,
        )
    if skipped := summary.skipped_errors:
        failed_before = f"{count_text(skipped, 'file')} that failed before {for_count(skipped, 'was', 'were')}"
        out_console.print(f"{failed_before} skipped (--retry-errors; `stats` lists them)")
    _print_problems(summary, verbose=verbose)


def _kept(summary: IndexSummary) -> str:
    """What an interrupted run leaves done: each file and each batch of captions is committed as it is finished,
    and a re-run goes on from there."""
    return (
        f"this run kept {count_text(summary.indexed, 'file')} indexed and {count_text(summary.captioned, 'window')} "
        "captioned; run the same command again to resume"
    )


def _reused(summary: IndexSummary, what: str) -> str:
    """How many of the files indexed took the windows of an indexed file with the same bytes, when any did."""
    return f" ({summary.reused}{what})" if summary.reused else ""


def _print_problems(summary: IndexSummary, *, verbose: bool) -> None:
    """What a run found wrong or odd, on stderr: runs left dead, files that failed, warnings (decoders' messages
    with `verbose`)."""
    from ..pathnames import shown

    for run_id in summary.stale_runs:
        err_console.print(f"run {run_id} was still marked running, but its process had ended: marked interrupted")
    for label, items in (("failed", summary.failed), ("unreadable folder", summary.unreadable_dirs)):
        for item in items:
            err_console.print(f"[red]{label}[/] {escape(shown(item.path))}: {escape(item.message)}", soft_wrap=True)
    for note in [*summary.unseen_roots, *summary.hidden_kept, *summary.truncated]:
        warn(f"{shown(note.path)}: {note.message}")
    for note in summary.decoder_notes if verbose else ():
        err_console.print(f"decoder {escape(shown(note.path))}: {escape(note.message)}", soft_wrap=True)


def _write_rows(rows: Any, stream: Any) -> None:
    from ..pathnames import json_text

    for row in rows:
        stream.write(json_text(row) + "\n")


def _indexes_json(library: Library) -> dict[str, dict[str, Any]]:
    """Per kind, where its FAISS file is, its size (None: no file of this library's) and what index it is:
    `index_type` is the type built."""
    indexes = {}
    for kind, info in library.index_info().items():
        path, size = library.index_path(kind), library.index_file_bytes(kind)
        data: dict[str, Any] = {"path": str(path), "bytes": size, "index_type": None, "requested_type": None}
        if info is not None:
            recorded = info.to_json()
            data |= {"index_type": recorded.pop("effective_type")} | recorded
        indexes[kind] = data
    return indexes


def _index_kind(effective: str | None, requested: str | None) -> str:
    """The index type built, and the type asked for when it is another (an IVF-PQ request on a small library)."""
    if effective is None:
        return "no index"
    if requested in (None, effective):
        return effective
    from ..vectors import IVFPQ_MIN_VECTORS

    return f"{effective}; {requested} was asked for, built once there are {IVFPQ_MIN_VECTORS:,} vectors"


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _sqlite_bytes(db_file: Path) -> int | None:
    """The database file with its write-ahead log."""
    sizes = [_size(Path(f"{db_file}{suffix}")) for suffix in ("", "-wal")]
    return None if sizes[0] is None else sum(size or 0 for size in sizes)


def _print_stats(data: dict[str, Any]) -> None:
    from ..pathnames import shown

    files = data["files"]
    lines = [
        _database_line(data["database"], data["database_bytes"]),
        f"files: {files['total']} ({files['indexed']} indexed, {files['pending']} pending, {files['error']} failed)",
        f"windows: {data['windows']}, texts: {data['texts']}, audio: {duration_text(data['indexed_audio_s'])}",
        _captions_line(data["captions"]),
    ]
    model = data["model"]
    if model:
        lines.append(f"model: {model['model']} ({model['model_fingerprint'][:12]}), embedder: {model['embedder']}")
    if data["truncated"]:
        count = len(data["truncated"])
        decode = for_count(count, "decodes shorter than its header says", "decode shorter than their headers say")
        lines.append(f"truncated: {count_text(count, 'file')} {decode}")
        lines += [f"  {shown(item['path'])}: {item['note']}" for item in data["truncated"]]
    if data["failed"]:  # the reason's first line: the lines below it are what the decoders printed
        failed = count_text(len(data["failed"]), "file")
        lines.append(f"failed: {failed} could not be indexed (`index --retry-errors` tries again)")
        lines += [f"  {shown(item['path'])}: {item['error'].partition(chr(10))[0]}" for item in data["failed"]]
    for kind, info in data["vector_indexes"].items():
        built = _index_kind(info["index_type"], info["requested_type"])
        lines.append(f"{kind} index: {data['vectors'][kind]} vectors, {built} ({_human(info['bytes'])})")
    lines += [_run_line(run) for run in data["runs"]]
    for line in lines:
        out_console.print(line, markup=False, soft_wrap=True)


def _database_line(url: str, size: int | None) -> str:
    """The URL, with the size of a SQLite file (a server's database has no file of its own to measure)."""
    return f"database: {url} ({_human(size)})" if url.startswith("sqlite") else f"database: {url}"


def _run_line(run: dict[str, Any]) -> str:
    """One run as a person reads it: status, start, end, duration and counts."""
    started = datetime.fromisoformat(run["started_at"])
    shard = f" (shard {run['shard']})" if run["shard"] else ""
    if run["finished_at"] is not None:
        finished = datetime.fromisoformat(run["finished_at"])
        end = f"ended {_when(finished)} ({_duration((finished - started).total_seconds())})"
    elif run["status"] == "running":
        end = "not ended yet"
    else:
        end = "end unknown (its process died)"
    return (
        f"run {run['id']}{shard}: {run['status']}; started {_when(started)}, {end}; "
        f"{run['files_seen']} seen, {run['files_indexed']} indexed, {run['files_failed']} failed, "
        f"{run['files_pruned']} pruned"
    )


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def _captions_line(captions: dict[str, Any]) -> str:
    line = f"captions: {captions['captioned']} of {captions['windows']} windows"
    if captions["by_mode"]:  # how they were generated: exact, or a --fast mode (not bit-identical)
        line += " (" + ", ".join(f"{mode}: {count}" for mode, count in captions["by_mode"].items()) + ")"
    if captions["missing"]:
        line += f" ({captions['missing']} waiting: `pengi-search index PATH` writes them)"
    return line


def _human(size: int | None) -> str:
    if size is None:
        return "no file"
    value, unit = float(size), "B"
    for bigger in ("KB", "MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"

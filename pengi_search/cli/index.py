"""`index`, `rebuild-index`, `stats`, `remove` and `export`: building and looking after a library."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..choices import Device, IndexType
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    BatchOption,
    BeamOption,
    DbOption,
    DeviceOption,
    FastOption,
    JsonOption,
    MaxLenOption,
    ModelOption,
    QuietOption,
    ThreadsOption,
    UsageError,
    apply_threads,
    err_console,
    fail,
    handle_errors,
    out_console,
    print_json,
    progress_bar,
    show_progress,
)

if TYPE_CHECKING:
    from indexer.pipeline import IndexSummary

IndexTypeOption = Annotated[
    IndexType | None,
    typer.Option(
        "--index-type",
        help="FAISS index: flat (exact), hnsw or ivfpq (millions of windows). Default: the type in use, else flat.",
    ),
]


@handle_errors
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders (walked, following links) or files to index.")],
    db: DbOption = None,
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=0, help="Decoding processes; 0 decodes in this process. \\[default: cores/2, <= 4]"
        ),
    ] = None,
    batch_size: BatchOption = 16,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt",
            "-p",
            help="Prompt answered for every window (repeatable); the first one's answer is what text search matches. "
            "Default: caption and sound events.",
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
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Try again files that failed before and did not change.")
    ] = False,
    reindex: Annotated[
        bool, typer.Option("--reindex", help="Re-index everything (needed to switch model or text embedder).")
    ] = False,
    beam: BeamOption = 3,
    max_len: MaxLenOption = 30,
    threads: ThreadsOption = None,
    fast: FastOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
) -> None:
    """Caption every audio file under PATH... into the library (incremental, resumable).

    Unchanged files are skipped, changed ones captioned again, deleted ones forgotten. Files that cannot be read
    are recorded with the reason and reported; the run goes on (exit code 3 when any failed).

    Example: pengi-search index ~/sounds --workers 4 --batch-size 32
    """
    from indexer.pipeline import IndexerError, IndexOptions, default_workers, run_index
    from indexer.shard import Shard

    from ..audio import AUDIO_EXTENSIONS
    from ..scan import ScanError, normalize_extensions

    apply_threads(threads)
    extensions = AUDIO_EXTENSIONS if ext is None else normalize_extensions(ext.split(","))
    if not extensions:
        raise UsageError("", f"--ext {ext!r} names no extension")
    try:
        shard_part = None if shard is None else Shard.parse(shard)
    except ValueError as exc:
        raise UsageError("", f"--shard: {exc}") from exc
    options = IndexOptions(
        roots=[str(path) for path in paths],
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
        retry_errors=retry_errors,
        reindex=reindex,
        beam=beam,
        max_len=max_len,
        fast=fast,
    )
    try:
        with progress_bar() as bar:
            summary = run_index(options, _Reporter(bar, visible=show_progress(quiet, json_output)))
    except (IndexerError, ScanError) as exc:
        raise UsageError("", str(exc)) from exc
    if json_output:
        print_json(summary.to_json())
    else:
        _print_summary(summary)
    raise typer.Exit(EXIT_PARTIAL if summary.partial else EXIT_OK)


@handle_errors
def rebuild_index(db: DbOption = None, index_type: IndexTypeOption = None, json_output: JsonOption = False) -> None:
    """Rebuild the FAISS indexes from the database (e.g. to change the index type).

    Example: pengi-search rebuild-index --index-type hnsw
    """
    from ..library import Library

    started = time.monotonic()
    with Library.open(db) as library:
        counts = library.rebuild(index_type)
        types = library.index_types()
    seconds = time.monotonic() - started
    if json_output:
        print_json({"vectors": counts, "index_types": types, "seconds": round(seconds, 3)})
        return
    for kind, count in counts.items():
        out_console.print(f"{kind}: {count} vectors ({types[kind] or 'no index'})")
    out_console.print(f"rebuilt in {seconds:.1f} s")


@handle_errors
def stats(db: DbOption = None, json_output: JsonOption = False) -> None:
    """Show what the library holds: files by status, windows, texts, model, embedder, runs, sizes on disk.

    Example: pengi-search stats --json
    """
    from ..db import sqlite_file
    from ..library import Library

    with Library.open(db) as library:
        data = library.store.stats()
        data["runs"] = [_run_json(run) for run in library.store.runs(limit=5)]
        db_file = sqlite_file(library.db_url)
        data["database_bytes"] = None if db_file is None else _sqlite_bytes(db_file)
        data["vector_indexes"] = {
            kind: {"path": str(library.index_path(kind)), "bytes": _size(library.index_path(kind)), "index_type": type_}
            for kind, type_ in library.index_types().items()
        }
    if json_output:
        print_json(data)
    else:
        _print_stats(data)


@handle_errors
def remove(
    path: Annotated[Path, typer.Argument(help="A file, or a folder: everything indexed below it.")],
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Forget a file, or every file under a folder (the files on disk are not touched).

    Example: pengi-search remove ~/sounds/old-recordings
    """
    from ..library import Library
    from ..scan import absolute

    target = absolute(path)
    with Library.open(db) as library:
        removed = library.store.remove(target)
        library.sync_vector_indexes()
    if removed == 0:
        fail(f"{target}: nothing in the index at or under this path", EXIT_FAILED)
    if json_output:
        print_json({"path": target, "removed_files": removed})
    else:
        out_console.print(f"removed {removed} file(s) at or under {target}", markup=False)


@handle_errors
def export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the JSON lines to this file \\[default: stdout].")
    ] = None,
    under: Annotated[Path | None, typer.Option("--under", help="Only files at or under this path.")] = None,
    db: DbOption = None,
) -> None:
    """Export the library as JSON lines: one file per line, with its windows and their texts (no vectors).

    Example: pengi-search export --output library.jsonl
    """
    from ..library import Library
    from ..scan import absolute

    prefix = None if under is None else absolute(under)
    with Library.open(db) as library:
        if output is None:
            try:
                _write_rows(library.store.export_rows(prefix), sys.stdout)
                sys.stdout.flush()
            except BrokenPipeError:  # `export | head`: the reader had enough
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        partial = output.with_name(f".{output.name}.partial")
        with open(partial, "w", encoding="utf-8") as stream:
            _write_rows(library.store.export_rows(prefix), stream)
        os.replace(partial, output)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


class _Reporter:
    """The indexer's progress on a Rich bar: files done of all, windows per second, time left."""

    def __init__(self, bar: Any, visible: bool) -> None:
        self.bar = bar
        self.visible = visible
        self.task: Any = None
        self.windows = 0
        self.started = time.monotonic()

    def start(self, files: int) -> None:
        self.started = time.monotonic()
        self.task = self.bar.add_task("indexing", total=files, rate="", visible=self.visible)

    def advance(self, files: int = 0, windows: int = 0) -> None:
        self.windows += windows
        rate = self.windows / max(time.monotonic() - self.started, 1e-9)
        self.bar.update(self.task, advance=files, rate=f"{rate:.1f} windows/s")


def _print_summary(summary: IndexSummary) -> None:
    from rich.markup import escape

    shard = f" (shard {summary.shard})" if summary.shard else ""
    out_console.print(
        f"indexed {summary.indexed} file(s), {summary.windows} window(s) in {summary.seconds:.1f} s{shard}; "
        f"{summary.unchanged} unchanged, {summary.touched} touched, {len(summary.failed)} failed, "
        f"{summary.pruned} pruned",
        soft_wrap=True,
    )
    if summary.skipped_errors:
        out_console.print(f"{summary.skipped_errors} file(s) that failed before were skipped (--retry-errors)")
    for label, items in (("failed", summary.failed), ("unreadable folder", summary.unreadable_dirs)):
        for item in items:
            err_console.print(f"[red]{label}[/] {escape(item.path)}: {escape(item.reason)}", soft_wrap=True)


def _write_rows(rows: Any, stream: Any) -> None:
    for row in rows:
        stream.write(json.dumps(row, ensure_ascii=False) + "\n")


def _run_json(run: Any) -> dict[str, Any]:
    data = dict(vars(run))
    data["started_at"] = run.started_at.isoformat()
    data["finished_at"] = None if run.finished_at is None else run.finished_at.isoformat()
    return data


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
    files = data["files"]
    lines = [
        f"database: {data['database']} ({_human(data['database_bytes'])})",
        f"files: {files['total']} ({files['indexed']} indexed, {files['pending']} pending, {files['error']} failed)",
        f"windows: {data['windows']}, texts: {data['texts']}, audio: {data['indexed_audio_s'] / 3600:.2f} h",
    ]
    model = data["model"]
    if model:
        lines.append(f"model: {model['model']} ({model['model_fingerprint'][:12]}), embedder: {model['embedder']}")
    for kind, info in data["vector_indexes"].items():
        built = info["index_type"] or "not built"
        lines.append(f"{kind} index: {data['vectors'][kind]} vectors, {built} ({_human(info['bytes'])})")
    for run in data["runs"]:
        shard = f", shard {run['shard']}" if run["shard"] else ""
        lines.append(
            f"run {run['id']}: {run['status']} {run['started_at']}, {run['files_indexed']} indexed, "
            f"{run['files_failed']} failed, {run['files_pruned']} pruned{shard}"
        )
    for line in lines:
        out_console.print(line, markup=False, soft_wrap=True)


def _human(size: int | None) -> str:
    if size is None:
        return "no file"
    value, unit = float(size), "B"
    for bigger in ("KB", "MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"

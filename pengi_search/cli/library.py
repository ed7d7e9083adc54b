"""`rebuild-index`, `tune`, `stats`, `remove` and `export`: looking after a library that `index` built."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..messages import print_error
from ..units import count_text, duration_text, elapsed_text, for_count, moment_text, size_text
from ..written_aside import written_aside
from .common import (
    EXIT_FAILED,
    DbOption,
    UsageError,
    WaitOption,
    check_output_file,
    err_console,
    given_input,
    handle_errors,
    json_option,
    options_from,
    out_console,
    print_json,
    warn,
)
from .index import IndexTypeOption
from .progress_bars import index_fills, show_progress

if TYPE_CHECKING:
    from ..index_types import KnobSetting

STATS_RUNS = 5  # the latest runs `stats` shows

RebuildJsonOption = json_option("an object {vectors, vector_indexes, seconds}.")
TuneJsonOption = json_option("an object {vector_indexes, seconds}.")


def _given_knob(text: str) -> Any:
    """A search knob's parser: a whole number of at least 1, or `auto` (the automatic choice), an
    `index_types.KnobSetting` (Typer reads no union of types: the options are declared as text)."""
    from ..index_types import knob_setting

    try:
        return knob_setting(text)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


EfSearchOption = Annotated[
    str | None,
    typer.Option(
        "--ef-search",
        parser=_given_knob,
        metavar="<int|auto>",
        help="HNSW: candidates each search keeps; more finds more of the exact results, slower; auto: the default, "
        "64. Kept for every later search \\[default: the value kept, else auto].",
    ),
]
NprobeOption = Annotated[
    str | None,
    typer.Option(
        "--nprobe",
        parser=_given_knob,
        metavar="<int|auto>",
        help="IVF-PQ: cells each search looks in; more finds more of the exact results, slower; auto: chosen from "
        "the cells. Kept for every later search \\[default: the value kept, else auto].",
    ),
]


@dataclass(frozen=True)
class SearchKnobs:
    """How searches trade speed for recall, as `rebuild-index` and `tune` set it: each index type's knob, named as
    `Library.rebuild` and `Library.tune` name it; None leaves it as it is."""

    ef_search: EfSearchOption = None
    nprobe: NprobeOption = None

    def given(self) -> dict[str, KnobSetting]:
        """The knobs the command line gives a value (`auto` included), by name."""
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}


StatsJsonOption = json_option("an object: the library's counts, captions, failed files, runs and vector indexes.")
RemoveJsonOption = json_option("an object {path, removed_files}; a list of them for several paths.")


@handle_errors
@options_from(SearchKnobs, "knobs")
def rebuild_index(
    db: DbOption = None,
    index_type: IndexTypeOption = None,
    *,
    knobs: SearchKnobs,
    json_output: RebuildJsonOption = False,
) -> None:
    """Rebuild the FAISS indexes from the database, every vector added again (e.g. to change the index type).

    --ef-search and --nprobe set the rebuilt indexes' search knobs; `pengi-search tune` sets them without a
    rebuild.

    Example: pengi-search rebuild-index --index-type hnsw --ef-search 128
    """
    from ..errors import OptionError
    from ..json_values import json_seconds
    from ..library import Library
    from ..library_stats import indexes_json

    started = time.monotonic()
    with (
        index_fills(show_progress(False, json_output)) as fills,
        Library.open(db, create=False, progress=fills) as library,
        _fallback_told_below(),
    ):
        try:
            counts = library.rebuild(index_type, **knobs.given())
        except OptionError as err:  # a knob for another index type: nothing was rebuilt
            raise UsageError("", str(err)) from None
        indexes = indexes_json(library.store)
    seconds = time.monotonic() - started
    if json_output:
        print_json({"vectors": counts, "vector_indexes": indexes, "seconds": json_seconds(seconds)})
        return
    _print_indexes(indexes, counts)
    out_console.print(f"rebuilt in {seconds:.1f} s")


@handle_errors
@options_from(SearchKnobs, "knobs")
def tune(
    db: DbOption = None,
    *,
    knobs: SearchKnobs,
    json_output: TuneJsonOption = False,
) -> None:
    """Set how searches trade speed for recall (--ef-search, --nprobe), without rebuilding the FAISS indexes.

    No vector is added again: the indexes' files and the database record the new value, which every later command
    and a running serve search with, and later rebuilds keep. Without options, shows each index's settings.

    Example: pengi-search tune --ef-search 128   (HNSW; --nprobe N for IVF-PQ; auto goes back to the default)
    """
    from ..errors import OptionError, cli_option
    from ..json_values import json_seconds
    from ..library import Library
    from ..library_stats import indexes_json

    started = time.monotonic()
    with Library.open(db, create=False) as library:
        try:
            library.tune(**knobs.given())
        except OptionError as err:  # a knob for another index type: nothing was changed
            # The type is changed by a rebuild: this command has no --index-type.
            reason = err.reason(lambda name: f"pengi-search rebuild-index {cli_option(name)}")
            raise UsageError("", f"{cli_option(err.option)} {reason}") from None
        indexes = indexes_json(library.store)
    seconds = time.monotonic() - started
    if json_output:
        print_json({"vector_indexes": indexes, "seconds": json_seconds(seconds)})
        return
    _print_indexes(indexes, {kind: info.get("vectors") or 0 for kind, info in indexes.items()})
    if knobs.given():
        out_console.print(f"tuned in {seconds:.1f} s, nothing rebuilt")


def _print_indexes(indexes: dict[str, Any], counts: dict[str, int]) -> None:
    """Each kind's index: its vectors, type and search knob."""
    for kind, count in counts.items():
        built = _index_kind(indexes[kind])
        out_console.print(f"{kind}: {count_text(count, 'vector')} ({built})", markup=False, soft_wrap=True)


@contextlib.contextmanager
def _fallback_told_below() -> Iterator[None]:
    """Without the warning an IVF-PQ request on a small library logs (once per index): the summary says what was
    built and when IVF-PQ will be, and --json has both types."""
    from ..index_types import fallback_log

    def drop(_record: logging.LogRecord) -> bool:
        return False

    fallback_log.addFilter(drop)
    try:
        yield
    finally:
        fallback_log.removeFilter(drop)


@handle_errors
def stats(db: DbOption = None, json_output: StatsJsonOption = False) -> None:
    """Show what the library holds: files by status (those cut short or failed by name, with the reason), windows
    (and how many have captions), texts, model, embedder, runs, sizes on disk.

    Example: pengi-search stats --json
    """
    from ..index_hints import library_index_command
    from ..library import Library
    from ..library_stats import stats_json

    with Library.open(db, read_only=True) as library:
        data = stats_json(library.store, runs=STATS_RUNS)
        # What writes the missing captions: an `index` of the library's folders (read only when said).
        captioner = library_index_command(library.store) if data["captions"]["missing"] and not json_output else ""
    if json_output:
        print_json(data)
    else:
        _print_stats(data, library.name, captioner)


@handle_errors
def remove(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Files, or folders: everything indexed below them.", parser=given_input, show_default=False
        ),
    ],
    db: DbOption = None,
    wait: WaitOption = False,
    json_output: RemoveJsonOption = False,
) -> None:
    """Forget files, or every file under folders (the files on disk are not touched).

    As `rm` does, each path is forgotten on its own: one with nothing indexed is said and the others are still
    forgotten (exit code 1). While an index run writes to the library it is refused (exit code 1), or waits for the
    run to end with --wait.

    Example: pengi-search remove ~/sounds/old-recordings ~/sounds/draft.wav
    """
    from ..db.run_lock import indexing_lock
    from ..library import Library
    from ..pathnames import path_fields, shown
    from ..scan import absolute

    # Removing a folder's worth of windows from an HNSW or IVF-PQ index re-fills it: minutes on millions of vectors.
    # Under the indexing lock: a run writing beside it stores the files it decoded after they were removed (they come
    # back, and those it had stored before are gone although its summary counts them indexed).
    with (
        index_fills(show_progress(False, json_output)) as fills,
        Library.open(db, create=False, progress=fills) as library,
        indexing_lock(library.store, wait=wait, index_run=False),
    ):
        removed = [library.store.remove(absolute(path)) for path in paths]
        library.sync_vector_indexes()
    if json_output:
        rows = [{**path_fields(path), "removed_files": count} for path, count in zip(paths, removed, strict=True)]
        if len(paths) > 1 or removed[0]:  # one path: its object, and only when it removed something
            print_json(rows if len(paths) > 1 else rows[0])
    for path, count in zip(paths, removed, strict=True):
        if count == 0:  # named as typed, as every command names a path given; the library holds it absolute
            print_error(err_console, f"{shown(path)}: nothing in the index at or under this path")
        elif not json_output:
            out_console.print(f"removed {count_text(count, 'file')} at or under {shown(path)}", markup=False)
    if not all(removed):
        raise typer.Exit(EXIT_FAILED)


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
            written = _write_rows(library.store.export_rows(prefix), sys.stdout)
        else:
            with written_aside(output) as partial, open(partial, "w", encoding="utf-8") as stream:
                written = _write_rows(library.store.export_rows(prefix), stream)
    if under is not None and written == 0:  # a mistyped --under reads as an empty library otherwise
        from ..pathnames import shown

        warn(f"{shown(os.fspath(under))}: nothing in the index at or under this path")


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _write_rows(rows: Any, stream: Any) -> int:
    """Write `rows` as JSON lines; how many there were."""
    from ..pathnames import json_text, writes_utf8

    ascii_only = not writes_utf8(stream)
    count = 0
    for row in rows:
        stream.write(json_text(row, ascii_only=ascii_only) + "\n")
        count += 1
    return count


def _index_kind(info: dict[str, Any]) -> str:
    """An index of `vector_indexes`: the type built with the search knob it is searched with, and the type asked
    for when it is another (an IVF-PQ request on a small library)."""
    effective, requested = info["index_type"], info["requested_type"]
    if effective is None:
        return "no index"
    knobs = [_knob_text(info, name) for name in _KNOB_LABELS if info[name] is not None]
    built = ", ".join([effective, *knobs])
    if requested in (None, effective):
        return built
    from ..index_types import IVFPQ_MIN_VECTORS

    return f"{built}; {requested} was asked for, built once there are {IVFPQ_MIN_VECTORS:,} vectors"


_KNOB_LABELS = {"ef_search": "efSearch", "nprobe": "nprobe"}  # as FAISS names them


def _knob_text(info: dict[str, Any], name: str) -> str:
    """A search knob as it is in effect: `efSearch 128` as chosen, `default efSearch 64` when nobody chose it (its
    parameter None: the automatic choice)."""
    text = f"{_KNOB_LABELS[name]} {info[name]}"
    return f"default {text}" if info["params"].get(name) is None else text


def _print_stats(data: dict[str, Any], name: str, captioner: str) -> None:
    """`stats` as text: the library `name`d as the user named it (`Store.name`); `captioner`: the command that
    writes its missing captions."""
    from ..pathnames import shown

    files = data["files"]
    lines = [
        _database_line(name, data["database"], data["database_bytes"]),
        f"files: {files['total']} ({files['indexed']} indexed, {files['pending']} pending, {files['error']} failed)",
        f"windows: {data['window_count']}, texts: {data['texts']}, audio: {duration_text(data['indexed_audio_s'])}",
        _captions_line(data["captions"], captioner),
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
        built = _index_kind(info)
        size = _human(info["bytes"])
        if info["removed"]:
            size += f"; {count_text(info['removed'], 'removed vector')} kept in it until they pass a fifth"
        lines.append(f"{kind} index: {count_text(data['vectors'][kind], 'vector')}, {built} ({size})")
    lines += [_run_line(run) for run in data["runs"]]
    for line in lines:
        out_console.print(line, markup=False, soft_wrap=True)


def _database_line(name: str, url: str, size: int | None) -> str:
    """The library as the user named it (a file as typed, not the SQLite URL made of it), with the size of a SQLite
    file (a server's database, at `url`, has no file of its own to measure)."""
    return f"database: {name} ({_human(size)})" if url.startswith("sqlite") else f"database: {name}"


def _run_line(run: dict[str, Any]) -> str:
    """One run as a person reads it: status, start, end, duration and counts."""
    started = datetime.fromisoformat(run["started_at"])
    shard = f" (shard {run['shard']})" if run["shard"] else ""
    if run["finished_at"] is not None:
        finished = datetime.fromisoformat(run["finished_at"])
        end = f"ended {moment_text(finished)} ({elapsed_text((finished - started).total_seconds())})"
    elif run["status"] == "running":
        end = "not ended yet"
    else:
        end = "end unknown (its process died)"
    return (
        f"run {run['id']}{shard}: {run['status']}; started {moment_text(started)}, {end}; "
        f"{run['files_seen']} seen, {run['files_indexed']} indexed, {run['files_failed']} failed, "
        f"{run['files_pruned']} pruned"
    )


def _captions_line(captions: dict[str, Any], captioner: str) -> str:
    line = f"captions: {captions['captioned']} of {captions['window_count']} windows"
    if captions["by_mode"]:  # how they were generated: exact, or a --fast mode (not bit-identical)
        line += " (" + ", ".join(f"{mode}: {count}" for mode, count in captions["by_mode"].items()) + ")"
    if captions["missing"]:
        line += f" ({captions['missing']} waiting: `{captioner}` writes them)"
    return line


def _human(size: int | None) -> str:
    return "no file" if size is None else size_text(size)

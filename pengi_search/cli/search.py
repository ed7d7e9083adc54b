"""`query` and `similar`: searching an indexed library by text or by sound.

Imports stay inside the commands: `query` must not pay for torch (see `pengi_search.text_query`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..choices import DEFAULT_HYBRID_WEIGHT, By, Rank
from ..consoles import writes_plain_lines
from ..index_hints import other_model_fix
from ..paths import shown_path
from ..units import span_text
from .common import (
    EXIT_OK,
    EXIT_PARTIAL,
    ComputeOptions,
    HiddenOption,
    QuietOption,
    UsageError,
    UsingOptions,
    apply_threads,
    err_console,
    given_input,
    handle_errors,
    json_option,
    options_from,
    out_console,
    plain_table,
    print_json,
    report_skipped,
    warn,
)
from .first_use import fetches_model
from .inputs import audio_inputs, one_file_given
from .progress_bars import IndexFills, WindowProgress, index_fills, progress_bar, show_progress

if TYPE_CHECKING:
    from rich.table import Table

    from ..db import Store
    from ..search import Hit, SearchScope
    from ..search_filters import Filters
    from ..similar import SimilarResult

GONE_MARK = " (gone)"  # after the path of a hit whose file is gone from disk (`Hit.missing`)

LimitOption = Annotated[int, typer.Option("--limit", "-k", min=1, help="Number of results.")]
ByOption = Annotated[
    By, typer.Option("--by", help="file: the best window of each file; window: every matching window.")
]
MinScoreOption = Annotated[float | None, typer.Option("--min-score", help="Only results at least this similar.")]
PathOption = Annotated[
    str | None,
    typer.Option(
        "--path",
        help="Glob over full paths, e.g. '*/dogs/*' or 'sounds/**.wav' (relative: from here); a byte of a name that "
        "is not UTF-8 as results show it: '*/caf\\xe9/*'.",
    ),
]
ExtOption = Annotated[str | None, typer.Option("--ext", help="File extensions, e.g. wav,flac.")]
MinDurationOption = Annotated[float | None, typer.Option("--min-duration", min=0, help="Files at least this long (s).")]
MaxDurationOption = Annotated[float | None, typer.Option("--max-duration", min=0, help="Files at most this long (s).")]
RankOption = Annotated[
    Rank | None,
    typer.Option(
        "--rank",
        help="caption: the query against the generated captions (the paper's); audio: against each window's Pengi "
        "audio embedding (no captions needed); hybrid: a weighted sum of both. \\[default: caption once every "
        "window has captions, else audio]",
        show_default=False,
    ),
]
HybridWeightOption = Annotated[
    float | None,
    typer.Option(
        "--hybrid-weight",
        min=0.0,
        max=1.0,
        help=f"--rank hybrid: the caption cosine's weight (audio: 1 - it) \\[default: {DEFAULT_HYBRID_WEIGHT}]",
        show_default=False,
    ),
]


def hybrid_weight_for(weight: float | None, ranks: Collection[Rank]) -> float:
    """--hybrid-weight for a command that ranks by `ranks`: the hybrid ranking alone reads it, so given without it
    (where it would change nothing, without a word) it is refused, before any work."""
    if weight is not None and Rank.hybrid not in ranks:
        raise UsageError(
            "--hybrid-weight", "weighs the two scores of --rank hybrid: add --rank hybrid, or leave it out"
        )
    return DEFAULT_HYBRID_WEIGHT if weight is None else weight


QueryStartOption = Annotated[
    float | None,
    typer.Option(
        "--start",
        min=0,
        help="Only the query file's windows from this time on (s): a moment of a long recording \\[default: its "
        "start].",
        show_default=False,
    ),
]
QueryEndOption = Annotated[
    float | None,
    typer.Option(
        "--end",
        min=0,
        help="Only the query file's windows before this time (s) \\[default: its end].",
        show_default=False,
    ),
]


QueryJsonOption = json_option(
    "a list of hits {path, start_s, end_s, score, caption, texts, window_id, missing, ranking}."
)
SimilarJsonOption = json_option(
    "a list of hits for one file (query's fields but ranking, plus query_start_s, query_end_s); for several files "
    "or a folder, a list of {path, source, hits, error}."
)


@dataclass(frozen=True)
class ResultOptions:
    """Which results a search gives: how many, what each one is, and which files qualify."""

    limit: LimitOption = 10
    by: ByOption = By.file
    min_score: MinScoreOption = None
    path: PathOption = None
    ext: ExtOption = None
    min_duration: MinDurationOption = None
    max_duration: MaxDurationOption = None

    def filters(self) -> Filters:
        """The conditions on results; a value they cannot use (e.g. `--ext ,`) is bad usage."""
        from ..search_filters import Filters

        try:
            return Filters.from_options(
                min_score=self.min_score,
                path=self.path,
                ext=self.ext,
                min_duration=self.min_duration,
                max_duration=self.max_duration,
            )
        except ValueError as err:
            raise UsageError("", str(err)) from None

    def scope(self) -> SearchScope:
        """What `query_text` and `similar_to_files` return (the filters checked here)."""
        from ..search import SearchScope

        return SearchScope(self.limit, self.by, self.filters())


@dataclass(frozen=True)
class SearchOptions(UsingOptions, ResultOptions):
    """The options `query` and `similar` share: the results, then the library and model to search with. A dataclass
    takes its bases' fields from the last base to the first, so `--help` lists `ResultOptions`' options first."""


def _show_hits(
    hits: list[Hit],
    *,
    json_output: bool,
    show_query_span: bool = False,
    title: str | None = None,
    path_glob: str | None = None,
) -> None:
    """The hits as a table (or JSON); `path_glob`: `--path` as typed, which an empty result may be the fault of."""
    if json_output:
        print_json([hit.to_json() for hit in hits])
        return
    if not hits:
        err_console.print(_no_results(path_glob), markup=False, soft_wrap=True)
        return
    if title:  # above the table, wrapped to the terminal: a table's title is cut where its columns overflow it
        out_console.print(title, markup=False)
    cells = _hit_cells(hits, show_query_span)
    if writes_plain_lines(out_console) and all(text.isprintable() for column in cells.values() for text in column):
        # Nothing to wrap: the rows Rich's table would give, written as lines. Its table lays out and renders every
        # cell, 7 s for `query -k 10000 > hits.txt`.
        out_console.print(_plain_rows(cells), markup=False, highlight=False, soft_wrap=True)
    else:
        out_console.print(_hits_table(cells, out_console.width))


def _no_results(path_glob: str | None) -> str:
    """What an empty result says: with a folder given as `--path` (a glob over whole paths, which a folder's name
    alone does not match: `--path sounds` found nothing, without a word why), the glob that searches under it."""
    import shlex

    from ..search_filters import glob_under_folder

    under = None if path_glob is None else glob_under_folder(path_glob)
    if under is None:
        return "no results"
    return (
        f"no results: --path matches whole file paths, and {path_glob} is a folder; --path {shlex.quote(under)} "
        "searches the files under it"
    )


# How each column of the hits' table is laid out: the path and the caption wrap, the others are kept whole.
_COLUMNS: dict[str, dict[str, Any]] = {
    "#": {"justify": "right"},
    "path": {"overflow": "fold"},
    "time": {"no_wrap": True},
    "query time": {"no_wrap": True},
    "score": {"justify": "right"},
    "caption": {"overflow": "fold"},
}
# Between two columns of a table without a box: a space closing one cell and one opening the next.
_GUTTER = 2
# However little room the path leaves, a caption is wrapped no narrower than its longest word, up to this.
_CAPTION_FLOOR = 16


def _hit_cells(hits: list[Hit], show_query_span: bool) -> dict[str, list[str]]:
    """The text of each column of the hits' table (`_COLUMNS`), one per hit."""
    cells = {
        "#": [str(rank) for rank in range(1, len(hits) + 1)],
        "path": [shown_path(hit.path) + (GONE_MARK if hit.missing else "") for hit in hits],
        "time": [span_text(hit.start_s, hit.end_s) for hit in hits],
        "query time": [span_text(hit.query_start_s or 0.0, hit.query_end_s or 0.0) for hit in hits],
        "score": [f"{hit.score:.3f}" for hit in hits],
        "caption": [hit.caption or "(no caption yet)" for hit in hits],
    }
    if not show_query_span:
        del cells["query time"]
    return cells


def _hits_table(cells: dict[str, list[str]], width: int) -> Table:
    """The ranked hits as a table `width` columns wide (as wide as they need off a terminal)."""
    from rich.text import Text

    table = plain_table()
    for name in cells:
        table.add_column(name, **_COLUMNS[name])
    table.columns[-1].max_width = _caption_width(cells, width)
    for row in zip(*cells.values(), strict=True):
        table.add_row(*map(Text, row))  # as written: no markup, no emoji codes (`:fire:` in a name stays)
    return table


def _plain_rows(cells: dict[str, list[str]]) -> str:
    """The header and one line per hit, each column as wide as its widest cell, as `_hits_table` lays them out
    where nothing wraps; no line ends in spaces."""
    from rich.cells import cell_len

    def padded(name: str, column: list[str]) -> list[str]:
        texts = [name, *column]
        widths = [cell_len(text) for text in texts]  # a wide character takes two columns
        widest = max(widths)
        if _COLUMNS[name].get("justify") == "right":
            return [" " * (widest - width) + text for text, width in zip(texts, widths, strict=True)]
        return [text + " " * (widest - width) for text, width in zip(texts, widths, strict=True)]

    columns = [padded(name, column) for name, column in cells.items()]
    gutter = " " * _GUTTER
    return "\n".join(gutter.join(row).rstrip(" ") for row in zip(*columns, strict=True))


def _caption_width(cells: dict[str, list[str]], width: int) -> int:
    """The widest the caption column may be: a path is what a user copies, so it keeps up to half the width whole,
    and the caption wraps in what the other columns leave, never narrower than its name or longest word (up to
    `_CAPTION_FLOOR`).

    A smallest width on the path column would not do: Rich shrinks the widest columns until the table fits, then
    widens the path again and crops the table's right edge, the end of every caption line.
    """
    from rich.cells import cell_len

    def widest(name: str) -> int:
        return max(map(cell_len, [name, *cells[name]]))

    whole = sum(widest(name) for name in cells if name not in ("path", "caption"))
    path = min(widest("path"), width // 2)
    # The column's name counts as a word: folded, `capti` over `on` heads the column.
    longest_word = max(cell_len(word) for caption in ["caption", *cells["caption"]] for word in caption.split())
    return max(width - whole - _GUTTER * (len(cells) - 1) - path, min(longest_word, _CAPTION_FLOOR))


@handle_errors
@fetches_model
@options_from(SearchOptions, "search")
def query(
    text: Annotated[str, typer.Argument(help='What to look for, e.g. "dog barking in the rain".')],
    *,
    search: SearchOptions,
    rank: RankOption = None,
    hybrid_weight: HybridWeightOption = None,
    json_output: QueryJsonOption = False,
) -> None:
    """Find the sounds that match a text (text -> audio), best first.

    By caption (the paper's retrieval): the text is embedded by the text embedder that built the index and compared
    with every window's caption. By audio: Pengi's text tower embeds the text and it is compared with every window's
    audio embedding, which needs no captions (the default while some windows have none; results say so).

    Example: pengi-search query "dog barking in the rain" -k 5 --ext wav
    """
    from ..db import caption_counts
    from ..library import Library
    from ..ranking import RANK_LABELS
    from ..search import choose_rank, query_text

    if not text.strip():
        raise UsageError("", 'the query text is empty; say what to look for, e.g. "dog barking in the rain"')
    weight = hybrid_weight_for(hybrid_weight, [] if rank is None else [rank])  # unasked, a query never ranks hybrid
    scope = search.scope()
    with (
        index_fills(show_progress(False, json_output)) as fills,  # a FAISS file to rebuild first: minutes, not silence
        Library.open(search.db, read_only=True, progress=fills) as library,
        model_said_as_options(library.store, search.model),
    ):
        chosen = choose_rank(library, rank, search.model)
        counts = caption_counts(library.store)
        hits = query_text(
            library,
            text,
            scope,
            model=search.model,
            device=search.device,
            rank=chosen,
            hybrid_weight=weight,
            notify=warn,
        )
    title = None
    if chosen is not Rank.caption:
        weighed = f", caption weight {weight:g}" if chosen is Rank.hybrid else ""
        captioned = f"{counts.captioned} of {counts.window_count} windows have captions"
        title = f"ranked by {RANK_LABELS[chosen]}{weighed}; {captioned}"
    elif counts.missing and not json_output:
        err_console.print(
            f"note: {counts.missing} of {counts.window_count} windows have no captions yet and cannot match by caption "
            "(--rank audio searches them all)",
            soft_wrap=True,
        )
    _show_hits(hits, json_output=json_output, title=title, path_glob=search.path)


@handle_errors
@fetches_model
@options_from(SearchOptions, "search")
@options_from(ComputeOptions, "compute")
def similar(
    files: Annotated[
        list[str],
        typer.Argument(help="Audio files (indexed or not) or folders (searched recursively).", parser=given_input),
    ],
    *,
    search: SearchOptions,
    compute: ComputeOptions,
    hidden: HiddenOption = False,
    start: QueryStartOption = None,
    end: QueryEndOption = None,
    json_output: SimilarJsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Find the sounds that sound like each FILE (audio -> audio); the file itself is left out, with its copies.

    An indexed, unchanged file uses its stored audio embeddings; any other file is decoded and embedded with the
    model (several such files together). Each window of the library is scored by its best match among the file's
    windows (--start and --end: those that overlap that part of it). A file given twice is searched once; a file
    that cannot be decoded, or has no window there, is reported (exit code 3).

    Example: pengi-search similar door-slam.wav -k 5; pengi-search similar field.wav --start 35 --end 42
    """
    from itertools import chain

    from ..library import Library
    from ..similar import SimilarResult, similar_to_files

    within = _query_part(start, end)
    paths, unreadable = audio_inputs(files, hidden=hidden)
    apply_threads(compute.threads)
    scope = search.scope()
    visible = show_progress(quiet, json_output)
    with (
        progress_bar() as bar,
        Library.open(search.db, read_only=True, progress=IndexFills(bar, visible)) as library,
        model_said_as_options(library.store, search.model),
    ):
        progress = WindowProgress(bar, "embedding", visible=visible)
        found = similar_to_files(
            library,
            paths,
            scope,
            model=search.model,
            device=search.device,
            batch_size=compute.batch_size,
            fast=compute.fast,
            progress=progress,
            within=within,
        )
        # A file of a folder that cannot be read is reported as one that cannot be decoded is.
        unread = [SimilarResult(path, [], None, reason) for path, reason in unreadable]
        results = []
        for result in chain(unread, found):
            if result.error is not None:  # said as it happens, as describe and classify say it
                report_skipped(result.path, result.error)
            results.append(result)
    _show_similar(results, json_output=json_output, one_file=one_file_given(files), path_glob=search.path)
    raise typer.Exit(EXIT_PARTIAL if any(r.error for r in results) else EXIT_OK)


@contextlib.contextmanager
def model_said_as_options(store: Store, model: str | None) -> Iterator[None]:
    """A library of another model (OtherModelError, whose fix names the argument `model=`) said with the command's
    options: `--model`, and the `index --reindex` to paste that builds the library anew with the model asked for."""
    from ..db import OtherModelError

    try:
        yield
    except OtherModelError as exc:
        raise exc.fixed_by(other_model_fix(store, model, "give the library's model with --model")) from None


def _query_part(start: float | None, end: float | None) -> tuple[float, float] | None:
    """The part of each query file that `similar` searches with, from --start and --end; None: all of it."""
    if start is None and end is None:
        return None
    part = (start or 0.0, float("inf") if end is None else end)
    if part[1] <= part[0]:
        raise UsageError("", f"--end {part[1]:g} is not after --start {part[0]:g}: no window lies between them")
    return part


def _show_similar(
    results: list[SimilarResult], *, json_output: bool, one_file: bool, path_glob: str | None = None
) -> None:
    """The hits of each query file; `one_file`: a single file was given, whose --json is its bare list of hits;
    `path_glob`: `--path` as typed."""
    from rich.text import Text

    from ..pathnames import path_fields, shown

    if json_output and one_file:
        print_json([hit.to_json() for hit in results[0].hits])
        return
    if json_output:
        print_json(
            [
                {
                    **path_fields(r.path),
                    "source": r.source,
                    "hits": [hit.to_json() for hit in r.hits],
                    "error": r.error,
                }
                for r in results
            ]
        )
        return
    shown_results = [result for result in results if result.error is None]
    for number, result in enumerate(shown_results):
        if not one_file:  # which file these hits are for: a folder's files were not named on the command line
            if number:  # a blank line between one file's hits and the next file's name, as ripgrep's headings
                out_console.print()
            out_console.print(Text(shown(result.path), style="bold"), soft_wrap=True)
        # Which window of the query matched, whenever it has several: also when every hit shown matched the same one.
        _show_hits(result.hits, json_output=False, show_query_span=result.query_windows > 1, path_glob=path_glob)

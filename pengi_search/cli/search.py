"""`query`, `similar` and `classify`: searching an indexed library and zero-shot classification.

Imports stay inside the commands: `query` must not pay for torch (see `pengi_search.text_query`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    EXIT_OK,
    EXIT_PARTIAL,
    BatchOption,
    BeamOption,
    DbOption,
    DeviceOption,
    JsonOption,
    MaxLenOption,
    ModelOption,
    QuietOption,
    UsageError,
    err_console,
    handle_errors,
    out_console,
    print_json,
    progress_bar,
    show_progress,
)

if TYPE_CHECKING:
    from ..classify import Prediction, Truth
    from ..search import Filters, Hit

LimitOption = Annotated[int, typer.Option("--limit", "-k", min=1, help="Number of results.")]
ByOption = Annotated[
    str, typer.Option("--by", help="file: the best window of each file; window: every matching window.")
]
MinScoreOption = Annotated[float | None, typer.Option("--min-score", help="Only results at least this similar.")]
PathOption = Annotated[
    str | None,
    typer.Option("--path", help="Glob over full paths, e.g. '*/dogs/*' or 'sounds/**.wav' (relative: from here)."),
]
ExtOption = Annotated[str | None, typer.Option("--ext", help="File extensions, e.g. wav,flac.")]
MinDurationOption = Annotated[float | None, typer.Option("--min-duration", min=0, help="Files at least this long (s).")]
MaxDurationOption = Annotated[float | None, typer.Option("--max-duration", min=0, help="Files at most this long (s).")]


def _filters(
    min_score: float | None, path: str | None, ext: str | None, min_duration: float | None, max_duration: float | None
) -> Filters:
    from ..search import Filters

    try:
        return Filters.from_options(
            min_score=min_score, path=path, ext=ext, min_duration=min_duration, max_duration=max_duration
        )
    except ValueError as err:
        raise UsageError("", str(err)) from None


def _check_by(by: str) -> None:
    from ..search import BY_CHOICES

    if by not in BY_CHOICES:
        raise UsageError("", f"--by {by!r}: use one of {', '.join(BY_CHOICES)}")


def _shown_path(path: str) -> str:
    """Paths below the current folder are shown relative to it (shorter tables); JSON keeps them absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _span(start: float, end: float) -> str:
    return f"{start:.1f}-{end:.1f}s"


def _print_hits(hits: list[Hit], *, show_query_span: bool = False) -> None:
    if not hits:
        err_console.print("no results")
        return
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("path", overflow="fold")
    table.add_column("time", no_wrap=True)
    if show_query_span:
        table.add_column("query time", no_wrap=True)
    table.add_column("score", justify="right")
    table.add_column("caption", overflow="fold")
    for rank, hit in enumerate(hits, 1):
        row = [str(rank), _shown_path(hit.path), _span(hit.start_s, hit.end_s)]
        if show_query_span:
            row.append(_span(hit.query_start_s or 0.0, hit.query_end_s or 0.0))
        table.add_row(*row, f"{hit.score:.3f}", hit.caption)
    out_console.print(table)


@handle_errors
def query(
    text: Annotated[str, typer.Argument(help='What to look for, e.g. "dog barking in the rain".')],
    limit: LimitOption = 10,
    by: ByOption = "file",
    min_score: MinScoreOption = None,
    path: PathOption = None,
    ext: ExtOption = None,
    min_duration: MinDurationOption = None,
    max_duration: MaxDurationOption = None,
    db: DbOption = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    json_output: JsonOption = False,
) -> None:
    """Find the sounds whose captions match a text (text -> audio), best first.

    The text is embedded by the text embedder that built the index and compared with every window's caption.

    Example: pengi-search query "dog barking in the rain" -k 5 --ext wav
    """
    from ..library import Library
    from ..search import query_text

    _check_by(by)
    filters = _filters(min_score, path, ext, min_duration, max_duration)
    with Library.open(db) as library:
        hits = query_text(library, text, k=limit, by=by, filters=filters, model=model, device=device)
    if json_output:
        print_json([hit.to_json() for hit in hits])
    else:
        _print_hits(hits)


@handle_errors
def similar(
    file: Annotated[Path, typer.Argument(help="An audio file (indexed or not).")],
    limit: LimitOption = 10,
    by: ByOption = "file",
    min_score: MinScoreOption = None,
    path: PathOption = None,
    ext: ExtOption = None,
    min_duration: MinDurationOption = None,
    max_duration: MaxDurationOption = None,
    db: DbOption = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = 16,
    json_output: JsonOption = False,
) -> None:
    """Find the sounds that sound like FILE (audio -> audio); FILE itself is left out.

    An indexed, unchanged FILE uses its stored audio embeddings; any other file is decoded and embedded with the
    model. Each window of the library is scored by its best match among FILE's windows.

    Example: pengi-search similar door-slam.wav -k 5
    """
    from ..library import Library
    from ..search import similar_to_file

    _check_by(by)
    if not file.is_file():
        raise UsageError("", f"{file}: no such file")
    filters = _filters(min_score, path, ext, min_duration, max_duration)
    with Library.open(db) as library:
        hits, _ = similar_to_file(
            library, file, k=limit, by=by, filters=filters, model=model, device=device, batch_size=batch_size
        )
    if json_output:
        print_json([hit.to_json() for hit in hits])
    else:
        spans = {(hit.query_start_s, hit.query_end_s) for hit in hits}
        _print_hits(hits, show_query_span=len(spans) > 1)


# ---------------------------------------------------------------------------------------------------------------
# classify


def _audio_files(target: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The audio files in a folder (recursively, sorted), and those that cannot be read with the reason."""
    from indexer.scan import ScanError, scan

    from ..audio import AUDIO_EXTENSIONS

    try:
        result = scan([target], frozenset(AUDIO_EXTENSIONS))
    except ScanError as err:
        raise UsageError("", str(err)) from None
    files = [e.path for e in result.entries if e.problem is None]
    problems = [(e.path, e.problem) for e in result.entries if e.problem is not None]
    return files, problems + list(result.unreadable_dirs)


def _open_library(db: str | None) -> Any:
    """The library when its database exists (classify never creates one), else None."""
    from ..library import Library
    from ..store import resolve_db_url, sqlite_file

    url = resolve_db_url(db)
    db_file = sqlite_file(url)
    if db_file is not None and not db_file.exists():
        return None
    return Library.open(url)


def _print_ranked(prediction: Prediction, top: int) -> None:
    from rich.table import Table

    out_console.print(
        f"[bold]{_shown_path(prediction.path)}[/]  ({prediction.windows} window{'s' * (prediction.windows != 1)})"
    )
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right")
    for rank, (label, score) in enumerate(prediction.ranked[:top], 1):
        table.add_row(str(rank), label, f"{score:.4f}")
    out_console.print(table)


def _print_metrics(metrics: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    if metrics["accuracy"] is None:
        console.print("no classified file is in the truth file")
        return
    console.print(f"accuracy {metrics['accuracy']:.4f} ({metrics['correct']}/{metrics['files']} files)")
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for name in ("label", "precision", "recall", "f1", "support"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for label, m in metrics["per_class"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)
    if metrics["unmatched"]:
        console.print(f"{len(metrics['unmatched'])} classified file(s) are not in the truth file")


def _read_inputs(labels: Path, truth: Path | None) -> tuple[list[str], Truth | None]:
    from ..classify import LabelsError, read_labels, read_truth

    try:
        return read_labels(labels), None if truth is None else read_truth(truth)
    except LabelsError as err:
        raise UsageError("", str(err)) from None


def _run_classifier(
    classifier: Any, files: list[str], *, quiet: bool, json_output: bool
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    from ..audio import AudioDecodeError

    predictions, failures = [], []
    classifier.prepare(files)
    with progress_bar() as bar:
        task = bar.add_task("classifying", total=len(files), rate="", visible=show_progress(quiet, json_output))
        for path in files:
            try:
                predictions.append(classifier.classify(path))
            except AudioDecodeError as err:
                failures.append((path, err.reason))
                err_console.print(f"[red]skipped[/] {err}")
            bar.advance(task)
    return predictions, failures


@handle_errors
def classify(
    target: Annotated[Path, typer.Argument(help="An audio file, or a folder (searched recursively).")],
    labels: Annotated[Path, typer.Option("--labels", "-l", help="One label per line, or a CSV with a 'label' column.")],
    method: Annotated[
        str, typer.Option("--method", help="text: caption vs label embeddings (paper default); loglik: likelihood.")
    ] = "text",
    template: Annotated[
        str, typer.Option("--template", help='Label text, e.g. "this is a sound of {label}".')
    ] = "{label}",
    prompt: Annotated[str, typer.Option("--prompt", help="loglik: the prompt the label answers.")] = (
        "this is a sound of"
    ),
    loglik_score: Annotated[
        str, typer.Option("--loglik-score", help="loglik: mean (per token, default) or total log-probability.")
    ] = "mean",
    text_embedder: Annotated[
        str | None,
        typer.Option("--text-embedder", help="text: 'pengi' (default) or 'sentence-transformers:NAME'."),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Labels shown per file.")] = 5,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder input: CSV file to write.")] = None,
    truth: Annotated[
        Path | None, typer.Option("--truth", help="CSV of known labels (file/filename/path, label): prints scores.")
    ] = None,
    db: DbOption = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = 16,
    beam: BeamOption = 3,
    max_len: MaxLenOption = 30,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Zero-shot classification of a file, or of every audio file in a folder (a CSV), against your labels.

    Files already indexed (and unchanged) by the same model reuse their stored captions or audio embeddings.

    Example: pengi-search classify recordings/ --labels labels.txt --output predictions.csv --truth truth.csv
    """
    from ..classify import Classifier, ClassifySettings, evaluate, write_csv
    from ..embedders import EmbedderSpec
    from ..model_dir import ModelDir

    label_list, known = _read_inputs(labels, truth)
    try:
        settings = ClassifySettings(
            method=method,
            template=template,
            prompt=prompt,
            loglik_score=loglik_score,
            text_embedder=EmbedderSpec.parse(text_embedder),
            beam=beam,
            max_len=max_len,
        )
    except ValueError as err:
        raise UsageError("", str(err)) from None
    if target.is_dir():
        files, failures = _audio_files(target)
    elif target.is_file():
        files, failures = [os.fspath(target)], []
    else:
        raise UsageError("", f"{target}: no such file or folder")
    library = _open_library(db)
    try:
        model_dir = ModelDir.resolve(model)
        classifier = Classifier(
            label_list, settings, model_dir=model_dir, library=library, device=device, batch_size=batch_size
        )
        predictions, failed = _run_classifier(classifier, files, quiet=quiet, json_output=json_output)
    finally:
        if library is not None:
            library.close()
    failures += failed
    metrics = None if known is None else evaluate(predictions, known)
    if output is not None:
        with open(output, "w", newline="", encoding="utf-8") as out:
            write_csv(predictions, out, top)
    if json_output:
        print_json(
            {
                "method": method,
                "labels": label_list,
                "results": [p.to_json(top) for p in predictions],
                "errors": [{"file": path, "error": reason} for path, reason in failures],
                "metrics": metrics,
            }
        )
    elif target.is_dir():
        if output is None:
            write_csv(predictions, sys.stdout, top)
        if metrics is not None:
            _print_metrics(metrics, err_console if output is None else out_console)
    else:
        for prediction in predictions:
            _print_ranked(prediction, top)
        if metrics is not None:
            _print_metrics(metrics, out_console)
    raise typer.Exit(EXIT_PARTIAL if failures else EXIT_OK)

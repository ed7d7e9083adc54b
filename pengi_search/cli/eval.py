"""`eval retrieval`, `eval caption`, `eval classify` and `eval compare`: measuring quality on your own data.

Retrieval and captioning index the set's audio first (into the output folder's own library unless `--db` names
one; files already indexed and unchanged are reused), then score what the library holds: the indexing step is the
indexer's, here at the command line, and the scoring is `pengi_search.evaluation`'s. Each command writes
report.json, report.md and its figures into `--output`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..choices import DEFAULT_HYBRID_WEIGHT, EXACT_MODE, Device, Method, Rank, StopRule, decoding_settings
from ..pathnames import shown
from ..prompts import TASK_PROMPTS
from .classify import ScoringOptions
from .common import (
    EXIT_OK,
    EXIT_PARTIAL,
    BatchOption,
    BeamOption,
    DeviceOption,
    HiddenOption,
    MaxLenOption,
    ModelOption,
    QuietOption,
    ThreadsOption,
    UsageError,
    apply_threads,
    check_output_file,
    check_output_folder,
    given_input,
    given_prompt,
    given_separator,
    handle_errors,
    json_option,
    options_from,
    out_console,
    print_json,
    warn,
)
from .first_use import fetches_model
from .help_text import App
from .inputs import audio_inputs
from .progress_bars import IndexProgress, progress_bar, show_progress

if TYPE_CHECKING:
    from indexer.run_report import IndexSummary

    from ..embedders import TextEmbedder
    from ..evaluation.datasets import CaptionSet
    from ..library import Library

app = App(
    help="Measure retrieval, captioning and classification quality on your own data, and compare two runs.",
    no_args_is_help=True,
)

CaptionsArgument = Annotated[
    Path, typer.Argument(help="CSV with a file column and caption columns (Clotho or AudioCaps layout).")
]
AudioRootOption = Annotated[
    Path | None,
    typer.Option("--audio-root", help="Folder the CSV's file names are relative to (default: the CSV's folder)."),
]
FileColumnOption = Annotated[
    str | None, typer.Option("--file-column", help="Column naming the audio file (default: file_name, file, ...).")
]
CaptionColumnOption = Annotated[
    list[str] | None,
    typer.Option("--caption-column", help="Caption column, repeatable (default: caption, caption_1, ...)."),
]
EvalDbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Library to evaluate; audio not yet in it is indexed first (default: index.db in the output folder).",
    ),
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", min=0, help="Decoding processes while indexing (default: cores/2, <= 4).")
]
PromptOption = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt",
        "-p",
        help="Index prompts (repeatable); the first one's answer is the caption.",
        parser=given_prompt,
    ),
]
TextEmbedderOption = Annotated[
    str | None,
    typer.Option("--text-embedder", help="Caption embedder: pengi or sentence-transformers:NAME (as for index)."),
]
OutputOption = Annotated[
    Path, typer.Option("--output", "-o", help="Folder for report.json, report.md and the figures.")
]
ReindexOption = Annotated[
    bool, typer.Option("--reindex", help="Index the set again (after changing beam, prompts or max length).")
]

ReportJsonOption = json_option("an object, the report as report.json holds it.")
CompareJsonOption = json_option("an object {kind, reports, setup_differences, not_recorded, notes, rows}.")


Failures = dict[str, str]  # path -> why it could not be indexed
Report = dict[str, Any]  # what a command measured, as report.json holds it

_SHOWN_SKIPPED = 10  # files left out that the terminal lists (the report lists them all)


@dataclass(frozen=True)
class EvalSet:
    """Where the captioned set's audio is and how it is indexed when the library lacks it (retrieval, caption)."""

    audio_root: AudioRootOption = None
    file_column: FileColumnOption = None
    caption_column: CaptionColumnOption = None
    db: EvalDbOption = None
    model: ModelOption = None
    device: DeviceOption = Device.auto
    workers: WorkersOption = None
    batch_size: BatchOption = None
    prompt: PromptOption = None
    text_embedder: TextEmbedderOption = None
    beam: BeamOption = 3
    max_len: MaxLenOption = 30
    reindex: ReindexOption = False
    threads: ThreadsOption = None

    def to_json(self) -> dict[str, Any]:
        return {"prompts": list(self.prompt or ()) or "index default", "beam": self.beam, "max_len": self.max_len}


# ---------------------------------------------------------------------------------------------------------------
# retrieval and caption


@app.command()
@handle_errors
@fetches_model
@options_from(EvalSet, "evalset")
def retrieval(
    captions: CaptionsArgument,
    *,
    evalset: EvalSet,
    output: OutputOption = Path("eval-retrieval"),
    rank: Annotated[
        list[Rank] | None,
        typer.Option(
            "--rank",
            help="Ranking to measure (repeatable): caption, audio, hybrid, as `query --rank`. \\[default: every one "
            "the model supports]",
            show_default=False,
        ),
    ] = None,
    hybrid_weight: Annotated[
        float, typer.Option("--hybrid-weight", min=0.0, max=1.0, help="The hybrid ranking's caption weight.")
    ] = DEFAULT_HYBRID_WEIGHT,
    quiet: QuietOption = False,
    json_output: ReportJsonOption = False,
) -> None:
    """Text -> audio and audio -> text retrieval: every caption is a query. R@1, R@5, R@10 and mAP@10 per ranking.

    Example: pengi-search eval retrieval clotho_captions_evaluation.csv --audio-root clotho/evaluation -o runs/retrieval
    """
    from ..embedders import TextEmbedderError
    from ..evaluation.retrieval import available_rankings, evaluate_retrieval
    from ..search import audio_query_embedder

    def score(library: Library, caption_set: CaptionSet, embedder: TextEmbedder, failures: Failures) -> Report:
        try:
            audio_embedder = audio_query_embedder(library, evalset.model, evalset.device, caption_embedder=embedder)
        except TextEmbedderError:  # a model without text tower: caption matching only
            audio_embedder = None
        try:
            rankings = available_rankings(
                library, embedder, caption_set.audio_root, audio_embedder, ranks=rank or (), hybrid_weight=hybrid_weight
            )
        except ValueError as exc:
            raise UsageError("", str(exc)) from None
        return evaluate_retrieval(library, caption_set, rankings, failures, notify=warn)

    _evaluate_set("retrieval", captions, evalset, output, score, quiet=quiet, json_output=json_output)


@app.command()
@handle_errors
@fetches_model
@options_from(EvalSet, "evalset")
def caption(
    captions: CaptionsArgument,
    *,
    evalset: EvalSet,
    output: OutputOption = Path("eval-caption"),
    java_metrics: Annotated[
        bool,
        typer.Option("--java-metrics/--no-java-metrics", help="METEOR and SPICE, when Java can run them (slow start)."),
    ] = True,
    quiet: QuietOption = False,
    json_output: ReportJsonOption = False,
) -> None:
    """Captioning: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr and caption-embedding cosine.

    METEOR and SPICE need Java and the pycocoevalcap package (the `eval` extra; SPICE also Stanford CoreNLP);
    without them the report says why they are missing.

    Example: pengi-search eval caption clotho_captions_evaluation.csv --audio-root clotho/evaluation -o runs/caption
    """
    from ..evaluation.captioning import evaluate_captions

    def score(library: Library, caption_set: CaptionSet, embedder: TextEmbedder, failures: Failures) -> Report:
        return evaluate_captions(library, caption_set, embedder, java=java_metrics, index_failures=failures)

    _evaluate_set("caption", captions, evalset, output, score, quiet=quiet, json_output=json_output)


def _evaluate_set(
    kind: str,
    captions: Path,
    evalset: EvalSet,
    output: Path,
    score: Callable[[Library, CaptionSet, TextEmbedder, Failures], Report],
    *,
    quiet: bool,
    json_output: bool,
) -> None:
    """Read the captioned set, index what the library lacks, `score` the library with its caption embedder (and the
    files that failed to index), and write the `kind` report."""
    from ..evaluation.captioning import caption_origins
    from ..search import query_embedder

    apply_threads(evalset.threads)
    check_output_folder(output)
    caption_set = _read_set(captions, evalset)
    library, summary = _indexed_library(caption_set, evalset, output, quiet=quiet, json_output=json_output)
    with library:
        embedder = query_embedder(library, evalset.model, evalset.device)
        result = score(library, caption_set, embedder, _failures(summary, library))
        setup = _library_setup(library, evalset)
        setup |= caption_origins(library, [item.path or "" for item in caption_set.found])
    _warn_other_captions(setup, evalset)
    _finish(kind, result, caption_set.to_json(), setup, summary, output, json_output)


def _warn_other_captions(setup: dict[str, Any], evalset: EvalSet) -> None:
    """The library keeps the captions it was first indexed with: asking for another prompt, beam or length without
    --reindex would measure the old captions under the new settings' names."""
    from ..evaluation.captioning import decoding_of

    wanted = {
        "caption_prompts": (evalset.prompt or [TASK_PROMPTS["caption"]])[0],
        "caption_decoding": decoding_of(decoding_settings(evalset.beam, evalset.max_len, StopRule.both), EXACT_MODE),
    }
    for key, what in (("caption_prompts", "answer"), ("caption_decoding", "were decoded with")):
        held = setup[key]
        if held and held != [wanted[key]]:
            found = ", ".join(repr(value) for value in held)
            warn(
                f"the library's captions of this set {what} {found}, not {wanted[key]!r}: --reindex captions them anew"
            )


def _read_set(captions: Path, evalset: EvalSet) -> CaptionSet:
    from ..evaluation.datasets import read_caption_set

    caption_set = read_caption_set(
        captions, evalset.audio_root, file_column=evalset.file_column, caption_columns=evalset.caption_column
    )
    if not caption_set.found:
        raise UsageError(captions, f"none of its {len(caption_set.items)} files is under {caption_set.audio_root}")
    return caption_set


def _indexed_library(
    caption_set: CaptionSet, evalset: EvalSet, output: Path, *, quiet: bool, json_output: bool
) -> tuple[Library, IndexSummary]:
    """Index the set's files that the library lacks (or all, with --reindex) and open the library."""
    from indexer.pipeline import IndexerError, run_index
    from indexer.run_report import IndexOptions

    from ..audio_workers import default_workers
    from ..library import Library
    from ..scan import ScanError

    output.mkdir(parents=True, exist_ok=True)
    db = evalset.db or str(output / "index.db")
    options = IndexOptions(
        roots=[item.path for item in caption_set.found if item.path],
        db=db,
        model=evalset.model,
        device=evalset.device,
        workers=default_workers() if evalset.workers is None else evalset.workers,
        batch_size=evalset.batch_size,
        prompts=tuple(evalset.prompt or ()),
        text_embedder=evalset.text_embedder,
        beam=evalset.beam,
        max_len=evalset.max_len,
        reindex=evalset.reindex,
    )
    try:
        with progress_bar() as bar:
            summary = run_index(options, IndexProgress(bar, visible=show_progress(quiet, json_output)))
    except (IndexerError, ScanError) as exc:
        raise UsageError("", str(exc)) from exc
    return Library.open(db, read_only=True), summary


def _failures(summary: IndexSummary, library: Library) -> Failures:
    """Why files could not be indexed: this run's reason, else the one the library recorded when an earlier run
    failed on the file (an unchanged file that failed is not tried again, so this run has none to give)."""
    failures = {path: f"failed to index: {reason}" for path, reason in library.store.failed_files()}
    return failures | {item.path: f"failed to index: {item.message}" for item in summary.failed}


def _library_setup(library: Library, evalset: EvalSet) -> dict[str, Any]:
    meta = library.store.index_meta()
    return {
        "model": None if meta is None else meta.model.name,
        "model_fingerprint": None if meta is None else meta.model.fingerprint,
        "text_embedder": None if meta is None else meta.embedder.name,
        "database": library.db_url,
        **evalset.to_json(),
    }


def _finish(
    kind: str,
    result: dict[str, Any],
    dataset: dict[str, Any],
    setup: dict[str, Any],
    summary: IndexSummary | None,
    output: Path,
    json_output: bool,
) -> None:
    from ..evaluation.report import REPORT_JSON, build_report, write_report

    report = build_report(kind, result, dataset=dataset, setup=setup)
    replaced = _report_kind(output / REPORT_JSON)
    if replaced is not None and replaced != kind:
        held = f"{shown(os.fspath(output))} held a {replaced} report"
        warn(f"{held}, replaced by this {kind} report (another -o keeps both)")
    if summary is not None:
        index_run = summary.to_json()
        kept = ("indexed", "unchanged", "touched", "window_count", "seconds", "failed")
        report["index_run"] = {name: index_run[name] for name in kept}
    files = write_report(report, output)
    if json_output:
        print_json(report)
    else:
        _print_report(report)
        out_console.print(f"report: {', '.join(shown(str(path)) for path in files)}", markup=False, soft_wrap=True)
    _warn_caveats(report)  # with --json too: a script's log of stderr names the files left out
    raise typer.Exit(EXIT_PARTIAL if report.get("skipped") else EXIT_OK)


def _report_kind(path: Path) -> str | None:
    """The kind of the evaluation report at `path`, if there is a readable one."""
    from ..evaluation.report import ReportError, load_report

    if not path.is_file():
        return None
    try:
        return load_report(path).get("kind")
    except (ReportError, OSError):
        return None


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    from ..evaluation.plots import DIRECTION_NAMES
    from ..evaluation.report import flat_metrics

    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    if report["kind"] == "retrieval":
        names = list(next(iter(next(iter(report["metrics"].values()), {}).values()), {}))
        for column in ("ranking", "direction", *names):
            table.add_column(column, justify="left" if column in ("ranking", "direction") else "right")
        for ranking, directions in report["metrics"].items():
            for direction, values in directions.items():
                cells = [_cell(values[name]) for name in names]
                table.add_row(ranking, DIRECTION_NAMES.get(direction, direction), *cells)
    else:
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in flat_metrics(report["metrics"]).items():
            table.add_row(name, _cell(value))
    out_console.print(table)
    for name, why in report.get("unavailable", {}).items():
        out_console.print(f"{name} not computed: {why}", markup=False, soft_wrap=True)


def _warn_caveats(report: dict[str, Any]) -> None:
    """What the numbers leave out or cannot count, each a warning on its own line."""
    from ..evaluation.report import unmatched_note

    if report.get("unmatched"):
        warn(unmatched_note(report["unmatched"]))
    for note in report.get("notes", []):
        warn(note)
    skipped = report.get("skipped", [])
    for item in skipped[:_SHOWN_SKIPPED]:
        warn(f"left out {shown(item['path'])}: {item['error']}")
    if len(skipped) > _SHOWN_SKIPPED:
        warn(f"... and {len(skipped) - _SHOWN_SKIPPED} more files left out (listed in the report)")


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------------------------
# classify


@app.command("classify")
@handle_errors
@fetches_model
@options_from(ScoringOptions, "scoring")
def classify_files(
    target: Annotated[
        str, typer.Argument(help="An audio file, or a folder (searched recursively).", parser=given_input)
    ],
    truth: Annotated[
        Path,
        typer.Option(
            "--truth", help="CSV of known labels: a file/filename/path and a label column ('a;b': multi-label, mAP)."
        ),
    ],
    labels: Annotated[
        Path | None,
        typer.Option("--labels", "-l", help="Candidate labels, one per line or a CSV (default: the truth's labels)."),
    ] = None,
    label_separator: Annotated[
        str | None,
        typer.Option(
            "--label-separator",
            help="What separates a truth cell's labels ('Bark,Dog': FSD50K's CSV). \\[default: ;]",
            show_default=False,
            parser=given_separator,
        ),
    ] = None,
    *,
    scoring: ScoringOptions,
    output: OutputOption = Path("eval-classify"),
    db: Annotated[str | None, typer.Option("--db", help="A library whose stored captions are reused.")] = None,
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    batch_size: BatchOption = None,
    threads: ThreadsOption = None,
    hidden: HiddenOption = False,
    quiet: QuietOption = False,
    json_output: ReportJsonOption = False,
) -> None:
    """Zero-shot classification against known labels: accuracy, top-k accuracy, per-class scores, confusion matrix.

    A truth that gives a file several labels (a;b) is scored as multi-label: mAP and each class's AP.

    Writes predictions.csv beside the report. Files indexed (and unchanged) by the same model reuse what the index
    holds, as `classify` does.

    Example: pengi-search eval classify esc50/audio --truth esc50/truth.csv -o runs/esc50
    """
    from ..classify import read_label_map, write_csv
    from ..evaluation.classification import check_truth_lists, evaluate_classification, separator_notes, truth_digest
    from ..evaluation.multilabel import evaluate_multi_label
    from ..model_dir import ModelDir
    from ..text_files import CSV_LIST_SEPARATOR
    from ..truth import read_truth
    from .classify import classify_targets

    apply_threads(threads)
    separator = label_separator or CSV_LIST_SEPARATOR
    known = read_truth(truth, separator)
    # A labels file may be a label map (what each label is scored as); the truth's labels are scored as they are,
    # taken from the truth as read: as a labels file, a truth not named .csv would give its lines as labels.
    label_list, texts = read_label_map(labels) if labels is not None else (known.labels, {})
    check_output_folder(output)
    inputs = audio_inputs([target], hidden=hidden)  # a missing file is said before the model is looked for
    files, unreadable = inputs  # unreadable files count as listed: left out with their reason, exit code 3
    check_truth_lists(known, truth, target, [*files, *(path for path, _ in unreadable)])
    settings = scoring.settings()
    model_dir = ModelDir.resolve(model)
    predictions, failures = classify_targets(
        inputs,
        label_list,
        settings,
        db=db,
        model_dir=model_dir,
        device=device,
        batch_size=batch_size,
        visible=show_progress(quiet, json_output),
        texts=texts,
        report_skips=False,  # listed under the table, with the report's other files left out
    )
    evaluate = evaluate_multi_label if known.multi_label else evaluate_classification  # the truth says which
    result = evaluate(predictions, known, label_list, [path for path, _ in failures])
    result["notes"] += [] if label_separator is not None else separator_notes(known)
    result["skipped"] = [{"path": path, "error": reason} for path, reason in failures]
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "predictions.csv", "w", newline="", encoding="utf-8") as out:
        write_csv(predictions, out, top=5)
    dataset = {
        "csv": os.path.abspath(truth),
        "sha256": truth_digest(truth, label_list, separator),
        "target": os.path.abspath(target),
        "labels": label_list,
        "multi_label": known.multi_label_reason,  # why the truth is scored as multi-label (None: it is not)
    }
    setup = {"model": model_dir.identity, "method": scoring.method.value, "template": scoring.template}
    if db is not None:  # whose stored captions or audio vectors were reused (each file's row names its source)
        setup["db"] = db
    if texts:
        setup["label_texts"] = texts
    if scoring.method == Method.text:  # captions not stored with these settings are decoded with them
        setup["text_embedder"] = scoring.text_embedder or "pengi"
        setup |= {"beam": scoring.beam, "max_len": scoring.max_len, "stop": scoring.stop.value}
    else:
        setup |= {"prompt": scoring.prompt, "loglik_score": scoring.loglik_score.value}
    _finish("classify", result, dataset, setup, None, output, json_output)


# ---------------------------------------------------------------------------------------------------------------
# compare


@app.command()
@handle_errors
def compare(
    first: Annotated[Path, typer.Argument(help="A report.json, or the folder that holds it (the baseline).")],
    second: Annotated[Path, typer.Argument(help="A report.json of the same kind, or its folder (the change).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the comparison as Markdown.")
    ] = None,
    json_output: CompareJsonOption = False,
) -> None:
    """Two reports of the same kind side by side: every metric, the difference, and what differs in the setup.

    Example: pengi-search eval compare runs/base runs/finetuned
    """
    from ..evaluation.report import REPORT_JSON, compare_reports, load_report, write_comparison

    # The folders `eval -o` wrote stand for their reports.
    first, second = (path / REPORT_JSON if path.is_dir() else path for path in (first, second))
    if output is not None:
        check_output_file(output, "Markdown")
    comparison = compare_reports(load_report(first), load_report(second), _report_names(first, second))
    if output is not None:
        write_comparison(comparison, output)
    if json_output:
        print_json(comparison)
    else:
        _print_comparison(comparison)
    for note in comparison["notes"]:  # with --json too, as every warning
        warn(note)


def _report_names(first: Path, second: Path) -> tuple[str, str]:
    """Short names for the two columns: the folder of a report.json, else the file name; "a" and "b" if equal."""
    from ..evaluation.report import REPORT_JSON

    names = tuple(p.parent.name if p.name == REPORT_JSON and p.parent.name else p.stem for p in (first, second))
    return (names[0], names[1]) if names[0] != names[1] else ("a", "b")


def _print_comparison(comparison: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    from ..evaluation.report import setting_text

    (name_a, _), (name_b, _) = comparison["reports"].items()
    for key, (was, now) in comparison["setup_differences"].items():
        out_console.print(f"{key}: {setting_text(was)} -> {setting_text(now)}", markup=False, soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in ("metric", name_a, name_b, "change"):  # the reports' folder names, as written
        table.add_column(Text(column), justify="left" if column == "metric" else "right")
    for row in comparison["rows"]:
        change = "–" if row["delta"] is None else f"{row['delta']:+.4f}"
        table.add_row(row["metric"], _cell(row["a"]), _cell(row["b"]), change)
    out_console.print(table)

"""`classify`: zero-shot classification of audio files and folders against the user's labels, with optional scores
against known labels.

The command reads its inputs, classifies every file, scores the result and shows it: one small function a step.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from ..choices import Device, LoglikScore, LongPrompt, Method, StopRule
from ..json_values import score_text
from ..pathnames import path_fields, shown
from ..prompts import TASK_PROMPTS
from ..units import count_text, for_count, named
from .common import (
    EXIT_OK,
    EXIT_PARTIAL,
    BeamOption,
    ComputeOptions,
    HiddenOption,
    LongPromptsOption,
    MaxLenOption,
    QuietOption,
    StopOption,
    UsageError,
    UsingOptions,
    apply_threads,
    check_output_file,
    err_console,
    given_input,
    given_prompt,
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
from .inputs import AudioInputs, audio_inputs, one_file_given
from .progress_bars import WindowProgress, progress_bar, show_progress

if TYPE_CHECKING:
    from ..classify import Classifier, ClassifySettings, Prediction
    from ..library import Library
    from ..model_dir import ModelDir
    from ..truth import Truth

Skipped = tuple[str, str]  # (path, reason): a file classify went on without


ClassifyJsonOption = json_option(
    "an object {method, labels, results, errors, metrics}, one result {path, label, score, top, window_count, source} "
    "per file."
)


@dataclass(frozen=True)
class Outcome:
    """What a classify run found: each file's prediction, the files that failed, and scores against the truth."""

    method: Method
    labels: list[str]
    predictions: list[Prediction]
    failures: list[Skipped]
    metrics: dict[str, Any] | None  # None without --truth

    def to_json(self, top: int) -> dict[str, Any]:
        return {
            "method": self.method,
            "labels": self.labels,
            "results": [p.to_json(top) for p in self.predictions],
            "errors": [{**path_fields(path), "error": reason} for path, reason in self.failures],
            "metrics": self.metrics,
        }


def _read_by_text_only(option: Any) -> Any:
    """A decoding option (`Annotated[type, typer.Option]`) whose help says that only --method text reads it, as
    --prompt's says loglik: --method loglik refuses it (`_refuse_the_other_methods_options`)."""
    info = copy.copy(option.__metadata__[0])
    info.help = f"text: {info.help[0].lower()}{info.help[1:]}"
    return Annotated[option.__origin__, info]


TextBeamOption = _read_by_text_only(BeamOption)
TextMaxLenOption = _read_by_text_only(MaxLenOption)
TextStopOption = _read_by_text_only(StopOption)


@dataclass(frozen=True)
class ScoringOptions:
    """How labels are scored: the options that make `classify.ClassifySettings` (same field names)."""

    method: Annotated[
        Method, typer.Option("--method", help="text: caption vs label embeddings (paper default); loglik: likelihood.")
    ] = Method.text
    template: Annotated[str, typer.Option("--template", help='Label text, e.g. "this is a sound of {label}".')] = (
        "{label}"
    )
    prompt: Annotated[
        str, typer.Option("--prompt", help="loglik: the prompt the label answers.", parser=given_prompt)
    ] = TASK_PROMPTS["sound_event"]
    loglik_score: Annotated[
        LoglikScore, typer.Option("--loglik-score", help="loglik: mean (per token, default) or total log-probability.")
    ] = LoglikScore.mean
    text_embedder: Annotated[
        str | None,
        typer.Option("--text-embedder", help="text: 'pengi' (default) or 'sentence-transformers:NAME'."),
    ] = None
    beam: TextBeamOption = 3
    max_len: TextMaxLenOption = 30
    stop: TextStopOption = StopRule.both
    long_prompts: LongPromptsOption = LongPrompt.cut

    def settings(self) -> ClassifySettings:
        """The classification settings; a template without its {label} placeholder is bad usage, as is an option
        that only the other method reads (`_refuse_the_other_methods_options`)."""
        from ..classify import ClassifySettings
        from ..embedders import EmbedderSpec

        self._refuse_the_other_methods_options()
        fields = dataclasses.asdict(self) | {"text_embedder": EmbedderSpec.parse(self.text_embedder)}
        try:
            return ClassifySettings(**fields)
        except ValueError as err:
            raise UsageError("", str(err)) from None

    def _refuse_the_other_methods_options(self) -> None:
        """An option that only the other method reads, given a value of its own, would change nothing without a
        word (`--beam 5 --method loglik`, `--prompt ...` without it): refused (exit 2), before any work."""
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        for method, (options, role) in _METHOD_OPTIONS.items():
            given = [name for name in options if method is not self.method and getattr(self, name) != defaults[name]]
            if given:
                option, other = "--" + given[0].replace("_", "-"), method.value
                raise UsageError(
                    option, f"is read by --method {other} only ({role}): leave it out, or use --method {other}"
                )


# The options only one method reads, and what they are to it.
_METHOD_OPTIONS = {
    Method.loglik: (("prompt", "loglik_score"), "how the labels' likelihood is scored"),
    Method.text: (("text_embedder", "beam", "max_len", "stop"), "how the captions it compares are made and embedded"),
}


@handle_errors
@fetches_model
@options_from(ScoringOptions, "scoring")
@options_from(UsingOptions, "using")
@options_from(ComputeOptions, "compute")
def classify(
    targets: Annotated[
        list[str], typer.Argument(help="Audio files or folders (searched recursively).", parser=given_input)
    ],
    labels: Annotated[Path, typer.Option("--labels", "-l", help="One label per line, or a CSV with a 'label' column.")],
    *,
    scoring: ScoringOptions,
    top: Annotated[int, typer.Option("--top", min=1, help="Labels shown per file.")] = 5,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="CSV file to write, one row per file (else several files or a folder print it on stdout).",
        ),
    ] = None,
    truth: Annotated[
        Path | None, typer.Option("--truth", help="CSV of known labels (file/filename/path, label): prints scores.")
    ] = None,
    using: UsingOptions,
    compute: ComputeOptions,
    hidden: HiddenOption = False,
    json_output: ClassifyJsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Zero-shot classification of audio files and folders against your labels.

    One file gives its ranked labels; several files or a folder, a CSV (one row per file). All the files are
    classified together, windows from all of them in each batch; a file reached twice (given, and inside a given
    folder) is classified once. Files already indexed (and unchanged) by the same model reuse their stored audio
    embeddings, and their stored captions when decoded as this run decodes (--beam, --max-len, --stop, --fast).

    Example: pengi-search classify recordings/ extra.wav --labels labels.txt --output predictions.csv --truth truth.csv
    """
    from ..model_dir import ModelDir

    apply_threads(compute.threads)
    label_list, texts, known = _read_inputs(labels, truth)
    if output is not None:
        check_output_file(output, "CSV")
    settings = scoring.settings()
    inputs = audio_inputs(targets, hidden=hidden)  # a missing file is said before the model is looked for
    if known is not None and truth is not None:
        check_truth_covers(known, truth, targets, inputs)
    predictions, failures = classify_targets(
        inputs,
        label_list,
        settings,
        db=using.db,
        model_dir=ModelDir.resolve(using.model),
        device=using.device,
        batch_size=compute.batch_size,
        fast=compute.fast,
        visible=show_progress(quiet, json_output),
        texts=texts,
    )
    metrics = None if known is None else _scored(predictions, known)
    outcome = Outcome(scoring.method, label_list, predictions, failures, metrics)
    if output is not None:
        _write_csv(outcome, output, top)
    if json_output:
        print_json(outcome.to_json(top))
    elif one_file_given(targets):  # a ranked table; anything more, a CSV
        _show_ranked(outcome, top)
    else:
        _show_csv(outcome, top, csv_written=output is not None)
    if metrics is not None:  # on stderr with --json too, as every warning: scripts read it there
        _warn_about_scores(metrics)
    if known is not None and truth is not None:  # after the scores, with the truth's other warning
        _warn_of_truth_labels_not_given(known, truth, predictions, label_list)
    raise typer.Exit(EXIT_PARTIAL if outcome.failures else EXIT_OK)


# ---------------------------------------------------------------------------------------------------------------
# Inputs: labels, truth, settings and files


def _read_inputs(labels: Path, truth: Path | None) -> tuple[list[str], dict[str, str], Truth | None]:
    """The labels, what each is scored as (a `train init` label map's `answer` column) and the truth: one label a
    file, the accuracy and per-class scores `classify` prints; `eval classify` measures a multi-label truth (mAP)."""
    from ..classify import read_label_map
    from ..truth import LabelsError, read_truth

    label_list, texts = read_label_map(labels)
    known = None if truth is None else read_truth(truth)
    if known is not None and known.multi_label:  # a cell of several labels, or a file on rows of other labels
        why = known.multi_label_reason
        raise LabelsError(truth, f"{why}: measure a multi-label truth (mAP) with `pengi-search eval classify`")
    return label_list, texts, known


def _warn_of_truth_labels_not_given(
    known: Truth, truth: Path, predictions: Sequence[Prediction], label_list: list[str]
) -> None:
    """The truth's labels of the files scored that the labels file lacks (another spelling, `Dog` for `dog`, or
    another set's labels): their files can never be classified right, which the accuracy alone would not say."""
    given = set(label_list)
    expected = (known.label_of(prediction.path) for prediction in predictions)
    missing = [label for label in dict.fromkeys(expected) if label is not None and label not in given]
    if missing:
        are = for_count(len(missing), "is", "are")
        said = f"{len(missing)} of the scored files' labels {are} not in the labels file, so those files count as wrong"
        warn(f"{shown(os.fspath(truth))}: {said}: {named(missing)}")


def check_truth_covers(known: Truth, truth: Path, targets: Sequence[str], inputs: AudioInputs) -> None:
    """A truth that lists none of the files the `targets` stand for (a truth of another set, a typo'd folder) would
    score nothing after classifying them all: refused before the model runs, as `eval classify` refuses it. Files
    found but unreadable count as listed: the run leaves them out with their reason (exit code 3)."""
    from ..evaluation.classification import check_truth_lists

    files, unreadable = inputs
    check_truth_lists(known, truth, targets, [*files, *(path for path, _ in unreadable)])


# ---------------------------------------------------------------------------------------------------------------
# Classifying


def classify_targets(
    inputs: AudioInputs,
    labels: list[str],
    settings: ClassifySettings,
    *,
    db: str | None,
    model_dir: ModelDir,
    device: Device,
    batch_size: int | None,
    visible: bool,
    fast: bool = False,
    texts: dict[str, str] | None = None,
    report_skips: bool = True,
) -> tuple[list[Prediction], list[Skipped]]:
    """Each audio file's prediction (`inputs`: the files that the paths given stand for, and those found but
    unreadable, as `inputs.audio_inputs` gives them) and the files that failed, reusing what an existing library
    holds (`eval classify` shares this). `report_skips`: say each failed file as it is found (`eval classify` lists
    them under its table instead, as its other kinds do)."""
    from ..classify import Classifier

    _warn_of_label_spellings(model_dir, labels, texts or {})
    files, failures = inputs
    for path, reason in failures:  # found but unreadable (a broken link, a folder that cannot be listed)
        if report_skips:
            report_skipped(path, reason)
    library = open_library(db)
    if library is not None and db is not None:
        _warn_if_built_by_another(library, model_dir)
    try:
        classifier = Classifier(
            labels,
            settings,
            model_dir=model_dir,
            library=library,
            device=device,
            batch_size=batch_size,
            fast=fast,
            texts=texts,
            notify=warn,
        )
        predictions, failed = _run_classifier(classifier, files, visible=visible, report_skips=report_skips)
    finally:
        if library is not None:
            library.close()
    return predictions, failures + failed


def _warn_of_label_spellings(model_dir: ModelDir, labels: Sequence[str], texts: dict[str, str]) -> None:
    """A model that `pengi-search train` wrote learnt its labels as words (`train init` teaches the label alarm_clock
    as "alarm clock", as its label map's `answer` column says): a label scored as written, underscores and all, is a
    text it never learnt, which costs accuracy without a word (0.08 against 0.19 on the smoke set's 31 labels)."""
    from trainer.recipes import answer_text

    if not model_dir.meta.get("trained"):
        return  # a released model: labels are the user's texts, as written
    spelled = [label for label in labels if texts.get(label, label) != answer_text(texts.get(label, label))]
    if spelled:
        some = ", ".join(spelled[:3]) + (", ..." if len(spelled) > 3 else "")
        warn(
            f"{count_text(len(spelled), 'label')} {for_count(len(spelled), 'is', 'are')} scored as written ({some}), "
            f"but this model was trained on labels as words ({answer_text(spelled[0])!r}): give --labels the label "
            "map that `train init` wrote (its labels.csv, whose answer column says how each label was taught)"
        )


def _warn_if_built_by_another(library: Any, model_dir: ModelDir) -> None:
    """The library given with --db, built by another model than this run's: nothing it holds is reused (its
    captions and audio embeddings are another model's), which the run's sources say file by file only."""
    from ..query_embedders import built_by

    meta = library.store.index_meta()
    if meta is not None and not built_by(library, model_dir):
        warn(
            # The run's model named as `similar` and `query` name it (`check_index_model`): by its folder, as given,
            # not by a fingerprint cut shorter than the library's beside it
            f"{library.name}: built with {meta.model}, not with the model at {model_dir.path}: nothing it holds is "
            "reused, every file is decoded (classify with the library's model to reuse it)"
        )


def open_library(db: str | None) -> Library | None:
    """The library to reuse, read-only: the one `--db` names (which must exist), else the default one if any.

    Classify never creates a library; without one, every file is decoded and described.
    """
    from ..db import library_exists
    from ..library import Library

    if db is None and not library_exists(None):
        return None
    return Library.open(db, read_only=True)


def _run_classifier(
    classifier: Classifier, files: list[str], *, visible: bool, report_skips: bool
) -> tuple[list[Prediction], list[Skipped]]:
    """Classify the files (those the model must hear, together); a file that cannot be decoded is skipped (and
    reported, with `report_skips`)."""
    from ..classify import Failure

    predictions, failures = [], []
    with progress_bar() as bar:
        for outcome in classifier.classify_files(files, WindowProgress(bar, "classifying", visible=visible)):
            if isinstance(outcome, Failure):
                failures.append((outcome.path, outcome.reason))
                if report_skips:
                    report_skipped(outcome.path, outcome.reason)
            else:
                predictions.append(outcome)
    return predictions, failures


def _scored(predictions: Sequence[Prediction], known: Truth) -> dict[str, Any]:
    """The scores against the truth, with how far another order of tied labels moves them, as `eval classify`
    says it (`ties`, `top_ties`, `notes`)."""
    from ..classify import evaluate
    from ..evaluation.classification import classify_truth_ties

    metrics = evaluate(predictions, known)
    return metrics | classify_truth_ties(predictions, known, metrics["accuracy"])


# ---------------------------------------------------------------------------------------------------------------
# Output


def _write_csv(outcome: Outcome, output: Path, top: int) -> None:
    from ..classify import write_csv
    from ..written_aside import written_aside

    # Written aside, as every file a command writes: a full disk leaves the previous CSV, not half of a new one.
    with written_aside(output) as partial, open(partial, "w", newline="", encoding="utf-8") as out:
        write_csv(outcome.predictions, out, top)


def _show_csv(outcome: Outcome, top: int, *, csv_written: bool) -> None:
    """The CSV on stdout unless --output took it; the scores then go to stderr, to keep the CSV clean."""
    from ..classify import write_csv

    if not csv_written:
        write_csv(outcome.predictions, sys.stdout, top)
    if outcome.metrics is not None:
        _print_metrics(outcome.metrics, out_console if csv_written else err_console)


def _show_ranked(outcome: Outcome, top: int) -> None:
    for prediction in outcome.predictions:
        _print_ranked(prediction, top)
    if outcome.metrics is not None:
        _print_metrics(outcome.metrics, out_console)


def _print_ranked(prediction: Prediction, top: int) -> None:
    windows = count_text(prediction.window_count, "window")
    out_console.print(Text.assemble((shown(prediction.path), "bold"), f"  ({windows})"), soft_wrap=True)
    table = plain_table()
    table.add_column("#", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right")
    for rank, (label, score) in enumerate(prediction.ranked[:top], 1):
        table.add_row(str(rank), Text(label), score_text(score))
    out_console.print(table)


def _print_metrics(metrics: dict[str, Any], console: Any) -> None:
    if metrics["accuracy"] is None:  # nothing scored, which `_warn_about_scores` says
        return
    console.print(f"accuracy {metrics['accuracy']:.4f} ({metrics['correct']}/{metrics['files']} files)")
    table = plain_table()
    for name in ("label", "precision", "recall", "f1", "support"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for label, m in metrics["per_class"].items():
        table.add_row(Text(label), f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)


def _warn_about_scores(metrics: dict[str, Any]) -> None:
    """The classified files the truth does not list, and how far tied labels could move the scores, as `eval
    classify` warns of them: on stderr, whichever console the scores go to (--json too, whose `metrics.unmatched`
    and `metrics.notes` hold them)."""
    from ..evaluation.report import unmatched_note

    if metrics["accuracy"] is None:
        warn("no classified file is in the truth file, so nothing is scored")
    elif metrics["unmatched"]:
        warn(unmatched_note(metrics["unmatched"]))
    for note in metrics["notes"]:
        warn(note)

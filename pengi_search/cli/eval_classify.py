"""`eval classify`: zero-shot classification of files or a folder scored against a truth CSV (one label a file:
accuracy, top-k, per class and the confusion matrix; several: mAP), as `classify --truth` classifies them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..choices import Device, Method
from .classify import ScoringOptions, open_library
from .common import (
    DeviceOption,
    ExactComputeOptions,
    HiddenOption,
    ModelOption,
    QuietOption,
    apply_threads,
    check_output_folder,
    given_db,
    given_input,
    given_separator,
    handle_errors,
    options_from,
)
from .eval_report import OutputOption, ReportJsonOption, finish
from .first_use import fetches_model
from .inputs import audio_inputs
from .progress_bars import show_progress


@handle_errors
@fetches_model
@options_from(ScoringOptions, "scoring")
@options_from(ExactComputeOptions, "compute")
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
    db: Annotated[
        str | None, typer.Option("--db", help="A library whose stored captions are reused.", parser=given_db)
    ] = None,
    model: ModelOption = None,
    device: DeviceOption = Device.auto,
    compute: ExactComputeOptions,
    hidden: HiddenOption = False,
    quiet: QuietOption = False,
    json_output: ReportJsonOption = False,
) -> None:
    """Zero-shot classification against known labels: accuracy, top-k accuracy, per-class scores, confusion matrix.

    A truth that gives a file several labels (a;b) is scored as multi-label: mAP and each class's AP.

    Writes predictions.csv beside the report (and scores.npz, every file's score for every label, for a
    multi-label truth). Files indexed (and unchanged) by the same model reuse what the index
    holds, as `classify` does.

    Example: pengi-search eval classify esc50/audio --truth esc50/truth.csv -o runs/esc50
    """
    from ..classify import read_label_map, write_csv
    from ..evaluation.classification import evaluate_classification, separator_notes, truth_digest
    from ..evaluation.multilabel import SCORES_NPZ, evaluate_multi_label, score_matrix, write_scores
    from ..hashing import file_sha256
    from ..model_dir import ModelDir
    from ..text_files import CSV_LIST_SEPARATOR
    from ..truth import read_truth
    from .classify import check_truth_covers, classify_targets

    apply_threads(compute.threads)
    separator = label_separator or CSV_LIST_SEPARATOR
    known = read_truth(truth, separator)
    # A labels file may be a label map (what each label is scored as); the truth's labels are scored as they are,
    # taken from the truth as read: as a labels file, a truth not named .csv would give its lines as labels.
    label_list, texts = read_label_map(labels) if labels is not None else (known.labels, {})
    check_output_folder(output)
    inputs = audio_inputs([target], hidden=hidden)  # a missing file is said before the model is looked for
    check_truth_covers(known, truth, [target], inputs)
    settings = scoring.settings()
    model_dir = ModelDir.resolve(model)
    predictions, failures = classify_targets(
        inputs,
        label_list,
        settings,
        db=db,
        model_dir=model_dir,
        device=device,
        batch_size=compute.batch_size,
        visible=show_progress(quiet, json_output),
        texts=texts,
        report_skips=False,  # listed under the table, with the report's other files left out
    )
    failed = [path for path, _ in failures]
    # The truth says which; a multi-label one keeps every file's score for every label beside the report.
    matrix = score_matrix(predictions, known, label_list) if known.multi_label else None
    if matrix is not None:
        result = evaluate_multi_label(predictions, known, label_list, failed, matrix=matrix)
    else:
        result = evaluate_classification(predictions, known, label_list, failed)
    result["notes"] += [] if label_separator is not None else separator_notes(known)
    result["skipped"] = [{"path": path, "error": reason} for path, reason in failures]
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "predictions.csv", "w", newline="", encoding="utf-8") as out:
        write_csv(predictions, out, top=5)
    if matrix is not None:
        write_scores(matrix, output)
    else:  # a multi-label run's scores left in the folder would read as this report's
        (output / SCORES_NPZ).unlink(missing_ok=True)
    dataset = {
        "csv": os.path.abspath(truth),
        "sha256": truth_digest(truth, label_list, separator),  # of the truth and the candidate labels: the task
        "truth_sha256": file_sha256(truth),  # of the CSV alone, as the other kinds' sha256
        "label_separator": separator,  # how its cells were read
        "audio_sha256": _audio_sha256(inputs[0], target, db),
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
    finish("classify", result, dataset, setup, None, output, json_output)


def _audio_sha256(files: list[str], target: str, db: str | None) -> str:
    """The digest of the files classified (`datasets.audio_digest`), each under its name in the set; the library the
    run reused (`--db`, else the default one) gives the sha256 of each file it indexed that is unchanged since, so
    that a large set is not read again for it."""
    from ..evaluation.datasets import audio_digest, indexed_sha256

    named = [(_name_under(path, target), path) for path in files]
    library = open_library(db)
    if library is None:
        return audio_digest(named)
    with library:
        return audio_digest(named, indexed_sha256(library.store, target))


def _name_under(path: str, target: str) -> str:
    """A file's name in the set: its path inside the folder given (the file's own name for a file given), the same
    wherever the command was run from."""
    if not os.path.isdir(target):
        return os.path.basename(path)
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(target))).as_posix()

"""Zero-shot classification scored against a multi-label truth (a file may have several labels, as in FSD50K and
AudioSet): mAP, as the Pengi paper reports those sets, from every file's score for every candidate label.
The report lists each file's best labels; every score goes to a compact side file, `scores.npz` (`write_scores`).

- Each candidate label is a class. Its average precision ranks the evaluated files by their score for it, the files
  that have it being the positives (`metrics.average_precision`, scikit-learn's definition; tied scores enter the
  ranking together).
- mAP is the mean over the classes that have at least one positive file: a class without one has no recall to
  measure, so it is left out of the mean (its AP is None, and a note names it).
- top-1 precision: the fraction of files whose best-scored label is one of theirs (no threshold to choose).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classify import Prediction
from ..truth import Truth
from ..units import count_text, for_count, named
from ..written_aside import written_aside
from .classification import label_notes, label_span, label_tie_notes, missed_notes, not_classified
from .metrics import average_precision, mean
from .ties import tie_bounds

TOP = 5  # labels a file's entry in the report lists, best first, as predictions.csv does
SCORES_NPZ = "scores.npz"  # every file's score for every candidate label, beside report.json


@dataclass(frozen=True)
class ScoreMatrix:
    """Every evaluated file's score for every candidate label, and which of them are its own: what AP ranks."""

    paths: list[str]  # the files the truth lists, in the predictions' order: the rows
    labels: list[str]  # the candidate labels: the columns
    scores: np.ndarray  # (files, labels) float64, as the model scored them
    positive: np.ndarray  # (files, labels) bool: whether the truth gives the file the label


def score_matrix(predictions: Sequence[Prediction], truth: Truth, labels: Sequence[str]) -> ScoreMatrix:
    """The scores of the files the truth lists (the others are not evaluated), one row a file. A prediction cut to
    its best labels cannot be ranked for every class: ValueError."""
    listed = _listed(predictions, truth)
    # One (files, labels) array, each class a column: not a pass over the files' lists for each class.
    scores = np.zeros((len(listed), len(labels)), dtype=np.float64)
    for row, (_, prediction) in enumerate(listed):
        scores[row] = _scores(prediction, labels)
    positive = _positives([expected for expected, _ in listed], labels)
    return ScoreMatrix([p.path for _, p in listed], list(labels), scores, positive)


def write_scores(matrix: ScoreMatrix, folder: Path) -> Path:
    """Write `scores.npz` into `folder` (NumPy's compressed archive: `paths`, `labels`, `scores` and `positive`, as
    `ScoreMatrix` holds them), from which every AP can be recomputed; returns its path. The report keeps each file's
    best labels only: 20,000 files x 527 classes (AudioSet) would be hundreds of MB of JSON."""
    path = folder / SCORES_NPZ
    with written_aside(path, folder / f".{SCORES_NPZ}.partial.npz") as partial:  # savez adds .npz to a bare name
        np.savez_compressed(
            partial,
            paths=np.array(matrix.paths, dtype=str),
            labels=np.array(matrix.labels, dtype=str),
            scores=matrix.scores,
            positive=matrix.positive,
        )
    return path


def evaluate_multi_label(
    predictions: Sequence[Prediction],
    truth: Truth,
    labels: Sequence[str],
    failed: Sequence[str] = (),
    *,
    matrix: ScoreMatrix | None = None,
) -> dict[str, Any]:
    """mAP and per-class AP over the files the truth lists, top-1 precision, and each file's truth and best labels
    (every score is in `matrix`, `score_matrix`'s, built here when not given, for `write_scores`). `failed`: the
    files that could not be classified (left out with their reason, so not among the truth's files missed)."""
    missed = not_classified(truth, [*(p.path for p in predictions), *failed])
    known = [(truth.labels_of(p.path), p) for p in predictions]
    listed = [(expected, p) for expected, p in known if expected is not None]
    matrix = matrix if matrix is not None else score_matrix(predictions, truth, labels)
    per_class = {}
    for column, label in enumerate(labels):
        ap = average_precision(matrix.scores[:, column], matrix.positive[:, column]) if listed else None
        per_class[label] = {"ap": ap, "positives": int(matrix.positive[:, column].sum())}
    scored = [label for label in labels if per_class[label]["ap"] is not None]
    true_labels = [label for expected, _ in listed for label in expected]
    no_positive = [label for label in labels if label not in scored]
    metrics = {
        "mAP": mean([per_class[label]["ap"] for label in scored]),
        "top-1 precision": mean([1.0 if p.label in expected else 0.0 for expected, p in listed]),
    }
    # mAP ranks files by their score for a label, tied files together: the order of tied labels cannot move it.
    ties = tie_bounds([label_span(p, set(expected)) for expected, p in listed], {"top-1 precision": 1}, "files")
    return {
        "multi_label": True,
        "metrics": metrics,
        "ties": ties,
        "notes": [
            *label_notes(true_labels, labels, _left_out),
            *_unscored_notes(no_positive),
            *label_tie_notes(metrics, ties),
            *missed_notes(truth, missed),
        ],
        "evaluated": {"files": len(listed), "classes": len(scored)},
        "per_class": per_class,
        "unmatched": [p.path for expected, p in known if expected is None],
        "not_classified": missed,
        "files": [_file_entry(expected, p) for expected, p in listed],
    }


def _listed(predictions: Sequence[Prediction], truth: Truth) -> list[tuple[tuple[str, ...], Prediction]]:
    """The predictions of the files the truth lists, each with its true labels."""
    known = [(truth.labels_of(p.path), p) for p in predictions]
    return [(expected, p) for expected, p in known if expected is not None]


def _file_entry(expected: tuple[str, ...], prediction: Prediction) -> dict[str, Any]:
    """A file in the report: its truth and its best labels with their exact scores (all of them: scores.npz)."""
    top = [{"label": label, "score": score} for label, score in prediction.ranked[:TOP]]
    return {
        "path": prediction.path,
        "truth": list(expected),
        "predicted": prediction.label,
        "top": top,
        "source": prediction.source,
    }


def _scores(prediction: Prediction, labels: Sequence[str]) -> list[float]:
    """The file's score for each candidate label, in the candidates' order. AP ranks every file for every class,
    so a prediction cut to its best labels cannot be scored: ValueError."""
    scores = dict(prediction.ranked)
    lacking = [label for label in labels if label not in scores]
    if lacking:
        raise ValueError(f"the prediction of {prediction.path} has no score for {named(lacking)}")
    return [scores[label] for label in labels]


def _positives(expected: Sequence[tuple[str, ...]], labels: Sequence[str]) -> np.ndarray:
    """(files, labels) booleans: whether each file has each candidate label."""
    column = {label: j for j, label in enumerate(labels)}
    found = np.zeros((len(expected), len(labels)), dtype=bool)
    for row, own in enumerate(expected):
        found[row, [column[label] for label in own if label in column]] = True
    return found


def _left_out(positives: int) -> str:
    """What a true label that no candidate matches costs here: its positives are in no class's AP."""
    return f"{count_text(positives, 'positive')} {for_count(positives, 'is', 'are')} left out of mAP"


def _unscored_notes(labels: Sequence[str]) -> list[str]:
    """The note for the candidate labels that no evaluated file has (none when every one has a file)."""
    if not labels:
        return []
    have = for_count(len(labels), "has", "have")
    return [
        f"{count_text(len(labels), 'candidate label')} {have} no positive file, so no AP, left out of mAP: "
        f"{named(labels)}"
    ]

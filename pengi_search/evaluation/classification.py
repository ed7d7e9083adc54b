"""Zero-shot classification scored against known labels: `classify --truth`'s report, top-k accuracy and the
confusion matrix (rows: true label, columns: predicted label)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..classify import Prediction, evaluate
from ..errors import UsageError
from ..hashing import sha256_hasher
from ..pathnames import shown
from ..text_files import CSV_LIST_SEPARATOR
from ..truth import Truth, several_files
from ..units import count_text, for_count, named
from .metrics import confusion_matrix, mean, top_k_accuracy
from .ties import Span, rank_span, ranks_field, tie_bounds, tie_notes

TOP_KS = (3, 5)  # top-1 is the accuracy
# What each report gives in the order of tied labels by name, which a tie of best labels could change (a plural).
EVAL_SCORES = "per-class scores, macro F1 and the confusion matrix"
CLASSIFY_SCORES = "per-class scores"


def evaluate_classification(
    predictions: Sequence[Prediction], truth: Truth, labels: Sequence[str], failed: Sequence[str] = ()
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, macro F1, top-k accuracy and the confusion matrix; `failed`: the
    files that could not be classified (left out with their reason, so not among the truth's files missed)."""
    base = evaluate(predictions, truth)
    missed = not_classified(truth, [*(p.path for p in predictions), *failed])
    scored = truth_pairs(predictions, truth)
    pairs = scored.pairs
    ranks = [_rank_of(expected, p) for expected, p in pairs]
    # Labels the truth has but the candidates lack can never be predicted; they still get a row.
    classes = list(labels) + sorted({expected for expected, _ in pairs} - set(labels))
    metrics: dict[str, Any] = {"accuracy": base["accuracy"]}
    # top-k with k at least the number of labels would count every file (whose label is a candidate) as right.
    top_ks = {f"top-{k}": k for k in TOP_KS if k < len(labels)}
    metrics.update({name: top_k_accuracy(ranks, k) for name, k in top_ks.items()})
    metrics["macro_f1"] = mean([c["f1"] for c in base["per_class"].values()])
    ties = label_ties(scored, classes, metrics, {"accuracy": 1, **top_ks}, EVAL_SCORES)
    return {
        "metrics": metrics,
        "ties": ties["ties"],
        "notes": [
            *label_notes([expected for expected, _ in pairs], labels),
            *ties["notes"],
            *missed_notes(truth, missed),
        ],
        "evaluated": {"files": base["files"]},  # which part of the set: what `compare` holds the two to
        "correct": base["correct"],
        "per_class": base["per_class"],
        "top_ties": ties["top_ties"],
        "confusion": {
            "classes": classes,
            "counts": confusion_matrix([(expected, p.label) for expected, p in pairs], classes),
        },
        "unmatched": base["unmatched"],
        "not_classified": missed,
        "files": [
            {
                "path": p.path,
                "truth": expected,
                "predicted": p.label,
                "rank": rank,
                **ranks_field(span),
                **tied_best_field(p),
                "source": p.source,
            }
            for (expected, p), rank, span in zip(pairs, ranks, scored.spans, strict=True)
        ],
    }


@dataclass(frozen=True)
class TruthPairs:
    """The predictions of the files a single-label truth lists (the others are not scored), each with the file's true
    label, and where that label could rank under any order of the labels tied with it (`label_span`)."""

    pairs: list[tuple[str, Prediction]]
    spans: list[Span | None]


def truth_pairs(predictions: Sequence[Prediction], truth: Truth) -> TruthPairs:
    """The scored files of `predictions` (`TruthPairs`): one pairing for `eval classify` and `classify --truth`."""
    known = [(truth.label_of(p.path), p) for p in predictions]
    pairs = [(expected, p) for expected, p in known if expected is not None]
    return TruthPairs(pairs, [label_span(p, {expected}) for expected, p in pairs])


def label_ties(
    scored: TruthPairs,
    classes: Sequence[str],
    metrics: dict[str, Any],
    cuts: dict[str, int],
    scores: str,
) -> dict[str, Any]:
    """How far another order of tied labels moves a report's numbers: `ties`, the bounds of each metric of `cuts`
    (`metrics` holds its value in the order by name); `top_ties`, the files whose best labels tie and the recalls
    they move (`best_label_ties`); and the `notes` that say it, `scores` naming what the report gives in the order
    by name (`EVAL_SCORES`, `CLASSIFY_SCORES`). One account for `eval classify` and `classify --truth`."""
    ties = tie_bounds(scored.spans, cuts, "files")
    top_ties = best_label_ties(scored, classes)
    notes = [*label_tie_notes(metrics, ties), *best_label_tie_notes(top_ties, scores)]
    return {"ties": ties, "top_ties": top_ties, "notes": notes}


def classify_truth_ties(predictions: Sequence[Prediction], truth: Truth, accuracy: float | None) -> dict[str, Any]:
    """`classify --truth`'s tie fields, as `eval classify` gives them (`label_ties`) for the numbers it prints: the
    accuracy (it gives no top-k) and the per-class scores."""
    scored = truth_pairs(predictions, truth)
    classes = sorted({expected for expected, _ in scored.pairs})
    return label_ties(scored, classes, {"accuracy": accuracy}, {"accuracy": 1}, CLASSIFY_SCORES)


def label_span(prediction: Prediction, relevant: set[str]) -> Span | None:
    """The best and the worst rank that the first of the `relevant` labels could have in the prediction under any
    order of the labels that tie with it (`classify.rank` orders them by name); None when none is a candidate."""
    return rank_span(prediction.tie_groups(), relevant)


def best_label_ties(scored: TruthPairs, classes: Sequence[str]) -> dict[str, Any]:
    """What tied best labels leave uncertain in the per-class scores and the confusion matrix, which take each
    file's best label in the order by name: how many files' best label ties with another (`files`), and each true
    label whose recall another order moves, with the files that move it and its lowest and highest value (`recall`;
    a class's recall is the accuracy over its files, so bounded as the accuracy is). Precision has no such bounds:
    a tie moves a file from one predicted class to another, so the classes' bounds are not independent."""
    by_class: dict[str, list[Span | None]] = {label: [] for label in classes}
    for (expected, _), span in zip(scored.pairs, scored.spans, strict=True):  # one pass: hundreds of classes
        by_class[expected].append(span)
    recall = {}
    for label, own in by_class.items():
        bounds = tie_bounds(own, {"recall": 1}, "files")["recall"]
        if bounds["files"]:
            recall[label] = bounds
    return {"files": sum(len(p.tied_best) > 1 for _, p in scored.pairs), "recall": recall}


def tied_best_field(prediction: Prediction) -> dict[str, list[str]]:
    """What a file's row of the report adds where its best label ties: `tied_best`, the labels any order of the tie
    could predict (by name, the first is predicted); nothing otherwise."""
    best = prediction.tied_best
    return {"tied_best": best} if len(best) > 1 else {}


def best_label_tie_notes(top_ties: dict[str, Any], scores: str) -> list[str]:
    """The note for files whose best labels tie (none when none does): the per-class numbers (`scores` names those
    the report gives) are those of one order, and how far another moves each recall that it can."""
    files = top_ties["files"]
    if not files:
        return []
    note = (
        f"tied labels ordered by name: {count_text(files, 'file')} {for_count(files, 'has', 'have')} tied best labels, "
        f"so {scores} are those of this order"
    )
    moved = [f"{b['lowest']:.4f} to {b['highest']:.4f} for {label!r}" for label, b in top_ties["recall"].items()]
    return [note + (f"; another order gives recall {', '.join(moved)}" if moved else "")]


def label_tie_notes(metrics: dict[str, Any], ties: dict[str, dict[str, Any]]) -> list[str]:
    """The notes for the metrics (accuracy, top-k; top-1 precision) that another order of tied labels would change."""
    return tie_notes("tied labels ordered by name", metrics, ties, ("file", "files"))


def not_classified(truth: Truth, reached: Sequence[str]) -> list[str]:
    """The files the truth lists (absolute paths) that none of the files `reached` is: scores over the others
    leave them out, a truth of a whole set measured on part of it, or files missing from the disk."""
    matched = {truth.entry_of(path) for path in reached}
    return [path for path in truth.by_path if path not in matched]


def check_truth_lists(truth: Truth, truth_file: Path, targets: Sequence[str], reached: Sequence[str]) -> None:
    """A truth file that lists none of the files to classify (`reached`: those the paths `targets` stand for,
    readable or not) would measure nothing (a report of dashes, exit 0): refused (UsageError) before the model runs,
    as is one that lists a name without extension that several of them have (64760.wav, 64760.flac). Files that
    cannot be read count as listed: the run leaves them out with their reason (exit code 3)."""
    if not any(truth.entry_of(path) is not None for path in reached):
        given = f"of {shown(targets[0])}" if len(targets) == 1 else "given"
        raise UsageError(
            truth_file,
            f"lists none of the {count_text(len(reached), 'audio file')} {given} "
            "(its paths are relative to its own folder; a bare file name matches a file of that name, "
            "a path with folders one whose path ends with it)",
        )
    clash = truth.ambiguous(reached)
    if clash is not None:  # scoring both under one truth would count one listed file twice
        raise UsageError(truth_file, several_files(*clash))


def truth_digest(truth_file: Path, labels: Sequence[str], separator: str = CSV_LIST_SEPARATOR) -> str:
    """What was measured: the truth file, the candidate labels (another label set is another task) and, where it is
    not the default, the separator of a cell's labels (which makes other truths of the same file)."""
    digest = sha256_hasher(truth_file)
    digest.update(b"\0" + "\n".join(labels).encode("utf-8"))
    if separator != CSV_LIST_SEPARATOR:  # the digests of earlier reports stand
        digest.update(b"\0" + separator.encode("utf-8"))
    return digest.hexdigest()


def separator_notes(truth: Truth) -> list[str]:
    """The note for true labels that hold a comma, read with the default separator: most likely a list of labels
    as FSD50K's CSV writes them ("Bark,Dog"), each such list then scored as one class (none when there are none)."""
    joined = [label for label in truth.labels if "," in label]
    if not joined:
        return []
    hold = for_count(len(joined), "holds", "hold")
    return [
        f"{count_text(len(joined), 'true label')} {hold} ',' ({named(joined)}): a cell of labels separated by ',' "
        "(FSD50K's CSV) is read as several labels with --label-separator ','"
    ]


def missed_notes(truth: Truth, missed: Sequence[str]) -> list[str]:
    """The note for the truth's files that were not classified (none when there are none), named as the truth CSV
    spells them, where the user looks them up (`not_classified` keeps their paths)."""
    if not missed:
        return []
    were = for_count(len(missed), "was", "were")
    listed = [truth.as_listed(path) for path in missed]
    return [f"{count_text(len(missed), 'file')} the truth lists {were} not classified, so not scored: {named(listed)}"]


def _rank_of(label: str, prediction: Prediction) -> int | None:
    """Where the true label is among the prediction's ranked labels (from 1), None when it is not a candidate."""
    return next((rank for rank, (name, _) in enumerate(prediction.ranked, 1) if name == label), None)


def label_notes(
    expected: Sequence[str], candidates: Sequence[str], cost: Callable[[int], str] | None = None
) -> list[str]:
    """What makes files count as wrong whatever the model says, from the true labels of the evaluated files (one per
    file, or each of a file's several) and the candidate labels. Labels are compared exactly, so a true label that
    differs from a candidate only in case, spaces, "_" or "-" is most likely a mistake: each is named with its
    candidate. Other true labels that are not candidates (a deliberate subset, often) share one note, as do true
    labels that differ from each other only so (two classes where the truth meant one). `cost`: what such a label's
    `count` files lose (default: they count as wrong, as one label a file does)."""
    cost = cost or _wrong
    files = Counter(expected)
    near: dict[str, str] = {}
    for candidate in candidates:
        near.setdefault(_loose(candidate), candidate)
    notes, absent = [], []
    for label, count in files.items():
        if label in candidates:
            continue
        if _loose(label) in near:
            notes.append(
                f"true label {label!r} is not a candidate label but {near[_loose(label)]!r} is: labels are compared "
                f"exactly, so its {cost(count)}"
            )
        else:
            absent.append(label)
    if absent:
        count = sum(files[label] for label in absent)
        are_not = for_count(len(absent), "is not a candidate label", "are not candidate labels")
        notes.append(f"{count_text(len(absent), 'true label')} {are_not}, so {cost(count)}: {named(absent)}")
    spellings: dict[str, list[str]] = {}
    for label in files:
        spellings.setdefault(_loose(label), []).append(label)
    for same in spellings.values():
        if len(same) > 1:
            notes.append(f"true labels {', '.join(map(repr, same))} differ only in case or spacing: counted apart")
    return notes


def _wrong(files: int) -> str:
    """What a true label that no candidate matches costs: `1 file counts as wrong`, `2 files count as wrong`."""
    return f"{count_text(files, 'file')} {for_count(files, 'counts', 'count')} as wrong"


def _loose(label: str) -> str:
    """A label without what spelling varies in: case, and spaces, "_" and "-" between its words."""
    return re.sub(r"[\s_-]+", " ", label.casefold()).strip()

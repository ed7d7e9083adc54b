"""Zero-shot classification scored against known labels: `classify --truth`'s report, top-k accuracy and the
confusion matrix (rows: true label, columns: predicted label)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..classify import Prediction, Truth, evaluate
from .metrics import confusion_matrix, mean, top_k_accuracy

TOP_KS = (3, 5)  # top-1 is the accuracy


def evaluate_classification(predictions: Sequence[Prediction], truth: Truth, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, macro F1, top-k accuracy and the confusion matrix."""
    base = evaluate(predictions, truth)
    known = [(truth.label_of(p.path), p) for p in predictions]
    pairs = [(expected, p) for expected, p in known if expected is not None]
    ranks = [_rank_of(expected, p) for expected, p in pairs]
    # Labels the truth has but the candidates lack can never be predicted; they still get a row.
    classes = list(labels) + sorted({expected for expected, _ in pairs} - set(labels))
    metrics: dict[str, Any] = {"accuracy": base["accuracy"]}
    # top-k with k at least the number of labels would count every file (whose label is a candidate) as right.
    metrics.update({f"top-{k}": top_k_accuracy(ranks, k) for k in TOP_KS if k < len(labels)})
    metrics["macro_f1"] = mean([c["f1"] for c in base["per_class"].values()])
    return {
        "metrics": metrics,
        "evaluated": {"files": base["files"], "correct": base["correct"]},
        "per_class": base["per_class"],
        "confusion": {
            "classes": classes,
            "counts": confusion_matrix([(expected, p.label) for expected, p in pairs], classes),
        },
        "unmatched": base["unmatched"],
        "files": [
            {"file": p.path, "truth": expected, "predicted": p.label, "rank": rank}
            for (expected, p), rank in zip(pairs, ranks, strict=True)
        ],
    }


def _rank_of(label: str, prediction: Prediction) -> int | None:
    """Where the true label is among the prediction's ranked labels (from 1), None when it is not a candidate."""
    return next((rank for rank, (name, _) in enumerate(prediction.ranked, 1) if name == label), None)

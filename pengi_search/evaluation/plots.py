"""PNG figures of a report: the recall-at-k curves of a retrieval evaluation, the confusion matrix of a
classification. They need matplotlib (`pip install 'pengi-search[eval]'`); without it a report has no figures and
says so. Figures are drawn on `matplotlib.figure.Figure` directly: no pyplot state, no display needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RECALL_PLOT = "recall_at_k.png"
CONFUSION_PLOT = "confusion.png"
NO_MATPLOTLIB = "PNG plots need matplotlib: pip install 'pengi-search[eval]'"
DIRECTION_NAMES = {"text_to_audio": "text → audio", "audio_to_text": "audio → text"}


def draw(report: dict[str, Any], folder: Path) -> tuple[list[str], str | None]:
    """The figures that help this report, written into `folder`: (file names, why there are none or None)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return [], NO_MATPLOTLIB
    if report["kind"] == "retrieval" and report.get("curves"):
        _recall_curves(Figure, report["curves"], folder / RECALL_PLOT)
        return [RECALL_PLOT], None
    if report["kind"] == "classify" and report.get("confusion", {}).get("classes"):
        _confusion(Figure, report["confusion"], folder / CONFUSION_PLOT)
        return [CONFUSION_PLOT], None
    return [], None


def _recall_curves(figure_class: Any, curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    figure = figure_class(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for ranking, directions in curves.items():
        for direction, values in directions.items():
            ks = range(1, len(values) + 1)
            axes.plot(ks, values, marker="o", label=f"{ranking}, {DIRECTION_NAMES.get(direction, direction)}")
    axes.set(xlabel="k", ylabel="recall at k", ylim=(0, 1.02), title="Recall at k")
    axes.set_xticks(range(1, 1 + max(len(v) for d in curves.values() for v in d.values())))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=120)


def _confusion(figure_class: Any, confusion: dict[str, Any], path: Path) -> None:
    classes, counts = confusion["classes"], confusion["counts"]
    side = min(4 + 0.35 * len(classes), 30)  # readable labels up to ~80 classes
    figure = figure_class(figsize=(side, side), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8, label="files")
    axes.set_xticks(range(len(classes)), classes, rotation=90, fontsize=8)
    axes.set_yticks(range(len(classes)), classes, fontsize=8)
    axes.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    if len(classes) <= 30:  # counts in the cells while they still fit
        peak = max((max(row) for row in counts), default=0)
        for i, row in enumerate(counts):
            for j, value in enumerate(row):
                if value:
                    color = "white" if value > peak / 2 else "black"
                    axes.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    figure.savefig(path, dpi=120)

"""How far ties move an evaluation's numbers. Results that score within `pengi_search.ties.TIE_TOLERANCE` of each
other (files or captions in retrieval, labels in classification) are ordered by a fixed key, their path or name
(`pengi_search.ties.tied_groups`), so that a number is that of one real order, whatever the order of the CSV's
rows, the library's windows or the labels file. A metric that cuts the ranking at a place (R@k; accuracy and top-k,
the true label among the first k) could change where a tie crosses that place: the report gives, per such metric,
how many queries (or files) a tie makes uncertain and the metric's lowest and highest value over every order of the
tied results. Bounds rather than the average over tie orders: they show how far another order moves the figure,
which an average would hide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..units import count_text, for_count
from .metrics import mean

Span = tuple[int, int]  # the best and the worst rank of a query's first relevant result over every order of ties


def rank_span(groups: Iterable[Sequence[Any]], relevant: set[Any]) -> Span | None:
    """The best and the worst rank (from 1) of the first relevant result over every order of tied results, from the
    results in groups that tie, best first (None: none is among the results): its group first, or after the
    group's other results. Reads the groups only down to that result's: a lazy `groups` builds no more."""
    before = 0
    for group in groups:
        hits = sum(item in relevant for item in group)
        if hits:
            return before + 1, before + len(group) - hits + 1
        before += len(group)
    return None


def ranks_field(span: Span | None) -> dict[str, list[int]]:
    """What a query's (or file's) row of the report adds for its span: `ranks`, its best and worst rank, where a tie
    makes its rank uncertain; nothing otherwise."""
    return {"ranks": list(span)} if span is not None and span[0] != span[1] else {}


def tie_bounds(spans: Sequence[Span | None], cuts: Mapping[str, int], counted: str) -> dict[str, dict[str, Any]]:
    """Per metric of `cuts` (its name -> the place it cuts at: R@5 -> 5), how many queries have a tie across that
    place (`counted` names them: "queries", "files"), and the metric's lowest and highest value over every order
    of tied results (each query's relevant result last, or first, of its tie)."""
    bounds = {}
    for name, k in cuts.items():
        best = [span is not None and span[0] <= k for span in spans]
        worst = [span is not None and span[1] <= k for span in spans]
        bounds[name] = {
            counted: sum(b != w for b, w in zip(best, worst, strict=True)),
            "lowest": mean([float(w) for w in worst]),
            "highest": mean([float(b) for b in best]),
        }
    return bounds


def tie_notes(
    order: str, metrics: Mapping[str, Any], bounds: Mapping[str, dict[str, Any]], counted: tuple[str, str]
) -> list[str]:
    """One note per metric that another order of tied results would change (none when no tie crosses a cut):
    `order` says how ties were ordered and what for ("caption, text → audio: ties ordered by path"); `counted` is
    what a metric counts, singular and plural, as in `tie_bounds`. The value comes first, then the tie that could
    move it, so that no figure reads as the amount moved."""
    one, many = counted
    return [
        f"{order}: {name} is {metrics[name]:.4f} in this order; {count_text(tie[many], one, many)} "
        f"{for_count(tie[many], 'ties', 'tie')} across its cut-off: another order gives "
        f"{tie['lowest']:.4f} to {tie['highest']:.4f}"
        for name, tie in bounds.items()
        if tie[many]
    ]

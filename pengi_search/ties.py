"""Which scores tie, and the order tied results go in: one rule for `classify` (labels) and `eval` (files,
captions, labels, average precision). Kept free of numpy and the database, so that `evaluation.metrics` stays
light to import."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

# Scores this close are a tie: the same text embedded in another batch, or scored in another block of a matrix
# product, moves a cosine by a few 1e-7 (float32), so identical captions or labels rarely score exactly alike.
TIE_TOLERANCE = 1e-6


def tied_groups(found: Iterable[tuple[T, float]], key: Callable[[T], Any]) -> list[list[T]]:
    """The results (best first) in groups that tie (each within `TIE_TOLERANCE` of its group's best), each group
    ordered by `key`: an order that the order of the CSV's rows or of the library's windows does not change."""
    groups: list[list[T]] = []
    top = math.inf
    for item, score in found:
        if not groups or score < top - TIE_TOLERANCE:
            groups.append([])
            top = score
        groups[-1].append(item)
    return [sorted(group, key=key) for group in groups]

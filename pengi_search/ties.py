"""Which scores tie, and the order tied results go in: one rule for `classify` (labels), `eval` (files,
captions, labels, average precision) and the trainer's label accuracy. Kept free of numpy and the database, so
that `evaluation.metrics` stays light to import."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any, TypeVar

T = TypeVar("T")

# Scores this close are a tie: the same text embedded in another batch, or scored in another block of a matrix
# product, moves a cosine by a few 1e-7 (float32), so identical captions or labels rarely score exactly alike.
TIE_TOLERANCE = 1e-6


def tied_groups(found: Iterable[tuple[T, float]], key: Callable[[T], Any]) -> list[list[T]]:
    """The results (best first) in groups that tie (`tie_starts`), each group ordered by `key`: an order that the
    order of the CSV's rows or of the library's windows does not change."""
    return list(each_tied_group(found, key))


def each_tied_group(found: Iterable[tuple[T, float]], key: Callable[[T], Any]) -> Iterator[list[T]]:
    """`tied_groups`, each group built only when it is read: a reader that stops at a place in the ranking (the
    first relevant result) leaves the groups below it unbuilt, where a file's 527 labels each make a group."""
    pairs = list(found)
    starts = tie_starts([score for _, score in pairs])
    ends = [*starts[1:], len(pairs)] if starts else []
    for start, end in zip(starts, ends, strict=True):
        yield sorted((item for item, _ in pairs[start:end]), key=key)


def tie_starts(scores: Sequence[float]) -> list[int]:
    """Where each group of scores that tie begins, in scores sorted best first: each score within `TIE_TOLERANCE` of
    its group's best is in the group, the first below that begins the next."""
    starts: list[int] = []
    top = math.inf
    for position, score in enumerate(scores):
        if not starts or score < top - TIE_TOLERANCE:
            starts.append(position)
            top = score
    return starts


def rank(labels: Sequence[str], scores: Sequence[float]) -> list[tuple[str, float]]:
    """Labels with their scores, best first; labels that tie (`TIE_TOLERANCE`: two that embed alike, as "Dog" and
    "dog" do through a tokenizer that lower-cases) in the order of their names, not of the labels file or the
    truth's rows, which would make the top-1 accuracy depend on them."""
    scored = zip(labels, map(float, scores), strict=True)
    return [pair for group in tied_labels(scored) for pair in group]


def tied_labels(scored: Iterable[tuple[str, float]]) -> Iterator[list[tuple[str, float]]]:
    """Labels with their scores in the groups that tie, best group first, each group ordered by name: the one
    grouping that `rank` orders a prediction by and that evaluation bounds another order of ties with. Each group is
    built as it is read (`each_tied_group`)."""
    by_score = sorted(scored, key=lambda pair: -pair[1])
    return each_tied_group(((pair, pair[1]) for pair in by_score), key=itemgetter(0))

"""Cutting work into batches of at most `size`: slices of something indexable, or lists from a stream."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def chunk_slices(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices covering range(n), each at most `size` long (the last may be shorter)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """The items in lists of `size` (the last may be shorter), read lazily: a stream is never held whole."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def doubling_chunks(items: Sequence[T], first: int) -> Iterator[Sequence[T]]:
    """The items in slices of `first`, then each twice as long as the one before: for work that usually ends early
    (the best search results) but must be able to go on to the end."""
    start, size = 0, max(1, first)
    while start < len(items):
        yield items[start : start + size]
        start, size = start + size, 2 * size

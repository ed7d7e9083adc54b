"""Decoding work done for the pages (transcodes, spectrograms, waveform peaks, cut windows), run side by side.

A server's requests run in a thread pool. One global lock around this work made a 20-minute WMA's transcode (seconds)
hold up every other file's player, spectrogram and waveform; without any bound, a burst of requests (a long list of
hits, several tabs) would start as many decoders at once as the pool has threads. `Conversions` runs the work of
different keys at the same time, at most `slots` of them, and the work of one key once: a request for a key already
being made waits for that run and shares its result (or its error) rather than making it again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

# Decoders are CPU-bound: about one per core, a few at least (so that a long transcode leaves room for the short
# work of other pages), and not so many that a large machine's burst thrashes its disk.
DEFAULT_SLOTS = min(8, max(2, os.cpu_count() or 2))


class _Run:
    """A key's work in progress: its result to come, and how many other callers wait for it."""

    def __init__(self) -> None:
        self.result: Future[object] = Future()
        self.waiting = 0


class Conversions:
    """Work keyed by what it makes: different keys run concurrently, `slots` at most; one key runs once at a time."""

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self._slots = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()  # guards `_runs`; never held while work runs
        self._runs: dict[Hashable, _Run] = {}

    def run(self, key: Hashable, make: Callable[[], T]) -> T:
        """`make()`, or the result of the run of `key` already in progress (its exception raised here too)."""
        with self._lock:
            current = self._runs.get(key)
            if current is None:
                mine = self._runs[key] = _Run()
            else:
                current.waiting += 1
        if current is not None:
            return current.result.result()  # type: ignore[return-value]  # what `make` of the same key gave
        return self._lead(key, mine, make)

    def waiting(self, key: Hashable) -> int:
        """How many callers wait for the run of `key` in progress (0 when none runs)."""
        with self._lock:
            current = self._runs.get(key)
            return 0 if current is None else current.waiting

    def _lead(self, key: Hashable, mine: _Run, make: Callable[[], T]) -> T:
        """Run `make` for `key` in a free slot, hand its outcome to those who wait for it, and forget the run (the
        next caller makes it anew: what is kept, and for how long, is the caller's cache's business)."""
        try:
            with self._slots:
                value = make()
        except BaseException as exc:
            mine.result.set_exception(exc)
            raise
        else:
            mine.result.set_result(value)
            return value
        finally:
            with self._lock:
                del self._runs[key]

"""Decoding work done for the pages (transcodes, spectrograms, waveform peaks, cut windows), run side by side.

A server's requests run in a thread pool. One global lock around this work made a 20-minute WMA's transcode (seconds)
hold up every other file's player, spectrogram and waveform; without any bound, a burst of requests (a long list of
hits, several tabs) would start as many decoders at once as the pool has threads. `Conversions` runs the work of
different keys at the same time, at most `slots` of them, and the work of one key once: a request for a key already
being made waits for that run and shares its result (or its error) rather than making it again.

Waiting holds one of the server's threads (40: anyio's default) as much as working does: without a bound, a burst of
slow transcodes would hold them all, and searches would wait for threads. So at most `max_held` requests are held by
conversions at once, working or waiting, each waits at most `wait_s`, and a request past either is refused at once
with 503 and `Retry-After` (`ConversionsBusy`), which the pages' players and waveforms retry.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from typing import TypeVar

from .errors import RequestError

T = TypeVar("T")

# Decoders are CPU-bound: about one per core, a few at least (so that a long transcode leaves room for the short
# work of other pages), and not so many that a large machine's burst thrashes its disk.
DEFAULT_SLOTS = min(8, max(2, os.cpu_count() or 2))
# Requests held at once by conversions, working or waiting: half of the server's 40 threads, so that the other half
# answers searches and pages whatever the players ask meanwhile.
DEFAULT_MAX_HELD = 20
# The longest a request waits for a slot or for the same key's run: long enough for the short work (waveforms,
# windows) queued behind a few transcodes, short enough that a player is told, and retries, within seconds.
DEFAULT_WAIT_S = 10.0
BUSY = "the server is busy converting audio for other requests"  # the answer says when to ask again


class ConversionsBusy(RequestError):
    """A conversion refused for now (503, with `Retry-After`): too many wait already, or the wait ran out."""

    def __init__(self, reason: str = BUSY) -> None:
        super().__init__("audio", reason, HTTPStatus.SERVICE_UNAVAILABLE)


class _Run:
    """A key's work in progress: its result to come, and how many other callers wait for it."""

    def __init__(self) -> None:
        self.result: Future[object] = Future()
        self.waiting = 0


class Conversions:
    """Work keyed by what it makes: different keys run concurrently, `slots` at most; one key runs once at a time;
    at most `max_held` callers at once, working or waiting, each waiting at most `wait_s` (else `ConversionsBusy`)."""

    def __init__(
        self, slots: int = DEFAULT_SLOTS, *, max_held: int = DEFAULT_MAX_HELD, wait_s: float = DEFAULT_WAIT_S
    ) -> None:
        if not 1 <= slots <= max_held:
            raise ValueError(f"slots must be from 1 to max_held ({max_held}), not {slots}")
        self._slots = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()  # guards `_runs` and `_held`; never held while work runs
        self._runs: dict[Hashable, _Run] = {}
        self._held = 0
        self._max_held = max_held
        self._wait_s = wait_s

    def run(self, key: Hashable, make: Callable[[], T]) -> T:
        """`make()`, or the result of the run of `key` already in progress (its exception raised here too);
        `ConversionsBusy` when `max_held` callers are held already, or the wait for a slot or that run passes
        `wait_s`."""
        with self._lock:
            if self._held >= self._max_held:
                raise ConversionsBusy()
            self._held += 1
            current = self._runs.get(key)
            if current is None:
                mine = self._runs[key] = _Run()
            else:
                current.waiting += 1
        try:
            if current is not None:
                return self._follow(current)  # type: ignore[return-value]  # what `make` of the same key gave
            return self._lead(key, mine, make)
        finally:
            with self._lock:
                self._held -= 1

    def held(self) -> int:
        """How many callers are held now, working or waiting."""
        with self._lock:
            return self._held

    def _follow(self, current: _Run) -> object:
        """The result of `current`, another caller's run, waited for at most `wait_s`."""
        try:
            return current.result.result(timeout=self._wait_s)
        except FutureTimeout:
            raise ConversionsBusy() from None
        finally:
            with self._lock:
                current.waiting -= 1

    def waiting(self, key: Hashable) -> int:
        """How many callers wait for the run of `key` in progress (0 when none runs)."""
        with self._lock:
            current = self._runs.get(key)
            return 0 if current is None else current.waiting

    def _lead(self, key: Hashable, mine: _Run, make: Callable[[], T]) -> T:
        """Run `make` for `key` in a free slot, hand its outcome to those who wait for it, and forget the run (the
        next caller makes it anew: what is kept, and for how long, is the caller's cache's business)."""
        try:
            if not self._slots.acquire(timeout=self._wait_s):
                raise ConversionsBusy()
            try:
                value = make()
            finally:
                self._slots.release()
        except BaseException as exc:
            mine.result.set_exception(exc)
            raise
        else:
            mine.result.set_result(value)
            return value
        finally:
            with self._lock:
                del self._runs[key]

"""Query texts of concurrent requests embedded together, in one pass of the text tower.

On a CPU the tower's matrix products are a few rows tall for one short query, which leaves most of the arithmetic
units idle: eight queries in one pass cost about three times one query, not eight. So the server embeds on one
worker thread, and each pass takes every text queued while the previous pass ran. When the previous pass had
several texts (clients are searching at once), the next one also waits up to `MAX_WAIT_S` for as many: the clients
answered by a pass come back at slightly different times, and without the wait the quickest would get a pass of
its own, costing the others nearly a whole pass. A lone client waits for nothing. Texts are embedded exactly as
alone (see `text_query`: texts are packed, never padded).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..embedders import TextEmbedder

MAX_BATCH = 32  # texts per pass: past this the products are tall enough, and a pass should stay short
MAX_WAIT_S = 0.02  # the longest a pass waits for the texts of concurrent clients


@dataclass
class _Job:
    embedder: TextEmbedder
    text: str
    done: threading.Event = field(default_factory=threading.Event)
    vector: np.ndarray | None = None  # (1, d)
    error: Exception | None = None


class EmbedBatcher:
    """`embed(embedder, text)` from any thread; the texts waiting together go through the tower together."""

    def __init__(self, max_batch: int = MAX_BATCH, max_wait_s: float = MAX_WAIT_S) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def embed(self, embedder: TextEmbedder, text: str) -> np.ndarray:
        """The text's embedding (1, d), computed by `embedder` in a pass shared with concurrent requests."""
        job = _Job(embedder, text)
        with self._lock:
            queued = not self._closed  # shutting down: no worker to wait for
            if queued and self._worker is None:
                self._worker = threading.Thread(target=self._work, name="pengi-embed", daemon=True)
                self._worker.start()
            if queued:
                self._queue.put(job)
        if not queued:
            _run([job])
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.vector is not None
        return job.vector

    def close(self) -> None:
        """Finish the queued texts and stop the worker."""
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
            self._queue.put(None)
        if worker is not None:
            worker.join()

    def _work(self) -> None:
        expected = 1  # texts in the previous pass: how many clients are searching at once
        while True:
            jobs, stop = self._next_jobs(expected)
            for group in _by_embedder(jobs):
                _run(group)
            if stop:
                return
            expected = max(1, len(jobs))

    def _next_jobs(self, expected: int) -> tuple[list[_Job], bool]:
        """The next pass's jobs: all queued now, and up to `expected` of them waiting at most `max_wait_s`; and
        whether `close` was called."""
        first = self._queue.get()
        if first is None:
            return [], True
        jobs = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch:
            wait = deadline - time.monotonic() if len(jobs) < expected else 0.0
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False


def _by_embedder(jobs: Sequence[_Job]) -> list[list[_Job]]:
    """The jobs grouped by embedder (a hybrid search queues one text for captions and one for audio)."""
    groups: dict[int, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(id(job.embedder), []).append(job)
    return list(groups.values())


def _run(jobs: Sequence[_Job]) -> None:
    """Embed the jobs' texts (all for the same embedder) in one call, each distinct text once; never raises."""
    texts = list(dict.fromkeys(job.text for job in jobs))
    try:
        vectors = jobs[0].embedder.embed(texts)
    except Exception as exc:  # every waiting request gets the error, and the worker lives on
        for job in jobs:
            job.error = exc
            job.done.set()
        return
    row = {text: i for i, text in enumerate(texts)}
    for job in jobs:
        job.vector = vectors[row[job.text]][None, :]
        job.done.set()

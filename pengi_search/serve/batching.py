"""Query texts of concurrent requests embedded together, in one pass of the text tower.

On a CPU the tower's matrix products are a few rows tall for one short query, which leaves most of the arithmetic
units idle: eight queries in one pass cost about three times one query, not eight. So the server embeds on one
worker thread, and each pass takes every text queued while the previous pass ran. A lone request waits for
nothing (its pass starts at once); under load, requests wait at most for the pass before theirs. Texts are
embedded exactly as alone: a row's padding never reaches its pooled token (see `text_query`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..embedders import TextEmbedder

MAX_BATCH = 32  # texts per pass: past this the products are tall enough, and a pass should stay short


@dataclass
class _Job:
    embedder: TextEmbedder
    text: str
    done: threading.Event = field(default_factory=threading.Event)
    vector: np.ndarray | None = None  # (1, d)
    error: Exception | None = None


class EmbedBatcher:
    """`embed(embedder, text)` from any thread; the texts waiting together go through the tower together."""

    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
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
        while True:
            first = self._queue.get()
            jobs = [] if first is None else [first]
            stop = first is None
            while not stop and len(jobs) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                stop = job is None
                jobs += [] if job is None else [job]
            for group in _by_embedder(jobs):
                _run(group)
            if stop:
                return


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

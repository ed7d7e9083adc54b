"""Many files through the model at once: windows from every file, in full batches, each file's results in order.

The commands that run the model on files (`describe`, `ask`, `classify`, `similar`) hand `map_windows` their files
and the work to do on a batch of windows. Worker processes decode the files (`audio_workers`, as `index` does);
their windows are gathered into batches of `batch_size` regardless of which file they come from, so a folder of
short files fills the model's batches as well as one long file does. Each file's outcome comes back in the order
the files were given, as soon as it and the files before it are done; a file that cannot be decoded comes back
with its reason and the others go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .audio import WINDOW_SECONDS, Window
from .audio_workers import Decoded, Failed, Job, Windows, decode_all, default_workers

T = TypeVar("T")


@dataclass(frozen=True)
class Span:
    """Where a window lies in its file."""

    index: int
    start_s: float
    end_s: float


@dataclass
class FileOutcome(Generic[T]):
    """A file's windows and the work's result for each, in order; or, with `error`, why it failed (and nothing)."""

    path: str
    duration_s: float = 0.0
    spans: list[Span] = field(default_factory=list)
    results: list[T] = field(default_factory=list)
    error: str | None = None
    truncation: str | None = None  # "truncated: header says ...", for a file that decoded short of its header


class Progress(Protocol):
    """Told what happens, for a progress display."""

    def start(self, files: int) -> None: ...

    def counted(self, windows: int) -> None:
        """A file was decoded to its end: it has `windows` windows."""

    def advance(self, files: int = 0, windows: int = 0) -> None: ...


def decode_workers(files: int) -> int:
    """Worker processes for `files` files: none for a single file (starting one costs more than it saves)."""
    return 0 if files <= 1 else min(default_workers(), files)


@dataclass
class _Pending(Generic[T]):
    outcome: FileOutcome[T]
    queued: int = 0  # windows waiting in the batch buffer
    decoded: bool = False

    @property
    def done(self) -> bool:
        return self.outcome.error is not None or (self.decoded and self.queued == 0)


def map_windows(
    paths: Sequence[str | os.PathLike[str]],
    work: Callable[[list[Window]], Sequence[T]],
    *,
    batch_size: int,
    hop_s: float = WINDOW_SECONDS,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Iterator[FileOutcome[T]]:
    """`work` on the windows of all `paths`, `batch_size` windows at a time across files; one `FileOutcome` per
    path, in order. `work` returns one result per window. `workers`: decoding processes (None: `decode_workers`)."""
    paths = [os.fspath(p) for p in paths]
    run = _Run(paths, work, batch_size, progress)
    if progress is not None:
        progress.start(len(paths))
    jobs = [Job(seq, path, hop_s=hop_s, content_hash=False) for seq, path in enumerate(paths)]
    messages = decode_all(jobs, decode_workers(len(paths)) if workers is None else workers)
    try:
        for message in messages:
            run.receive(message)
            yield from run.finished()
        run.flush()
        yield from run.finished()
    finally:
        messages.close()


class _Run(Generic[T]):
    def __init__(
        self,
        paths: list[str],
        work: Callable[[list[Window]], Sequence[T]],
        batch_size: int,
        progress: Progress | None,
    ) -> None:
        self.work = work
        self.batch_size = max(1, batch_size)
        self.progress = progress
        self.pending = {seq: _Pending(FileOutcome[T](path)) for seq, path in enumerate(paths)}
        self.buffer: list[tuple[int, Window]] = []
        self.next_out = 0
        self.count = len(paths)

    def receive(self, message: Windows | Decoded | Failed) -> None:
        pending = self.pending[message.seq]
        if isinstance(message, Windows):
            self.buffer.extend((message.seq, window) for window in message.windows)
            pending.queued += len(message.windows)
            while len(self.buffer) >= self.batch_size:
                self._run_batch()
        elif isinstance(message, Decoded):
            pending.decoded = True
            pending.outcome.duration_s = message.duration_s
            pending.outcome.truncation = message.truncation
            if self.progress is not None:
                self.progress.counted(message.count)
        else:  # Failed: what its windows gave is dropped, and those still waiting are not run
            pending.outcome.error = message.reason
            pending.outcome.spans.clear()
            pending.outcome.results.clear()
            self.buffer = [(seq, window) for seq, window in self.buffer if seq != message.seq]

    def flush(self) -> None:
        while self.buffer:
            self._run_batch()

    def _run_batch(self) -> None:
        batch, self.buffer = self.buffer[: self.batch_size], self.buffer[self.batch_size :]
        results = self.work([window for _, window in batch])
        for (seq, window), result in zip(batch, results, strict=True):
            pending = self.pending[seq]
            pending.queued -= 1
            pending.outcome.spans.append(Span(window.index, window.start_s, window.end_s))
            pending.outcome.results.append(result)
        if self.progress is not None:
            self.progress.advance(windows=len(batch))

    def finished(self) -> Iterator[FileOutcome[T]]:
        """The files done so far whose predecessors are all done, in order."""
        while self.next_out < self.count and self.pending[self.next_out].done:
            yield self.pending.pop(self.next_out).outcome
            self.next_out += 1
            if self.progress is not None:
                self.progress.advance(files=1)

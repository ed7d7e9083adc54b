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
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Generic, Protocol, TypeVar

from .audio import WINDOW_SECONDS, Window
from .audio_workers import Decoded, Failed, Job, Message, Windows, decode_all, default_workers

T = TypeVar("T")
R = TypeVar("R")
READ_AHEAD = 16  # decoded messages held ahead of the model: 8 short files, or 128 windows (~160 MB) of long ones
_POLL_S = 0.5


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
    content_hash: str | None = None  # the file's sha256, when asked for (`Decoding`'s `hash_files`)


class Progress(Protocol):
    """Told what happens, for a progress display."""

    def start(self, files: int) -> None: ...

    def promised(self, windows: int) -> None:
        """A file being decoded has `windows` windows as its header says (told at most once a file, before
        `counted`), so that a long file counts before its windows are all decoded."""

    def counted(self, windows: int, promised: int | None = None) -> None:
        """A file was decoded to its end: it has `windows` windows (0: it failed, and no more of its come);
        `promised`: what `promised` told of it, which this count replaces (None: nothing)."""

    def advance(self, files: int = 0, windows: int = 0) -> None: ...


class Promises:
    """Each file's count of windows as its header promises, told to `progress` with the file's first windows, and
    replaced by the count decoded once the file ends (or fails)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.told: dict[int, int] = {}  # by the file's place in the run

    def windows(self, message: Windows) -> None:
        if self.progress is None or message.promised is None or message.seq in self.told:
            return
        self.told[message.seq] = message.promised
        self.progress.promised(message.promised)

    def counted(self, seq: int, windows: int) -> None:
        if self.progress is not None:
            self.progress.counted(windows, self.told.pop(seq, None))


def decode_workers(files: int) -> int:
    """Worker processes for `files` files: none for a single file (starting one costs more than it saves)."""
    return 0 if files <= 1 else min(default_workers(), files)


class Decoding:
    """`paths` decoding from the moment this is made, so that a command decodes while it imports and loads its
    model: in worker processes (`workers`; None: `decode_workers`), whose messages a thread reads ahead, up to
    `READ_AHEAD`; or, without workers (a single file), in this process as they are read. `map_windows` takes it in
    place of the paths. Closing it (or leaving its `with`) stops the decoding. `hash_files`: each file's sha256 is
    taken too, by what decodes it, of the bytes it decodes (a file that changes meanwhile fails)."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        hop_s: float = WINDOW_SECONDS,
        workers: int | None = None,
        hash_files: bool = False,
    ) -> None:
        self.paths = [os.fspath(p) for p in paths]
        jobs = [Job(seq, path, hop_s=hop_s, content_hash=hash_files) for seq, path in enumerate(self.paths)]
        workers = decode_workers(len(jobs)) if workers is None else workers
        self._stop = threading.Event()
        self._messages = decode_all(jobs, workers, stop=self._stop)
        self._ahead: queue.Queue[Message | BaseException | None] = queue.Queue(READ_AHEAD)
        self._reader = threading.Thread(target=self._read, name="pengi-read-ahead", daemon=True) if workers else None
        if self._reader is not None:
            self._reader.start()

    def __enter__(self) -> Decoding:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Message]:
        """The messages, in the order they were decoded; an error the decoding raised is raised here."""
        if self._reader is None:
            yield from self._messages
            return
        while (item := self._ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._reader is None:
            self._messages.close()
        else:
            self._reader.join()  # the pool sees `_stop` within a poll interval and stops its workers

    def _read(self) -> None:
        try:
            for message in self._messages:
                if not self._hand_over(message):
                    return
            self._hand_over(None)  # the end
        except BaseException as error:  # raised to the consumer: a failure to start the workers is not lost here
            self._hand_over(error)
        finally:
            self._messages.close()

    def _hand_over(self, item: Message | BaseException | None) -> bool:
        """Queue `item`, waiting for room; False when closed meanwhile."""
        while not self._stop.is_set():
            try:
                self._ahead.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False


@dataclass
class _Pending(Generic[T]):
    outcome: FileOutcome[T]
    queued: int = 0  # windows waiting in the batch buffer
    decoded: bool = False

    @property
    def done(self) -> bool:
        return self.outcome.error is not None or (self.decoded and self.queued == 0)


def map_windows(
    files: Sequence[str | os.PathLike[str]] | Decoding,
    work: Callable[[list[Window]], Sequence[T]],
    *,
    batch_size: int,
    hop_s: float = WINDOW_SECONDS,
    workers: int | None = None,
    hash_files: bool = False,
    progress: Progress | None = None,
    started: bool = False,
) -> Iterator[FileOutcome[T]]:
    """`work` on the windows of all `files`, `batch_size` windows at a time across files; one `FileOutcome` per
    file, in order. `work` returns one result per window. `files`: paths (decoded with `hop_s`, `workers` and
    `hash_files`, as `Decoding` does), or a `Decoding` of them already under way (closed here once read).
    `started`: the caller started `progress` for a run of which these files are a part (`batched_rows`' too)."""
    decoding = (
        files if isinstance(files, Decoding) else Decoding(files, hop_s=hop_s, workers=workers, hash_files=hash_files)
    )
    run = _Run(decoding.paths, work, batch_size, progress)
    if progress is not None and not started:
        progress.start(len(decoding.paths))
    try:
        for message in decoding:
            run.receive(message)
            yield from run.finished()
        run.flush()
        yield from run.finished()
    finally:
        decoding.close()


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
        self.promises = Promises(progress)
        self.pending = {seq: _Pending(FileOutcome[T](path)) for seq, path in enumerate(paths)}
        self.buffer: list[tuple[int, Window]] = []
        self.next_out = 0
        self.count = len(paths)

    def receive(self, message: Windows | Decoded | Failed) -> None:
        pending = self.pending[message.seq]
        if isinstance(message, Windows):
            self.buffer.extend((message.seq, window) for window in message.windows)
            pending.queued += len(message.windows)
            self.promises.windows(message)
            while len(self.buffer) >= self.batch_size:
                self._run_batch()
        elif isinstance(message, Decoded):
            pending.decoded = True
            pending.outcome.duration_s = message.duration_s
            pending.outcome.truncation = message.truncation
            pending.outcome.content_hash = message.content_hash
            self.promises.counted(message.seq, message.count)
        else:  # Failed: what its windows gave is dropped, and those still waiting are not run
            pending.outcome.error = message.reason
            pending.outcome.spans.clear()
            pending.outcome.results.clear()
            self.buffer = [(seq, window) for seq, window in self.buffer if seq != message.seq]
            self.promises.counted(message.seq, 0)

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
            outcome = self.pending.pop(self.next_out).outcome
            self.next_out += 1
            if self.progress is not None:  # before it is handed over: a caller may take no more
                self.progress.advance(files=1)
            yield outcome


def batched_rows(
    files: Iterable[Sequence[R]],
    work: Callable[[list[R]], Sequence[T]],
    *,
    batch_size: int,
    progress: Progress | None = None,
) -> Iterator[list[T]]:
    """`work` on the rows of all `files` held in memory (a library's stored vectors of each file's windows),
    `batch_size` rows at a time across files, as `map_windows` batches decoded windows: many short files fill one
    batch. Each file's results, in order, as soon as its last row is done; `progress` is told each batch's rows
    and each file done (its files and windows, counted beforehand by the caller, who started it)."""
    sizes: deque[int] = deque()  # rows of each file not yet handed back, in order
    waiting: list[R] = []  # rows not yet run
    done: list[T] = []  # results of the rows run, of files not yet handed back
    for rows in chain(files, (None,)):  # None: the end, where the last rows run in a smaller batch
        if rows is not None:
            sizes.append(len(rows))
            waiting.extend(rows)
        while len(waiting) >= batch_size or (rows is None and waiting):
            batch, waiting = waiting[:batch_size], waiting[batch_size:]
            done.extend(work(batch))
            if progress is not None:
                progress.advance(windows=len(batch))
        while sizes and len(done) >= sizes[0]:
            count = sizes.popleft()
            results, done = done[:count], done[count:]
            if progress is not None:  # before the file is handed over, as `map_windows` counts it
                progress.advance(files=1)
            yield results

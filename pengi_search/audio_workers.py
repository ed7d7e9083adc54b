"""Decoding files into 7 s windows, in worker processes, so that the model never waits for disk or decoder.

`index` and every command that runs the model on many files (`describe`, `ask`, `classify`, `similar`, through
`window_batches`) read their files this way. Each file becomes a stream of messages: `Windows` chunks (a long file
is never held whole, in a worker or in a pipe), then `Decoded` with its properties (its duration is what decoded),
content hash (when the job asks for it) and what decoding noticed (a truncation, the decoders' own messages), or
`Failed` with the reason. Workers are started with
'forkserver' (or 'spawn' where there is none): never forked from a process that holds torch threads. Each worker
has its own pipes and blocks until its message is read, which keeps memory flat; a worker that dies (a decoder
crash) fails only the file it was on, and a new one takes over its other files.

This module imports no torch, so workers start quickly. multiprocessing runs the caller's main script again in every
new worker (to find objects pickled from `__main__`): a script that calls the indexer or the engine should import
torch and the model inside its main function, as `pengi-search`'s own script (which imports only the CLI) does;
eight workers re-importing torch at the top of a benchmark script once cost 17 s of a 28 s GPU run. A script that
does its work outside `if __name__ == "__main__":` makes each worker start that work again, which multiprocessing
stops before the worker runs: a worker that ends before it says it started raises `WorkersNotStarted`, rather
than blaming each file for a crash its decoder never had.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import stat
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from .audio import WINDOW_SECONDS, Window, iter_windows, windows_promised
from .audio_decoders import AudioDecodeError, DecodeReport
from .chunking import chunked
from .errors import PengiSearchError, read_reason
from .hashing import BackgroundSha256
from .stop_signals import TERMINAL_SIGNALS

CHUNK_WINDOWS = 8  # windows per message: ~10 MB of float32 samples
PREFETCH_PER_WORKER = 2  # files handed to a worker ahead of time
_POLL_S = 0.5


def default_workers() -> int:
    """Decoding processes: half the cores (the model needs the rest on CPU), at most 4."""
    return min(4, max(1, (os.cpu_count() or 2) // 2))


@dataclass(frozen=True)
class Job:
    seq: int
    path: str
    hop_s: float = WINDOW_SECONDS  # seconds between window starts
    content_hash: bool = True  # hash the file's bytes (the index records it; a one-off command has no use for it)


@dataclass(frozen=True)
class Windows:
    """Some of a file's windows, in order. `promised`: how many windows the file has in all as its header says (None
    where it does not), for a progress bar's total: a two-hour recording's count is known long before `Decoded`."""

    seq: int
    windows: list[Window]
    promised: int | None = None


@dataclass(frozen=True)
class Decoded:
    """The file decoded to its end: `count` windows were sent. `truncation`: the file decoded clearly shorter
    than its header says ("truncated: header says ..."); `notes`: what the C decoders printed meanwhile."""

    seq: int
    count: int
    content_hash: str | None
    format: str
    sample_rate: int
    channels: int
    duration_s: float
    truncation: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failed:
    seq: int
    reason: str
    content_hash: str | None = None  # when the bytes could be read: an unchanged broken file is not retried
    notes: tuple[str, ...] = ()  # what the C decoders printed before it failed


Message = Windows | Decoded | Failed


@dataclass(frozen=True)
class _Started:
    """A worker's first message: it runs the decoding loop (one that ends before sending it never started)."""


class WorkersNotStarted(PengiSearchError):
    """A decoding process ended before it started its work: no file is to blame."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(
            "",
            f"a decoding process ended as it started (exit code {exit_code}; its error is above): each one runs the "
            "calling script again, so a script that uses pengi-search must do its work under `if __name__ == "
            '"__main__":`',
        )


CHANGED_WHILE_READ = "the file changed while it was being read (still being written?)"


def decode_file(job: Job, chunk: int = CHUNK_WINDOWS) -> Iterator[Message]:
    """The messages for one file. Any failure becomes `Failed` (after which earlier windows must be dropped), and
    so does a file that changed while it was read: its windows and hash would mix two versions (a recorder still
    writing it, a copy over it), and its decoder would call the difference a truncation or corrupt data."""
    try:
        before = os.stat(job.path)
    except OSError as exc:
        yield Failed(job.seq, read_reason(job.path, exc))
        return
    if not stat.S_ISREG(before.st_mode):  # replaced by a FIFO since the scan: opening it would hang
        yield Failed(job.seq, "not a regular file")
        return
    for message in _decode_regular_file(job, chunk):
        if isinstance(message, Windows) or not _changed_since(job.path, before):
            yield message
        else:
            yield Failed(job.seq, CHANGED_WHILE_READ, None, message.notes)


def _changed_since(path: str, before: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return True  # deleted or replaced by something unreadable meanwhile
    return (now.st_ino, now.st_size, now.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns)


def _decode_regular_file(job: Job, chunk: int) -> Iterator[Message]:
    # Hashed while it decodes: a file that takes minutes to read (a long recording, a network share) sends its first
    # windows at once, not after a whole read of its bytes.
    hashing = BackgroundSha256(job.path) if job.content_hash else None
    try:
        yield from _decoded_messages(job, chunk, hashing)
    finally:
        if hashing is not None:
            hashing.cancel()  # the file left half-way (the run stopped): its reading stops too


def _decoded_messages(job: Job, chunk: int, hashing: BackgroundSha256 | None) -> Iterator[Message]:
    report = DecodeReport()
    try:
        count = 0
        for batch in chunked(iter_windows(job.path, hop_s=job.hop_s, report=report), chunk):
            count += len(batch)
            yield Windows(job.seq, batch, windows_promised(report, hop_s=job.hop_s))
        yield Decoded(
            job.seq,
            count,
            hashing.result() if hashing else None,
            report.format,
            report.sample_rate,
            report.channels,
            report.duration_s,
            report.truncation(),
            tuple(report.notes),
        )
    except AudioDecodeError as exc:
        yield Failed(job.seq, exc.reason, _hash_if_read(hashing), tuple(report.notes))
    except OSError as exc:
        yield Failed(job.seq, read_reason(job.path, exc), _hash_if_read(hashing), tuple(report.notes))
    except Exception as exc:  # a decoder bug on one odd file must not stop a library-wide run
        yield Failed(job.seq, f"{type(exc).__name__}: {exc}", _hash_if_read(hashing), tuple(report.notes))


def _hash_if_read(hashing: BackgroundSha256 | None) -> str | None:
    """The file's hash where its bytes could be read (an unchanged broken file is then not retried), else None: the
    file has failed already, and a failure of its hashing adds nothing to say."""
    try:
        return hashing.result() if hashing else None
    except Exception:
        return None


def decode_all(
    jobs: Iterable[Job], workers: int, chunk: int = CHUNK_WINDOWS, stop: threading.Event | None = None
) -> Iterator[Message]:
    """Messages for every job: in this process when `workers` is 0, else from a pool of worker processes.

    Windows of one file arrive in order; files may interleave. Closing the iterator stops the workers, and so does
    setting `stop` (for a reader in another thread: the iterator then ends within a poll interval, short).
    """
    if workers <= 0:
        for job in jobs:
            yield from decode_file(job, chunk)
        return
    with _Pool(workers, chunk) as pool:
        yield from pool.run(list(jobs), stop or threading.Event())


def _worker_process(jobs: Connection, results: Connection, chunk: int) -> None:
    # Ctrl-C and a hang-up reach every process of the terminal's foreground group: the run stops its workers itself
    # (they end on SIGTERM), so that they do not each print a KeyboardInterrupt traceback or die holding a file,
    # which would be recorded as failed.
    for number in TERMINAL_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    results.send(_Started())
    _worker_main(jobs, results, chunk)


def _worker_main(jobs: Connection, results: Connection, chunk: int) -> None:
    try:
        while (job := jobs.recv()) is not None:
            for message in decode_file(job, chunk):
                results.send(message)  # blocks until the parent reads: at most one message in flight per worker
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the run's process is gone (`kill -9`): no one to report to, and no traceback on its terminal


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # workers fork from a server that already imported the decoders
        return context
    return multiprocessing.get_context("spawn")


@dataclass
class _Worker:
    """A decoding process with its own pipes: one that dies mid-message can only spoil its own."""

    process: Any
    jobs: Connection
    results: Connection
    assigned: deque[Job] = field(default_factory=deque)
    started: bool = False  # it said so (`_Started`)


def _send(worker: _Worker, job: Job | None) -> bool:
    """Hands `worker` a job (None: no more), False where its process is gone (a decoder that crashed as it opened
    its file): the pipe to a dead process is broken, and that is the worker's failure to report, not the run's."""
    try:
        worker.jobs.send(job)
    except OSError:  # BrokenPipeError, or a reset
        return False
    return True


class _Pool:
    def __init__(self, size: int, chunk: int) -> None:
        self._context = _context()
        self._chunk = chunk
        self._workers = [self._start() for _ in range(size)]

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *_exc: object) -> None:
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in self._workers:
            worker.process.join()
            worker.jobs.close()
            worker.results.close()

    def _start(self) -> _Worker:
        job_out, job_in = self._context.Pipe(duplex=False)
        result_out, result_in = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_process, args=(job_out, result_in, self._chunk), name="pengi-decode", daemon=True
        )
        process.start()
        job_out.close()  # the worker's ends: closed here so that its death reads as end of file
        result_in.close()
        return _Worker(process, job_in, result_out)

    def run(self, jobs: list[Job], stop: threading.Event) -> Iterator[Message]:
        waiting = deque(jobs)
        remaining = len(jobs)
        while remaining and not stop.is_set():
            self._hand_out(waiting)
            for worker in self._ready():
                try:
                    message = worker.results.recv()
                except (EOFError, OSError):
                    failure = self._replace(worker, waiting)
                    if failure is None:
                        continue
                    message = failure
                if isinstance(message, _Started):
                    worker.started = True
                    continue
                if isinstance(message, (Decoded, Failed)):
                    worker.assigned.popleft()  # a worker finishes its files in the order it got them
                    remaining -= 1
                yield message
        for worker in self._workers:
            _send(worker, None)

    def _hand_out(self, waiting: deque[Job]) -> None:
        for worker in self._workers:
            while waiting and len(worker.assigned) < PREFETCH_PER_WORKER:
                job = waiting.popleft()
                if not _send(worker, job):  # it died since its last message: `_ready` finds it so, `_replace` it
                    waiting.appendleft(job)
                    break
                worker.assigned.append(job)

    def _ready(self) -> list[_Worker]:
        """Workers with a message to read or a pipe at end of file (dead), waiting up to a poll interval."""
        by_handle = {worker.results: worker for worker in self._workers}
        return [by_handle[handle] for handle in wait(list(by_handle), timeout=_POLL_S)]  # type: ignore[index]

    def _replace(self, worker: _Worker, waiting: deque[Job]) -> Failed | None:
        """A worker died: its current file fails, its other files go back to the queue, a new worker starts.

        Returns the failure (left as the dead worker's only file, for the caller's bookkeeping), or None when it
        held no file. One that failed before it started raises `WorkersNotStarted`: its replacement would too.
        """
        worker.process.join(timeout=5)
        if worker.process.is_alive():  # closed its pipe without exiting: cannot be trusted with more files
            worker.process.kill()
            worker.process.join()
        code = worker.process.exitcode
        if not worker.started and code is not None and code > 0:  # Python failed before the loop (a signal: a crash)
            raise WorkersNotStarted(code) from None
        worker.jobs.close()
        worker.results.close()
        self._workers[self._workers.index(worker)] = self._start()
        if not worker.assigned:
            return None
        current, *others = worker.assigned
        waiting.extendleft(reversed(others))
        worker.assigned = deque([current])
        return Failed(current.seq, f"the decoding process died on this file ({_how_ended(code)})")


def _how_ended(code: int | None) -> str:
    """A dead worker's end as a person reads it: the signal that killed it by name (a crash, SIGSEGV; the
    kernel's out-of-memory killer or `kill -9`, SIGKILL), rather than multiprocessing's negative exit code."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"

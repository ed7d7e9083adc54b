"""Several server processes on one listening socket (`serve --workers N`).

One process answers requests on many threads, but its Python work (HTTP, the database rows, JSON) runs under one
interpreter lock: on a 2-core machine it used about 1.5 cores. Worker processes each have their own lock and take
connections from the same socket, so searches use every core. Each worker opens the library and loads the indexes
and the text tower itself (memory grows with the number of workers): a process forked after FAISS has run OpenMP
hangs in its own first parallel region, so nothing is loaded before the fork.

The parent only supervises: it reports the address once every worker is ready and exits with the first failing
worker's code (a worker that fails to start ends the others). The workers load the same library, so what one warns
of while it starts (its model not installed, say) they all would: the first says it, the others log no warning until
they are ready; once serving, each says its own. A stop signal to the parent (SIGTERM; Ctrl-C or a hang-up, which a
terminal sends to the workers too, and which they leave to it) stops every worker with SIGTERM, at any moment, also
while they load: no worker outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable

from ..stop_signals import STOP_SIGNALS, TERMINAL_SIGNALS, interrupted_exit_code, stop_signals_blocked

WorkerFn = Callable[[Callable[[], None]], None]  # builds the app, calls `ready()`, serves until told to stop


def run_workers(count: int, work: WorkerFn, on_ready: Callable[[], None]) -> int:
    """Fork `count` processes that each run `work(ready)`; call `on_ready` once all have called `ready`, then wait
    for them all. Returns the exit code: 0, or the first non-zero one of a worker. A stop signal's KeyboardInterrupt
    (or a failing `on_ready`) is raised again once every worker has ended."""
    read_end, write_end = os.pipe()
    children: list[int] = []
    try:
        _fork_all(count, work, read_end, write_end, children)
        code = _wait_until_ready(children, read_end, count)
        if code is None:
            on_ready()
        return _wait_for_all(children, code)
    except BaseException:
        _signal_all(children, signal.SIGTERM)
        while children:
            try:
                _wait_for_all(children, None)
            except KeyboardInterrupt:  # stopped again (Ctrl-C pressed twice): the workers are told again
                _signal_all(children, signal.SIGTERM)
        raise
    finally:
        os.close(read_end)


def _fork_all(count: int, work: WorkerFn, read_end: int, write_end: int, children: list[int]) -> None:
    """Fork the workers, each in `children` before a stop signal can interrupt the parent (the list of those to
    stop); the parent's end of the pipe they write to is closed after (a read then sees when all have gone)."""
    try:
        for number in range(count):
            with stop_signals_blocked():
                children.append(_fork(work, read_end, write_end, says_start_up=number == 0))
    finally:
        os.close(write_end)


def _fork(work: WorkerFn, read_end: int, write_end: int, says_start_up: bool) -> int:
    """A worker running `work`; one that does not `says_start_up` logs no warning until it is ready."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:  # from here on, whatever happens ends this process: a worker must never return into the parent's code
        os.close(read_end)
        # Born with the stop signals blocked (`_fork_all`). Ctrl-C and a hang-up are the parent's to act on (a
        # terminal sends them to every process of the group): it stops the workers as it does on SIGTERM, which
        # stops a worker cleanly.
        for number in TERMINAL_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if not says_start_up:  # the first worker says them; an error that stops this one still shows
            logging.disable(logging.WARNING)  # in this process alone: it was forked

        def ready() -> None:
            logging.disable(logging.NOTSET)  # serving: what each worker warns of is its own
            os.write(write_end, b".")

        work(ready)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    except KeyboardInterrupt:
        # A stop signal that came while the CLI's handler was reporting this worker's own failure: the parent stops
        # every worker once one fails, and they fail alike, so this is routine and its traceback would be noise.
        code = interrupted_exit_code()
    except BaseException as exc:
        code = getattr(exc, "exit_code", None)  # the CLI's error handler has reported it (typer.Exit)
        if code is None:
            code = 1
            traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait_until_ready(children: list[int], read_end: int, count: int) -> int | None:
    """None once every worker said it is ready; a worker's exit code if one ended before that."""
    ready = 0
    while ready < count:
        readable, _, _ = select.select([read_end], [], [], 0.5)
        if readable:
            ready += len(os.read(read_end, count))
        for pid in children:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.remove(pid)
                _signal_all(children, signal.SIGTERM)
                return _failure(os.waitstatus_to_exitcode(status))
    return None


def _wait_for_all(children: list[int], code: int | None) -> int:
    """Wait for every worker (each removed from `children` as it ends); the first failure stops the others."""
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # none left (reaped elsewhere)
            children.clear()
            break
        if pid in children:
            children.remove(pid)
            exit_code = os.waitstatus_to_exitcode(status)
            if exit_code not in STOPPED and code is None:
                code = _failure(exit_code)
                _signal_all(children, signal.SIGTERM)
    return code or 0


# uvicorn shuts down on SIGTERM or SIGINT, then raises the signal again: the worker ends "killed" by it
STOPPED = {0, -signal.SIGTERM, -signal.SIGINT}


def _failure(exit_code: int) -> int:
    """A worker's exit status as a failing exit code (a worker killed by a signal has a negative one)."""
    return exit_code if exit_code > 0 else 1


def _signal_all(children: list[int], number: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, number)

"""The signals that ask a process to stop, taken one way: SIGINT (Ctrl-C), SIGTERM (`kill`, `docker stop`,
systemd, SLURM preemption, torchrun) and SIGHUP (the terminal closed, an ssh session dropped).

All come out as KeyboardInterrupt, the path every command already stops on cleanly: an index run records itself
interrupted and the next one resumes where it stopped; a training run (`trainer.stopping.InterruptRequest`, which
takes them all) stops after its step with a checkpoint and its model. Only the exit code tells them apart: 128 plus the
signal's number, as shells report a process a signal ended (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP). A
hang-up also takes the terminal away: what the command still says there (what it kept) goes nowhere, not into an
error.

Which signal came is remembered by the process rather than carried by the exception, because the KeyboardInterrupt
that reaches the command line is not always the one the handler raised: watchfiles raises its own when a signal
interrupts its wait, and the training loop raises one after writing its checkpoint.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from .errors import EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED
from .stream_ends import discard_writes, other_end_gone
from .torchrun_env import MachineSiblings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_CODES = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED, signal.SIGHUP: EXIT_HANGUP}
# What a terminal sends every process of its foreground group (Ctrl-C; its closing, which the shell passes on to
# each job): a helper process leaves these to the command, which stops it itself.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGHUP)
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # a server ends by these, as service managers and shells expect

_received: list[int] = []  # the stop signals this process has been sent, first first
_siblings: list[MachineSiblings] = [MachineSiblings([])]  # under torchrun: the command's fellow workers (in place)
_after_sibling: list[bool] = [False]  # whether the first stop came from torchrun, as a fellow worker had ended
_stopping: list[bool] = [False]  # whether the command has been interrupted and is stopping (a list: set in place)
_AGAIN_S = 0.05  # how long after a finalizer dropped an interrupt it comes again


def note_stop_signal(number: int) -> None:
    """Remember that signal `number` asked this process to stop: `interrupted_exit_code` reports the first, and
    `interruption` says why it came."""
    if not _received:
        _after_sibling[0] = number == signal.SIGTERM and _siblings[0].one_ended()
    _received.append(number)


def interruption() -> str:
    """What stopped the command, as its last message says it: "interrupted" (Ctrl-C, SIGTERM, SIGHUP), or, under
    torchrun, that torchrun stopped it as another process of the run had ended (failed, or stopped by a signal
    that this one did not get: torchrun then stops the others with SIGTERM). Each process of the run then says what
    happened to it, rather than every one saying "interrupted" for the one that was."""
    if _after_sibling[0]:
        return "stopped by torchrun, as another process of the run had ended (torchrun's report names it)"
    return "interrupted"


def interrupted_exit_code() -> int:
    """The exit code of the first stop signal received; Ctrl-C's when none was (a KeyboardInterrupt raised by other
    means)."""
    return EXIT_CODES[_received[0]] if _received else EXIT_INTERRUPTED


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """Within: the stop signals are noted, then call `handler(number)`; the handlers before are back after.

    A signal the process was started ignoring stays ignored (a job a script ran in the background ignores Ctrl-C,
    `nohup`-like launchers may ignore SIGTERM). Outside the main thread, where Python cannot set handlers, nothing
    changes.
    """
    if not _in_main_thread():
        yield
        return

    def noted(number: int, _frame: FrameType | None) -> None:
        note_stop_signal(number)
        if number == signal.SIGHUP:
            _leave_hung_up_terminal()
        handler(number)

    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number, before in previous.items():
        if before != signal.SIG_IGN:
            signal.signal(number, noted)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_interrupt_again, previous_hook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for number, before in previous.items():
            # None: a handler set outside Python, which cannot be put back; the default action is the nearest.
            signal.signal(number, signal.SIG_DFL if before is None else before)


def _leave_hung_up_terminal() -> None:
    """Point stdout and stderr at /dev/null where they are a terminal that hung up: every write there fails (EIO),
    and the bars and messages of a command stopping would turn its clean stop into a failure."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # an in-memory stream (a test's), closed
            descriptor = stream.fileno()
            # A device, not a file or pipe; not `isatty`, which a terminal whose other side has closed fails.
            if stat.S_ISCHR(os.fstat(descriptor).st_mode) and other_end_gone(descriptor):
                discard_writes(descriptor)


def _interrupt_again(previous_hook: Callable[[Any], None], unraisable: Any) -> None:
    """Python drops an exception raised in a finalizer (a `__del__`, a weakref callback: SQLAlchemy runs many as a
    session closes), so the KeyboardInterrupt of a signal that arrived there would be lost, and the stop with it.
    The signal comes again instead, a moment later and from another thread: sent at once, its handler would run in
    the finalizer again. A real signal, not a flag, so that a wait the program has gone on to ends at once."""
    if not (_received and issubclass(unraisable.exc_type, KeyboardInterrupt)):
        previous_hook(unraisable)
        return
    _stopping[0] = False  # the interrupt was dropped: the one sent again is the stop
    again = threading.Timer(_AGAIN_S, signal.pthread_kill, (threading.main_thread().ident, _received[-1]))
    again.daemon = True
    again.start()


@contextlib.contextmanager
def hangup_handled_by(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """Within: SIGHUP calls `handler` (a server's own graceful shutdown, as it takes SIGINT and SIGTERM), unless the
    process ignores it (a helper that leaves it to the command); the handler before is back after."""
    if not _in_main_thread() or signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        yield
        return
    before = signal.signal(signal.SIGHUP, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL if before is None else before)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Within: the stop signals wait (blocked for this thread) and come after. Helper processes started within
    are born with them blocked, until `ignore_stop_signals`: one that arrives before is then dropped."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def ignore_stop_signals() -> None:
    """In a helper process of a command (a DataLoader worker): ignore the stop signals from now on. A terminal's
    Ctrl-C or hang-up and a service manager's or scheduler's stop (systemd, SLURM, `kill -- -PGID`) signal the whole
    process group; the command stops on them and ends its helpers itself, while a helper that died of the signal
    first would fail the command's work where it stands, before it could stop cleanly."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # born blocked (`stop_signals_blocked`): now ignored


def _raise_interrupt(_number: int) -> None:
    """The first stop signal interrupts the command; those after it (Ctrl-C pressed twice, a service manager's
    SIGTERM after a terminal's SIGINT) are only noted. The command is stopping already, and a second interrupt would
    land in what it does to stop (a run recording what it kept, a database connection closing) and end it there,
    with a traceback and without saying what was kept."""
    if _stopping[0]:
        return
    _stopping[0] = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupted_by_stop_signals() -> Iterator[None]:
    """Around a whole command: the first stop signal raises KeyboardInterrupt where the command is. Signals noted
    before (by an earlier command in this process, as in tests) are forgotten. A command that was interrupted ends
    its process ignoring further stop signals, which would otherwise interrupt the interpreter's own clean-up (the
    finalizers of PyTorch and SQLAlchemy) with a traceback."""
    _received.clear()
    _stopping[0] = False
    _after_sibling[0] = False
    _siblings[0] = MachineSiblings.now()
    try:
        with on_stop_signals(_raise_interrupt):
            yield
    finally:
        if _stopping[0]:
            atexit.unregister(_ignore_stop_signals)  # once, however many commands this process ran
            atexit.register(_ignore_stop_signals)  # after the others registered so far: run before them


def _ignore_stop_signals() -> None:
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


@contextlib.contextmanager
def ended_by_signal() -> Iterator[None]:
    """Within: a stop by SIGTERM or SIGHUP (the KeyboardInterrupt of `interrupted_by_stop_signals`) ends the
    process by that signal itself, once it has left the block (whose `with` and `finally` clauses have removed what
    it made). For a server (`serve`): a service manager counts a process that SIGTERM (or SIGHUP) ended as stopped
    cleanly, and exit code 143 as a failure. A stop by Ctrl-C goes on as KeyboardInterrupt. uvicorn, which takes
    the signals over while it runs, sends the one it got again once it has shut down: it arrives here the same
    way."""
    try:
        yield
    except KeyboardInterrupt:
        ending = {EXIT_CODES[number]: number for number in ENDING_SIGNALS}
        if (number := ending.get(interrupted_exit_code())) is not None:
            _end_by(number)
        raise


def _end_by(number: int) -> None:
    """End this process by signal `number`, with its default action (what was written first flushed)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader gone: nothing left to tell it
            stream.flush()
    signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {number})
    signal.raise_signal(number)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()

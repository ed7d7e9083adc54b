"""SIGINT, SIGTERM and SIGHUP, taken one way (`pengi_search.stop_signals`): what the command line and a training
run build on.

The commands themselves are stopped by real signals in test_reliability (index), test_watch (index --watch),
test_trainer_recipes (train) and test_serve_workers (serve, which ends by SIGTERM as servers do).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pengi_search.errors import EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED
from pengi_search.stop_signals import interrupted_by_stop_signals, interrupted_exit_code, interruption
from pengi_search.torchrun_env import MachineSiblings

from .indexing import send_to_self


@pytest.mark.parametrize(
    ("number", "code"),
    [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_TERMINATED), (signal.SIGHUP, EXIT_HANGUP)],
)
def test_each_signal_interrupts_and_the_exit_code_says_which(number, code):
    before = signal.getsignal(number)
    with interrupted_by_stop_signals(), pytest.raises(KeyboardInterrupt):
        send_to_self(number)
    assert interrupted_exit_code() == code
    assert signal.getsignal(number) == before  # put back


@pytest.mark.parametrize(
    ("number", "sibling_ended", "said"),
    [
        (signal.SIGTERM, True, "stopped by torchrun, as another process of the run had ended"),
        (signal.SIGTERM, False, "interrupted"),  # torchrun's own stop, passed on to every worker; or `kill`
        (signal.SIGINT, True, "interrupted"),  # Ctrl-C, which torchrun never sends a worker on its own
    ],
)
def test_under_torchrun_a_sigterm_after_a_fellow_worker_ended_is_said_as_torchruns_stop(
    monkeypatch, number: int, sibling_ended: bool, said: str
):
    """torchrun stops the other workers (SIGTERM) once one has ended with a code other than 0: each said
    "interrupted" as the one that was. A worker's fellow workers on its machine are noted as its command starts."""
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    fellows = [ended.pid] if sibling_ended else []
    monkeypatch.setattr(MachineSiblings, "now", classmethod(lambda cls: cls(fellows)))
    with interrupted_by_stop_signals(), pytest.raises(KeyboardInterrupt):
        send_to_self(number)
    assert interruption().startswith(said)


def test_a_signal_that_lands_in_a_finalizer_still_interrupts():
    """Python drops what a `__del__` or weakref callback raises (SQLAlchemy runs many as its sessions close): the
    interrupt comes again once the finalizer is done, rather than being lost with the exception."""

    class SignalledWhileFinalized:
        def __del__(self) -> None:
            send_to_self(signal.SIGTERM)

    with interrupted_by_stop_signals(), pytest.raises(KeyboardInterrupt):
        SignalledWhileFinalized()  # dropped at once: finalized here
        time.sleep(60)  # where the program goes on
    assert interrupted_exit_code() == EXIT_TERMINATED


def test_a_signal_the_process_was_started_ignoring_stays_ignored():
    """A job a script ran in the background (`cmd &`) ignores Ctrl-C, and so it stays."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupted_by_stop_signals():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_second_signal_while_the_command_stops_does_not_interrupt_its_stopping():
    """Ctrl-C pressed twice, or a service manager's SIGTERM after it: the command stops on the first, and what it does
    to stop (an index run recording what it kept, a database connection closing) is not cut short by the second."""
    with interrupted_by_stop_signals():
        with pytest.raises(KeyboardInterrupt):
            send_to_self(signal.SIGTERM)
        try:
            send_to_self(signal.SIGINT)
            send_to_self(signal.SIGTERM)
        except KeyboardInterrupt:
            pytest.fail("a signal while the command stops interrupted its stopping")
    assert interrupted_exit_code() == EXIT_TERMINATED  # the first says how it ended


def test_a_command_stops_on_a_signal_again_after_an_earlier_one_in_the_same_process_stopped():
    with interrupted_by_stop_signals(), pytest.raises(KeyboardInterrupt):
        send_to_self(signal.SIGINT)
    with interrupted_by_stop_signals(), pytest.raises(KeyboardInterrupt):
        send_to_self(signal.SIGTERM)
    assert interrupted_exit_code() == EXIT_TERMINATED


def test_a_signal_while_an_interrupted_command_exits_prints_no_traceback():
    """After the command said it was interrupted, the interpreter's clean-up (PyTorch's finalizers run at exit) is
    not interrupted by another Ctrl-C with an "Exception ignored" traceback."""
    script = textwrap.dedent(
        """
        import signal, sys, weakref
        from pengi_search.stop_signals import interrupted_by_stop_signals

        class Library: ...

        kept = Library()
        weakref.finalize(kept, signal.raise_signal, signal.SIGINT)  # run at exit, as PyTorch's finalizers are
        try:
            with interrupted_by_stop_signals():
                signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (130, "interrupted\n")

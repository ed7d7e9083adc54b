"""SIGINT and SIGTERM, taken one way (`pengi_search.stop_signals`): what the command line and a training run build on.

The commands themselves are stopped by real signals in test_reliability (index), test_watch (index --watch),
test_trainer_recipes (train) and test_serve_workers (serve, which ends by SIGTERM as servers do).
"""

from __future__ import annotations

import signal
import time

import pytest

from pengi_search.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from pengi_search.stop_signals import interrupted_by_stop_signals, interrupted_exit_code

from .indexing import send_to_self


@pytest.mark.parametrize(("number", "code"), [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_TERMINATED)])
def test_either_signal_interrupts_and_the_exit_code_says_which(number, code):
    before = signal.getsignal(number)
    with interrupted_by_stop_signals(), pytest.raises(KeyboardInterrupt):
        send_to_self(number)
    assert interrupted_exit_code() == code
    assert signal.getsignal(number) == before  # put back


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

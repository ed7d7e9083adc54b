"""Streams whose other end has gone: a pipe or socket that nobody reads any more (`| head` has its line), or a
terminal whose other side closed (its window, an ssh session dropped); and what is written to them from then on.

Asked in two places: by the command line as it meets a broken pipe, whether it is the output's
(`cli.closed_output`, which then ends quietly with exit code 141), and by a stop on SIGHUP, whether the terminal
is gone (`stop_signals`). Both then send what is still written there to /dev/null (`discard_writes`), so that a
quiet end or a clean stop does not fail on its last writes.
"""

from __future__ import annotations

import os
import select


def other_end_gone(descriptor: int) -> bool:
    """Whether `descriptor`'s other end has gone: poll reports an error or a hang-up on it, which it reports for
    none that still has one (a file, a pipe still read, a live terminal). POSIX only (`select.poll`)."""
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def discard_writes(*descriptors: int) -> None:
    """From here on, what is written to `descriptors` (and what their streams still buffer) goes to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for descriptor in descriptors:
            os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)

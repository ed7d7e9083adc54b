"""A command whose output nobody reads any more: `pengi-search query x | head -1` once `head` has its line.

Python ignores SIGPIPE, so such a write raises BrokenPipeError; `handle_errors` ends the command on it the way `cat`,
`grep` and `git` end (the signal would have killed them): quietly, with exit code 141 (128 + SIGPIPE), which a
`set -o pipefail` script sees.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import sys
from collections.abc import Iterator
from typing import NoReturn, TextIO

import typer

from ..errors import EXIT_OUTPUT_CLOSED


@contextlib.contextmanager
def quiet_when_output_closed() -> Iterator[None]:
    """Around what writes a command's output (its run, and its help and usage errors, which the option parser
    writes): a reader gone ends it quietly (`end_quietly`); any other broken pipe is raised on."""
    try:
        yield
    except BrokenPipeError:
        if output_closed():
            end_quietly()
        raise


@contextlib.contextmanager
def whole_writes() -> Iterator[None]:
    """Around a command's run: every write to stdout is written whole, or raises.

    Under `python -u` or PYTHONUNBUFFERED=1 (which many container images set) stdout's text layer writes straight to
    the file descriptor, and CPython's TextIOWrapper drops what a partial write() left: a pipe whose reader went away
    while a large table was being written (`query x -k 500 | head -1`) lost the rest without an error, and the
    command ended with 0, not 141. A buffered layer writes all or raises; line buffering still sends each line out
    at once, as unbuffered output does.
    """
    original = sys.stdout
    if not isinstance(getattr(original, "buffer", None), io.RawIOBase):
        yield  # buffered already (the usual case), or a test's in-memory stream
        return
    raw = io.FileIO(original.fileno(), "w", closefd=False)  # the descriptor stays the original stream's to close
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw), encoding=original.encoding, errors=original.errors, line_buffering=True
    )
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):  # a reader gone: the command has already said so (141)
            sys.stdout.flush()
        sys.stdout = original


def output_closed() -> bool:
    """Whether a broken pipe is the command's output, its reader gone, rather than another pipe of the command
    (one to a decoding process that died), which is a failure like any other."""
    return _reader_gone(sys.stdout) or _reader_gone(sys.stderr)


def end_quietly() -> NoReturn:
    """End with exit code 141, saying nothing. The streams whose reader is gone write to /dev/null from here on,
    so that what is still buffered for them does not fail again as the interpreter exits (exit code 120, and an
    "Exception ignored" message)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        if _reader_gone(stream):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)
    raise typer.Exit(EXIT_OUTPUT_CLOSED)


def _reader_gone(stream: TextIO) -> bool:
    """Whether `stream` is a pipe or socket that nobody reads any more: poll reports an error or a hang-up on it
    (a terminal, a file or a pipe still read report neither)."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream (a test's), or a closed one
        return False
    if not hasattr(select, "poll"):  # Windows: nothing tells; a broken pipe there is most likely the output's
        return True
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))

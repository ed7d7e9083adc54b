"""A command whose output nobody reads any more: `pengi-search query x | head -1` once `head` has its line.

Python ignores SIGPIPE, so such a write raises BrokenPipeError; `handle_errors` ends the command on it the way `cat`,
`grep` and `git` end (the signal would have killed them): quietly, with exit code 141 (128 + SIGPIPE), which a
`set -o pipefail` script sees.

An output that is read but cannot take what is written (`> /dev/full`, a full disk, an I/O error) is a failure
instead: said in one line, by `output_failure`, as `cat: write error: No space left on device` is.
"""

from __future__ import annotations

import contextlib
import io
import select
import sys
from collections.abc import Iterator
from typing import NoReturn, TextIO

import typer

from ..errors import EXIT_OUTPUT_CLOSED, os_reason
from ..stream_ends import discard_writes, other_end_gone


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


class OutputError(OSError):
    """stdout cannot take what the command writes (`> /dev/full`, a full disk, an I/O error): unlike every other
    file a command writes (`WriteError`), it has no name to say, and is told apart by its class."""


class _Output(io.TextIOWrapper):
    """stdout's text layer, whose write failures are the output's (`OutputError`); a reader gone stays the
    BrokenPipeError that `quiet_when_output_closed` ends quietly.

    The failures are told apart here, above the buffer, and not in the raw layer below it: Python code there runs
    between the descriptor's write and the buffer counting it written, and a stop signal (SIGTERM, Ctrl-C) whose
    KeyboardInterrupt is raised in between left the written bytes in the buffer, written a second time as the
    command ended (`index --watch --json` printed its last run's line twice)."""

    def write(self, text: str) -> int:
        with _as_output_error():
            return super().write(text)

    def flush(self) -> None:
        with _as_output_error():
            super().flush()


@contextlib.contextmanager
def _as_output_error() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as err:
        raise OutputError(err.errno, err.strerror) from None


@contextlib.contextmanager
def whole_writes() -> Iterator[None]:
    """Around a command's run (and the help the option parser writes): every write to stdout is written whole, or
    raises, and a failure to write it is an `OutputError`.

    Under `python -u` or PYTHONUNBUFFERED=1 (which many container images set) stdout's text layer writes straight to
    the file descriptor, and CPython's TextIOWrapper drops what a partial write() left: a pipe whose reader went away
    while a large table was being written (`query x -k 500 | head -1`) lost the rest without an error, and the
    command ended with 0, not 141. A buffered layer writes all or raises; line buffering still sends each line out
    at once, as unbuffered output does. Buffered output keeps its buffering, and a terminal its line buffering.
    """
    original = sys.stdout
    try:
        descriptor = original.fileno()
    except (AttributeError, OSError, ValueError):  # a test's in-memory stream
        yield
        return
    if isinstance(original, _Output):
        yield  # the root command's, around this command's
        return
    unbuffered = isinstance(getattr(original, "buffer", None), io.RawIOBase)
    original.flush()
    raw = io.FileIO(descriptor, "w", closefd=False)  # the descriptor stays the original stream's to close
    sys.stdout = _Output(
        io.BufferedWriter(raw),
        encoding=original.encoding,
        errors=original.errors,
        line_buffering=unbuffered or original.line_buffering,
    )
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):  # said already: a reader gone (141), an OutputError (1)
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
    discard_writes(*(stream.fileno() for stream in (sys.stdout, sys.stderr) if _reader_gone(stream)))
    raise typer.Exit(EXIT_OUTPUT_CLOSED)


def output_failure(err: BaseException) -> str | None:
    """The message for `err` when it is stdout failing to take the command's output (an `OutputError`), else None.
    stdout writes to /dev/null from then on, so that what it still holds does not fail again as the interpreter
    exits (exit code 120, and an "Exception ignored" message)."""
    if not isinstance(err, OutputError):
        return None
    discard_writes(sys.stdout.fileno())
    return f"cannot write the output: {os_reason(err)}"


def _reader_gone(stream: TextIO) -> bool:
    """Whether `stream` is a pipe or socket that nobody reads any more: poll reports an error or a hang-up on it
    (a terminal, a file or a pipe still read report neither)."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream (a test's), or a closed one
        return False
    if not hasattr(select, "poll"):  # Windows: nothing tells; a broken pipe there is most likely the output's
        return True
    return other_end_gone(descriptor)

"""What C libraries print to stderr while they decode (libmpg123's "Illegal Audio-MPEG-Header", "Xing stream size
off ..."), caught so that it can be kept with the file it is about instead of scrolling past the user.

The C code writes to file descriptor 2 directly, below anything Python's `sys.stderr` controls, so the capture
points descriptor 2 at a private temporary file for the duration of a `with capture_stderr(notes)` block and reads
the file back afterwards. Descriptors belong to a process: decoding worker processes capture independently; in one
process a lock lets one thread capture at a time (a nested capture on the same thread is part of the outer one).
While a capture runs, whatever another thread of the process writes to stderr is caught with it; captures are kept
short (one decoded block) so that this stays rare. Where descriptor 2 cannot be redirected, nothing is captured and
the block runs as it would have.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import IO

MAX_NOTES = 20  # distinct lines kept per capture target; a broken MP3 can repeat one complaint thousands of times

_lock = threading.RLock()
_depth = 0  # captures open on the thread holding the lock
_sink: IO[bytes] | None = None
_sink_pid = 0  # a sink inherited through fork shares its offset with the parent's: each process makes its own


@contextlib.contextmanager
def capture_stderr(notes: list[str]) -> Iterator[None]:
    """Run the block with descriptor 2 captured; append the distinct lines written to it to `notes`."""
    global _depth
    with _lock:
        if _depth:
            yield
            return
        try:
            sink = _own_sink()
            saved = os.dup(2)
        except OSError:
            yield
            return
        _flush_python_stderr()
        try:
            os.dup2(sink.fileno(), 2)
        except OSError:
            os.close(saved)
            yield
            return
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            os.dup2(saved, 2)
            os.close(saved)
            add_notes(notes, _drain(sink))


def add_notes(notes: list[str], text: str) -> None:
    """Append the non-empty lines of `text` that `notes` does not hold yet, up to MAX_NOTES of them."""
    for line in text.splitlines():
        line = line.strip()
        if line and "\x1b" not in line and line not in notes and len(notes) < MAX_NOTES:
            notes.append(line)  # a line with terminal escapes is another thread's progress bar, not a decoder's


def _own_sink() -> IO[bytes]:
    global _sink, _sink_pid
    if _sink is None or _sink_pid != os.getpid():
        if _sink is None:
            atexit.register(_close_sink)
        else:  # a forked child's copy of its parent's: this process's descriptor, closed here
            _sink.close()
        _sink = tempfile.TemporaryFile(prefix="pengi-stderr-")  # noqa: SIM115 (kept open for the process)
        _sink_pid = os.getpid()
    return _sink


def _close_sink() -> None:
    """Close the sink as the process ends: left to the interpreter, it is an unclosed file, which `python -W
    error::ResourceWarning` (or -X dev) reports for any script that decoded audio."""
    if _sink is not None:
        _sink.close()


def _flush_python_stderr() -> None:
    """Text Python buffered for stderr goes out before the redirect, to where it was meant to go."""
    with contextlib.suppress(Exception):
        if sys.stderr is not None:
            sys.stderr.flush()


def _drain(sink: IO[bytes]) -> str:
    try:
        sink.seek(0)
        data = sink.read()
        sink.seek(0)
        sink.truncate()
    except OSError:
        return ""
    return data.decode("utf-8", "replace")

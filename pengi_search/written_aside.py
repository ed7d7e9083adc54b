"""Files written beside their place and renamed into it: a reader never sees one half-written, and a write that
fails (a full disk, Ctrl-C) leaves the previous file as it was and nothing of its own behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import PengiSearchError, os_reason


class WriteError(PengiSearchError):
    """A file could not be written (no space left, an I/O error): named, with what the system said."""


@contextlib.contextmanager
def written_aside(path: Path, partial: Path | None = None) -> Iterator[Path]:
    """The path to write `path`'s new content to (`partial`, by default `.NAME.partial` beside it), renamed over
    `path` when the block ends. When the block fails, the partial file is removed (on a full disk, it is what
    filled it) and an OSError becomes a WriteError naming `path`, as `error: PATH: cannot write (no space left on
    device)`; other exceptions, Ctrl-C included, pass through unchanged."""
    partial = partial or path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteError(path, f"cannot write ({os_reason(exc)})") from exc
        raise


def fsync_folder(folder: Path) -> None:
    """Make a rename into `folder` durable: its entry is on disk, not only in the page cache, when this returns.
    Only POSIX systems can open a folder to fsync it; elsewhere the rename is as durable as the system makes it."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

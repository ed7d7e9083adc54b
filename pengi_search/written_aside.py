"""Files written beside their place and renamed into it: a reader never sees one half-written, and a write that
fails (a full disk, Ctrl-C) leaves the previous file as it was and nothing of its own behind."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import PengiSearchError, os_reason
from .stop_signals import stop_signals_blocked


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


@contextlib.contextmanager
def folder_written_aside(path: Path) -> Iterator[Path]:
    """A folder's `written_aside`: the folder to write `path`'s new files in (`.NAME.partial` beside it), put in
    its place when the block ends, so that a reader finds the old folder or the new one whole, never one of
    mixed files (new weights beside the old configuration). When the block fails, Ctrl-C included, the partial
    folder goes and the old one stays as it was. Stop signals wait while the folders swap: the swap is two renames,
    and a Ctrl-C between them would leave neither in place."""
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # what an earlier write that was killed left
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    with stop_signals_blocked():
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(partial, path)
    shutil.rmtree(old, ignore_errors=True)


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

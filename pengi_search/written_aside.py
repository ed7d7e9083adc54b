"""Files written beside their place and renamed into it: a reader never sees one half-written, and a write that
fails (a full disk, Ctrl-C) leaves the previous file as it was and nothing of its own behind.

A place that is no file (`-o /dev/null`, `-o /dev/stdout`, a named pipe) is written in place: there is no previous
file to keep, and the rename would put a plain file where the device or pipe was (as root, in place of /dev/null).
A symbolic link is followed: its target gets the new content, and the link stays."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
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
    if written_in_place(path):
        with _write_errors_named(path):
            yield path
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    partial = target.with_name(partial.name if partial else f".{target.name}.partial")
    with _write_errors_named(path, partial):
        yield partial
        os.replace(partial, target)


@contextlib.contextmanager
def _write_errors_named(path: Path, partial: Path | None = None) -> Iterator[None]:
    """`written_aside`'s failures: the partial file removed, an OSError said as a WriteError naming `path`."""
    try:
        yield
    except BaseException as exc:
        if partial is not None:
            partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteError(path, f"cannot write ({os_reason(exc)})") from exc
        raise


# Where a path stands for one of the process's streams or a device, whatever it leads to: `/dev/stdout` of a
# command run `> out.txt` leads to the regular file out.txt, which the shell opened and the command must not replace.
_STREAM_FOLDERS = ("/dev/", "/proc/")


def written_in_place(path: Path) -> bool:
    """Whether `path` is written into rather than replaced: it is there and is no regular file (a device, a named
    pipe, a socket), or it lies under /dev or /proc (`/dev/stdout`, `/dev/fd/3`, bash's `>(...)`)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # not there yet (or not reachable): a new file, written aside
        return False
    return not stat.S_ISREG(mode) or os.path.abspath(path).startswith(_STREAM_FOLDERS)


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

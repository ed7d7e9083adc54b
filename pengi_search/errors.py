"""The one base of every failure a user can read and act on.

Each error says *where* (a file, URL, option or row) and *why*; the CLI turns it into one line on stderr and the
error's `exit_code` (see `pengi_search.cli.common`).
"""

from __future__ import annotations

import os

from .pathnames import shown

EXIT_OK = 0
EXIT_FAILED = 1  # the command could not do its work (missing model or database, another index run, ...)
EXIT_USAGE = 2  # bad arguments or a bad input file (labels, manifest, config); nothing was done
EXIT_PARTIAL = 3  # the command ran, but some audio inputs failed (each one reported), even if the only one
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


class PengiSearchError(Exception):
    """An expected failure: `str()` gives "<where>: <reason>" (or just the reason when `where` is empty), with a
    file name that is not valid UTF-8 shown escaped (`pathnames.shown`); `where` keeps it as it is."""

    exit_code = EXIT_FAILED

    def __init__(self, where: str | os.PathLike[str], reason: str) -> None:
        where = os.fspath(where)
        # Both values go to Exception.args so the error pickles across worker processes.
        super().__init__(where, reason)
        self.where = where
        self.reason = reason

    def __str__(self) -> str:
        return f"{shown(self.where)}: {self.reason}" if self.where else self.reason


class UsageError(PengiSearchError):
    """Bad arguments or a bad input file the user can fix; nothing was done."""

    exit_code = EXIT_USAGE

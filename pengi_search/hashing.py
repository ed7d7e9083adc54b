"""SHA-256 of files: content hashes in the library, weight fingerprints of models, checks on downloads.

Files are read in blocks, so hashing a 1 GB checkpoint never holds it in memory.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import _Hash

_BLOCK = 1 << 20


def sha256_hasher(path: str | os.PathLike[str], stop: threading.Event | None = None) -> _Hash:
    """A sha256 object fed with the file's bytes, for a caller that goes on feeding it (a download that resumes).
    `stop`, once set, ends the reading early: the hash is then of a part of the file, for no use."""
    hasher = hashlib.sha256()
    with open(path, "rb") as source:
        while not (stop and stop.is_set()) and (block := source.read(_BLOCK)):
            hasher.update(block)
    return hasher


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of the file's content."""
    return sha256_hasher(path).hexdigest()


class BackgroundSha256:
    """The hex sha256 of a file's content, read by a thread of its own while the caller reads the file too (a
    decoding process its audio): the caller's work starts at once instead of after a whole read of a file that may
    take minutes to read, and the two reads share the page cache. Reading and hashing release the interpreter lock.

    `result()` waits for the hash (raising what its reading met, an OSError as a rule); `cancel()` stops the reading."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._stop = threading.Event()
        self._digest: str | None = None
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._read, args=(path,), name="sha256", daemon=True)
        self._thread.start()

    def _read(self, path: str | os.PathLike[str]) -> None:
        try:
            self._digest = sha256_hasher(path, self._stop).hexdigest()
        except Exception as error:  # raised by `result()`, in the caller's thread, as a read there would raise it
            self._error = error

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None and not self._stop.is_set(), "the hash of a cancelled read"
        return self._digest

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()

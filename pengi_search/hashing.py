"""SHA-256 of files: content hashes in the library, weight fingerprints of models, checks on downloads.

Files are read in blocks, so hashing a 1 GB checkpoint never holds it in memory.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import _Hash

_BLOCK = 1 << 20


def sha256_hasher(path: str | os.PathLike[str]) -> _Hash:
    """A sha256 object fed with the file's bytes, for a caller that goes on feeding it (a download that resumes)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(_BLOCK):
            hasher.update(block)
    return hasher


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of the file's content."""
    return sha256_hasher(path).hexdigest()

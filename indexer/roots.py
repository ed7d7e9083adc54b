"""A run's roots as the places to query: the folders to ask the database below, and a test of which paths below
them are the roots'.

A run over a few folders (`index ~/Music/new ~/Samples`) asks below each of them: a search of the paths' index
each, which reads only their files, however large the library around them. `eval` hands the indexer every file of
its set as a root of its own (a file outside the set is never indexed or pruned): 20,000 roots for a 20,000-file
set, and a query per root would cost 20,000 queries each time the run asks "what is below the roots". Past
`PER_ROOT_MOST` roots the run asks once below their common folder instead and keeps, in Python, the paths that lie
at or below a root: for a set kept in one folder that reads just the set's rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

# The most roots asked about one by one; past it, below their common folder at once. Below a common folder that
# holds much else (two albums of a million-file library), one query reads all of it, where one a root reads theirs.
PER_ROOT_MOST = 8


class Roots:
    """Absolute `paths` (files or folders) as the folders to query (`folders`), all below `common`, and a membership
    test (`covers`)."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._paths = frozenset(path.rstrip("/") or "/" for path in paths)
        self.common: str | None = os.path.commonpath(self._paths) if self._paths else None
        # Each root asked about by itself (`folders` are the roots, none inside another: every path below one is
        # theirs, counted once), or, past PER_ROOT_MOST, their common folder.
        self.each_asked = len(self._paths) <= PER_ROOT_MOST
        if self.each_asked:
            self.folders: list[str] = sorted(path for path in self._paths if not self._below_another(path))
        else:
            self.folders = [] if self.common is None else [self.common]

    def covers(self, path: str) -> bool:
        """Whether `path` is one of the roots or lies below one: a walk up its folders, a set lookup each."""
        while True:
            if path in self._paths:
                return True
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent

    def _below_another(self, path: str) -> bool:
        """Whether the root `path` lies below another root."""
        parent = os.path.dirname(path)
        return parent != path and self.covers(parent)

"""A run's roots as one place to query: the folder they all lie in, and a test of which paths below it are theirs.

`eval` hands the indexer every file of its set as a root of its own (a file outside the set is never indexed or
pruned): 20,000 roots for a 20,000-file set. A query per root would cost 20,000 queries each time the run asks
"what is below the roots"; instead the run asks once below the roots' common folder and keeps, in Python, the
paths that lie at or below a root. That one query reads no more than one of the per-root queries could (the common
folder holds every root), so it is never worse, and for a set kept in one folder it reads just the set's rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


class Roots:
    """Absolute `paths` (files or folders) as one prefix to query (`common`) and a membership test (`covers`)."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._paths = frozenset(path.rstrip("/") or "/" for path in paths)
        self.common: str | None = os.path.commonpath(self._paths) if self._paths else None

    @property
    def one_folder(self) -> bool:
        """Whether the roots are `common` alone (a run over one folder, the usual one): every path below it is theirs,
        so a question about them can be answered by the database below `common` (a count) with nothing to keep."""
        return len(self._paths) == 1

    def covers(self, path: str) -> bool:
        """Whether `path` is one of the roots or lies below one: a walk up its folders, a set lookup each."""
        while True:
            if path in self._paths:
                return True
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent

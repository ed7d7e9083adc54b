"""Indexed files that a run copied from and that are gone from disk, outside the run's paths: a library's folder
moved or renamed (`mv ~/Sounds ~/Audio; pengi-search index ~/Audio`).

The run takes their windows by content hash (`indexer.reuse`), but prunes only below its own paths, so the old paths
stay indexed and every query finds each sound twice, first at a path that is gone. Nothing outside the run's paths
is removed (a drive may only be unmounted, as `pipeline._EMPTY_ROOT` says); instead the run names what
`pengi-search remove` should forget: the deepest folder holding all those files, or, where that folder still holds
indexed files that are on disk (which `remove` would forget too), narrower folders below it, down to single files.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from pengi_search.db import Store
from pengi_search.scan import inside

from .run_report import GoneSources

Forgettable = Callable[[str], bool]  # whether `remove PATH` would forget only files gone from disk


def left_behind(store: Store, sources: Sequence[str], roots: Sequence[str]) -> list[GoneSources]:
    """Where the `sources` (one per file the run copied, so a source may come twice) that lie outside `roots` and
    are gone from disk are, each path with how many of the run's files were copied from below it."""
    gone = Counter(
        source for source in sources if not any(inside(source, root) for root in roots) and not os.path.lexists(source)
    )
    if not gone:
        return []
    return [GoneSources(path, files) for path, files in _targets(gone, lambda path: _only_gone(store, path))]


def _targets(gone: Counter[str], forgettable: Forgettable) -> list[tuple[str, int]]:
    """The paths that `remove` takes to forget the `gone` files (with how many copies each had), and nothing that
    is still on disk: their deepest common folder when `forgettable`, else the same split by the entries of that
    folder (a gone file that lies right in it named itself)."""
    folder = os.path.commonpath([os.path.dirname(path) for path in gone])
    if forgettable(folder):
        return [(folder, gone.total())]
    groups: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for path, count in gone.items():
        first = os.path.relpath(path, folder).split(os.sep, 1)[0]
        groups[os.path.join(folder, first)][path] = count
    targets: list[tuple[str, int]] = []
    for entry, members in sorted(groups.items()):
        targets += [(entry, members.total())] if entry in members else _targets(members, forgettable)
    return targets


def _only_gone(store: Store, folder: str) -> bool:
    """Whether every file indexed at or under `folder` is gone from disk (the whole folder is, when it is gone)."""
    if not os.path.lexists(folder):
        return True
    return not any(os.path.lexists(path) for path in store.all_file_stamps(under=folder))

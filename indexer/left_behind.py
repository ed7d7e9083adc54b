"""Indexed files that a run copied from and that are gone from disk, outside the run's paths: a library's folder
moved or renamed (`mv ~/Sounds ~/Audio; pengi-search index ~/Audio`).

The run takes their windows by content hash (`indexer.reuse`), but prunes only below its own paths, so the old paths
stay indexed and every query finds each sound twice, first at a path that is gone. Nothing outside the run's paths
is removed (a drive may only be unmounted, as `pipeline._EMPTY_ROOT` says); instead the run names what
`pengi-search remove` should forget: the deepest folder holding all those files, or, where that folder still holds
indexed files that are on disk (which `remove` would forget too), narrower folders below it, down to single files.

A library indexed before schema revision 0002 has no content hashes, and a file gone from disk cannot be hashed
any more: the run decodes the moved files again, copying nothing. Their old paths are named all the same where they
have the size and mtime of a file the run indexed, as a move (`mv`, `rsync -a`, a file manager) keeps them: the size
alone would name an unmounted drive of unrelated clips of one length, which nothing tells from a moved folder.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from pengi_search.db import Store, unhashed_files
from pengi_search.scan import Entry

from .roots import Roots
from .run_report import GoneSources

Forgettable = Callable[[str], bool]  # whether `remove PATH` would forget only files gone from disk


def left_behind(store: Store, sources: Sequence[str], roots: Roots, indexed: Sequence[Entry] = ()) -> list[GoneSources]:
    """Where the `sources` (one per file the run copied, so a source may come twice) that lie outside `roots` and
    are gone from disk are, each path with how many of the run's files were copied from below it; with, for the
    files the run `indexed`, the unhashed files they were likely moved from (`_unhashed_sources`)."""
    gone = Counter(source for source in sources if _gone_outside(source, roots))
    gone.update(_unhashed_sources(store, indexed, roots))
    if not gone:
        return []
    return [GoneSources(path, files) for path, files in _targets(gone, lambda path: _only_gone(store, path))]


def _gone_outside(path: str, roots: Roots) -> bool:
    """Whether `path` lies outside the run's `roots` (which the run prunes itself) and is gone from disk. A walk up
    the path's folders (`Roots.covers`), not a test against each root: `eval` gives each of 20,000 files as a root."""
    return not roots.covers(path) and not os.path.lexists(path)


def _unhashed_sources(store: Store, indexed: Sequence[Entry], roots: Roots) -> list[str]:
    """For each of the `indexed` files, the first indexed file without a content hash that has its size and mtime
    and is gone from disk outside `roots`: the path it was likely moved from (one per file, as a copy has one)."""
    if not indexed:
        return []
    gone: defaultdict[tuple[int, float], list[str]] = defaultdict(list)
    for path, stamp in sorted(unhashed_files(store, {entry.size for entry in indexed}).items(), reverse=True):
        if _gone_outside(path, roots):
            gone[stamp].append(path)
    # Each gone path stands for one of the run's files (popped, first by name first): files of one size and time
    # (clips of one length copied with `cp -p`) were moved from as many paths.
    return [gone[stamp].pop() for stamp in ((entry.size, entry.mtime) for entry in indexed) if gone.get(stamp)]


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

"""Folders below a run's root that are still there but where the scan found no audio: an unmounted drive's mount
point (`~/Sounds/usb` with the drive away) looks like this. The files indexed under such a folder are kept, as those
of a root where the scan found nothing are, because pruning them would throw away hours of captioning for a drive
that is only unplugged; the run names the folder, and `pengi-search remove` forgets them. A folder that is gone from
disk is a deletion: its files are pruned.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from pengi_search.scan import inside


def emptied_folders(gone: Iterable[str], root: str, found: Iterable[str]) -> dict[str, str]:
    """Of the `gone` files below `root`, those whose deepest folder still on disk lies below `root` and holds none
    of the files the scan `found`, each with that folder."""
    with_audio = _folders_of(found, root)
    deepest: dict[str, str | None] = {}
    kept = {}
    for path in gone:
        folder = _deepest_existing(os.path.dirname(path), root, deepest)
        if folder is not None and folder not in with_audio:
            kept[path] = folder
    return kept


def _folders_of(files: Iterable[str], root: str) -> set[str]:
    """Every folder from each of `files` up to `root` (not included)."""
    folders: set[str] = set()
    for path in files:
        folder = os.path.dirname(path)
        while folder not in folders and folder != root and inside(folder, root):
            folders.add(folder)
            folder = os.path.dirname(folder)
    return folders


def _deepest_existing(folder: str, root: str, known: dict[str, str | None]) -> str | None:
    """`folder` or its nearest parent that is a folder on disk, when that lies below `root`; None when only `root`
    (or nothing below it) is left. `known` keeps the answers, since a run's gone files share their folders."""
    if folder == root or not inside(folder, root):
        return None
    if folder not in known:
        known[folder] = folder if os.path.isdir(folder) else _deepest_existing(os.path.dirname(folder), root, known)
    return known[folder]

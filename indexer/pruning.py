"""The files a run forgets: those indexed below its roots that are gone from disk. What the scan did not look at is
kept, not pruned: files under folders it could not list or under hidden names (without --hidden; not AppleDouble
files: earlier versions recorded those as failed), files of extensions not asked for, every file of a root where
the scan found nothing (an unmounted drive), and the files of a folder still there without audio
(`indexer.emptied_folders`). Each place files were kept at is noted once, with their count and the `remove` that
forgets them."""

from __future__ import annotations

import shlex
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

from pengi_search.db import Store
from pengi_search.pathnames import shown
from pengi_search.scan import ScanResult, has_extension, hidden_path, inside
from pengi_search.units import count_text, for_count

from .emptied_folders import emptied_folders
from .plan import file_stamps
from .roots import Roots
from .run_report import FileNote, IndexOptions

_HIDDEN_KEPT = (
    "{files} at or under this hidden path {were} kept {as_is}: runs without --hidden do not look at hidden names "
    "(`{remove}` forgets {them})"
)
_EMPTY_ROOT = "no audio file found here, so its {files} {were} kept (an unmounted drive?); `{remove}` forgets {them}"


@dataclass
class Pruned:
    """What a prune did: how many files it forgot, and the places whose files it kept, with why."""

    count: int = 0
    unseen_roots: list[FileNote] = field(default_factory=list)  # roots and folders without audio: their files kept
    hidden_kept: list[FileNote] = field(default_factory=list)  # hidden paths not walked: their files kept


def prune(store: Store, scanned: ScanResult, options: IndexOptions) -> Pruned:
    """Forget the files under the scanned roots that are gone, keeping what this scan did not see (see the module
    docstring)."""
    present = {entry.path for entry in scanned.entries}
    unlisted = [folder for folder, _ in scanned.unreadable_dirs]
    pruned = Pruned()
    # Read for all roots at once (`indexer.roots`): a root none of whose files is gone costs no query of its own.
    missing_anywhere = sorted(file_stamps(store, Roots(scanned.roots)).keys() - present)
    for root in scanned.roots:
        missing = _below(missing_anywhere, root)
        if not missing:
            continue
        unseen = _hidden_kept(store, root, missing, options, pruned) | {
            path
            for path in missing
            if not has_extension(path, options.extensions) or any(inside(path, d) for d in unlisted)
        }
        gone = missing - unseen
        if gone and not any(inside(path, root) for path in present):
            words = _counted(len(gone), root, store.db_option)
            pruned.unseen_roots.append(FileNote(root, _EMPTY_ROOT.format(**words)))
            continue
        kept = emptied_folders(gone, root, present)
        pruned.unseen_roots += _kept_notes(store, kept, _EMPTY_ROOT)
        pruned.count += store.prune_missing(present | unseen | set(kept), under=root)
    return pruned


def _below(paths: list[str], root: str) -> set[str]:
    """The sorted `paths` that are `root` or lie below it: `root` itself, and the run of paths from `root/` up to
    `root0` ('0' is the character after '/')."""
    folder = root.rstrip("/") + "/"
    below = paths[bisect_left(paths, folder) : bisect_left(paths, folder[:-1] + "0")]
    at = bisect_left(paths, root)
    return set(below) | ({root} if paths[at : at + 1] == [root] else set())


def _hidden_kept(store: Store, root: str, missing: set[str], options: IndexOptions, pruned: Pruned) -> set[str]:
    """Of the files under `root` this scan did not find, those it passed over for a hidden name (without
    --hidden): kept, each hidden path noted once with its count."""
    if options.hidden:
        return set()
    kept = {path: at for path in missing if (at := hidden_path(path, root)) is not None}
    pruned.hidden_kept += _kept_notes(store, kept, _HIDDEN_KEPT)
    return set(kept)


def _kept_notes(store: Store, kept: dict[str, str], note: str) -> list[FileNote]:
    """One note (`_HIDDEN_KEPT`, `_EMPTY_ROOT`) for each place that files were `kept` at, with their count."""
    counts = sorted(Counter(kept.values()).items())
    return [FileNote(at, note.format(**_counted(count, at, store.db_option))) for at, count in counts]


def _counted(files: int, at: str, db_option: str) -> dict[str, str]:
    """The words of a note on indexed files kept at the path `at` (`_HIDDEN_KEPT`, `_EMPTY_ROOT`), in the number of
    `files`, and the `remove` that forgets them: the path shell-quoted and the library's `Store.db_option`, so that,
    pasted, it acts on that path of that library."""
    words = {"were": ("was", "were"), "as_is": ("as it is", "as they are"), "them": ("it", "them")}
    remove = f"pengi-search remove {shlex.quote(shown(at))}{db_option}"
    return {"files": count_text(files, "indexed file"), "remove": remove} | {
        key: for_count(files, *forms) for key, forms in words.items()
    }

"""What a run must do with each file its scan found, from the database's stamps alone: nothing (same size and
mtime), re-stamp it (a new mtime, the same size and sha256), record it as failed without opening it (a broken link,
a FIFO), skip it (it failed before, and `--retry-errors` was not asked), or decode and describe it. Only a file
whose mtime moved is read, to hash it: an unchanged library costs a scan and a few queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pengi_search.db import FileStamp, Store
from pengi_search.hashing import file_sha256
from pengi_search.scan import Entry

from .roots import Roots


@dataclass
class Plan:
    todo: list[Entry] = field(default_factory=list)  # to decode and describe
    broken: list[Entry] = field(default_factory=list)  # unreadable without opening (broken link, FIFO)
    touched: list[Entry] = field(default_factory=list)  # new mtime, same size and content
    unchanged: int = 0
    skipped_errors: int = 0


def file_stamps(store: Store, roots: Roots) -> dict[str, FileStamp]:
    """What the database knows of every file below `roots`, by path: a query below each of `roots.folders`."""
    stamps: dict[str, FileStamp] = {}
    for folder in roots.folders:
        stamps.update(store.all_file_stamps(under=folder))
    return stamps if roots.each_asked else {path: stamp for path, stamp in stamps.items() if roots.covers(path)}


def plan_files(entries: Sequence[Entry], stamps: dict[str, FileStamp], retry_errors: bool) -> Plan:
    """Sort the scanned `entries` by what each needs, against their `stamps` (see the module docstring)."""
    plan = Plan()
    for entry in entries:
        stamp = stamps.get(entry.path)
        same_stamp = stamp is not None and (stamp.size, stamp.mtime) == (entry.size, entry.mtime)
        if stamp is not None and same_stamp and stamp.status == "indexed":
            plan.unchanged += 1
        elif stamp is not None and same_stamp and stamp.status == "error" and not retry_errors:
            plan.skipped_errors += 1
        elif entry.problem is not None:
            plan.broken.append(entry)
        elif stamp is not None and _same_content(entry, stamp, retry_errors):
            plan.touched.append(entry)
            if stamp.status == "error":
                plan.skipped_errors += 1
        else:
            plan.todo.append(entry)
    return plan


def _same_content(entry: Entry, stamp: FileStamp, retry_errors: bool) -> bool:
    """Whether a file with a new mtime still holds what was indexed (same size and sha256)."""
    if stamp.size != entry.size or stamp.content_hash is None:
        return False
    if stamp.status == "pending" or (stamp.status == "error" and retry_errors):
        return False
    try:
        return file_sha256(entry.path) == stamp.content_hash
    except OSError:
        return False  # decoding will report why it cannot be read

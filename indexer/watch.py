"""`index --watch`: telling when the folders of a library have changed and then settled, so that one incremental run
takes in the lot.

watchfiles reports what changes under the roots (the operating system's notifications: inotify, FSEvents,
ReadDirectoryChangesW; polling where `WATCHFILES_FORCE_POLLING=1` is set, e.g. on a network share that sends none).
Only changes an index run acts on count:
- a file with an extension being indexed (or a root given as a file): added, written, renamed or deleted;
- a folder that appears (moved in: its files bring no events of their own);
- a path that disappears with indexed files at or below it (a folder moved away or deleted), or a root itself;
and of these only what a run's walk reaches (`pengi_search.scan`): none below a hidden name without `hidden` (a
`.Trash-1000/` filling up, a sync tool's `.x.wav.tmp`), no AppleDouble file ever. So the library's own files (its
database and FAISS files, even inside a root) and other files (sidecars, editors' temporary files) never start a
run, and a run never starts the next one.

A run starts once no such change has come for `debounce_s`: copying many files gives one run, not one per file,
and a file still being written is not read half-way. Changes that come while a run works are kept for the next one:
a file that changed while the run read it was recorded as failed with the size and mtime it had before, so the
next run, which its change brings, sees it as changed and indexes it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence

import watchfiles

from pengi_search.db import Store, library_exists
from pengi_search.scan import absolute, has_extension, inside, skipped_at

DEFAULT_DEBOUNCE_S = 2.0
# How often waiting wakes up to look at the clock (watchfiles checks for Ctrl-C more often still); also the most
# that setting the watch up waits for a first report.
_TICK_MS = 100

Changes = set[tuple[watchfiles.Change, str]]


class LibraryWatch:
    """The changes under `roots` that an index run of `extensions` (and `hidden` names) into the library at `db`
    would act on.

    Watching starts when the object is made, so a change made during the first run is not missed; use it in a
    `with` block (or `close` it) to stop.
    """

    def __init__(
        self,
        roots: Sequence[str | os.PathLike[str]],
        extensions: frozenset[str],
        db: str | None,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        *,
        hidden: bool = False,
    ) -> None:
        self.roots = [absolute(root) for root in roots]
        self._given = [os.fspath(root) for root in roots]  # as the user wrote them, for messages
        self.debounce_s = debounce_s
        self._extensions = extensions
        self._hidden = hidden
        self._file_roots = frozenset(root for root in self.roots if not os.path.isdir(root))
        self._db = db
        self._pending: set[str] = set()  # changed paths not yet settled
        self._last = 0.0  # when the last of them came (time.monotonic)
        folders = [root for root in self.roots if root not in self._file_roots]
        # A file root is also watched through its folder: the watch on the file itself (which follows a link to
        # it) ends when the file is replaced by a rename, as recorders, editors and rsync save, or deleted; the
        # folder's sees the new file. Of that folder's changes only the file root's count (`_next_changes`).
        beside = sorted(self._file_roots | {os.path.dirname(root) for root in self._file_roots})
        self._folders = _watch(folders, recursive=True)
        self._beside = _watch(beside, recursive=False)

    def wait(self, timeout_s: float | None = None) -> set[str]:
        """Block until changes of interest have come and then none for `debounce_s`; the paths that changed, or
        none when `timeout_s` passed first (changes still settling are kept for the next call).

        Ctrl-C (and SIGTERM, as the command line handles it) raises KeyboardInterrupt (watchfiles checks for it while
        it waits)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if found := self._of_interest(self._next_changes()):
                self._pending |= found
                self._last = time.monotonic()
            now = time.monotonic()
            if self._pending and now - self._last >= self.debounce_s:
                settled, self._pending = self._pending, set()
                return settled
            if deadline is not None and now >= deadline:
                return set()

    def vanished(self) -> list[tuple[str, str]]:
        """The roots no longer there (moved away or deleted), as given, each with what it was: "file" or "folder"."""
        return [
            (given, "file" if root in self._file_roots else "folder")
            for given, root in zip(self._given, self.roots, strict=True)
            if not os.path.exists(root)
        ]

    def close(self) -> None:
        for changes in (self._folders, self._beside):
            close = getattr(changes, "close", None)
            if close is not None:
                close()  # ends watchfiles' generator, which stops its watcher

    def __enter__(self) -> LibraryWatch:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _next_changes(self) -> Changes:
        """What changed since the last call (each watch waits up to a tick for a first change)."""
        changes = next(self._folders) if self._folders is not None else set()
        if self._beside is not None:
            changes |= {(change, path) for change, path in next(self._beside) if path in self._file_roots}
        return changes

    def _of_interest(self, changes: Changes) -> set[str]:
        changes = {(change, path) for change, path in changes if self._walked(path)}
        found = {
            path
            for change, path in changes
            if self._indexable(path) or (change == watchfiles.Change.added and os.path.isdir(path))
        }
        gone = {path for change, path in changes if change == watchfiles.Change.deleted} - found
        # A root gone always counts, even with the library gone along (inside it): the watch then ends with an
        # error (`vanished`), where it would otherwise go on over a folder no longer there.
        return found | (gone & set(self.roots)) | self._held(_topmost(gone))

    def _walked(self, path: str) -> bool:
        """Whether a run reaches `path` by its name: a root, or a path below a folder root that its walk enters."""
        if path in self.roots:
            return True
        folders = (root for root in self.roots if root not in self._file_roots and inside(path, root))
        return any(skipped_at(path, root, hidden=self._hidden) is None for root in folders)

    def _indexable(self, path: str) -> bool:
        return has_extension(path, self._extensions) or path in self._file_roots

    def _held(self, paths: set[str]) -> set[str]:
        """The paths with indexed files at or below them: a folder moved away or deleted."""
        if not paths or not library_exists(self._db):
            return set()
        with Store.open(self._db, create=False, read_only=True) as store:
            return {path for path in paths if store.holds(path)}


def _watch(paths: list[str], *, recursive: bool) -> Iterator[Changes] | None:
    """watchfiles' changes under `paths`, reported at least every tick (None without paths)."""
    if not paths:
        return None
    changes = watchfiles.watch(
        *paths,
        watch_filter=None,  # filtered here, so that changes of no interest still let `wait` look at the clock
        recursive=recursive,
        rust_timeout=_TICK_MS,
        yield_on_timeout=True,
        ignore_permission_denied=True,  # an unreadable folder: the run reports it, as without --watch
    )
    next(changes)  # watchfiles sets the watch up when first asked; what it reports, the first run sees
    return changes


def _topmost(paths: set[str]) -> set[str]:
    """The paths that lie in no other of them: a deleted folder stands for what was deleted with it."""
    return {path for path in paths if not any(folder in paths for folder in _folders_above(path))}


def _folders_above(path: str) -> Iterator[str]:
    parent = os.path.dirname(path)
    while parent != path:
        yield parent
        path, parent = parent, os.path.dirname(parent)

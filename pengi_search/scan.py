"""Finding audio files: walk folders (following symbolic links, surviving loops) and stat what is found.

Nothing here opens a file: entries that cannot be audio files (broken links, FIFOs, devices) are reported with the
reason from their directory entry alone, so a scan never blocks on a pipe or a dead network mount's file.

A walk passes over hidden names (starting with "."), as ls, fd and ripgrep do: what real libraries hold beside
their audio (`.Trash-1000/`, `.Spotlight-V100/`, `.git/`, sync tools' and editors' temporary files such as
`.syncthing.x.tmp`) is no part of them, unless `hidden` asks for it. AppleDouble files (`._dog.wav`, the
metadata macOS writes beside each file on a drive or share that cannot hold it) are never audio, even then. A path
given as a root is always taken, hidden or not: the user named it. `skipped_at` applies the same rule to a path
found otherwise (the watch's change notifications, the library's records).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pengi_search.errors import OptionError, PengiSearchError, missing_reason, os_reason, read_reason

APPLEDOUBLE_PREFIX = "._"


class ScanError(PengiSearchError):
    """A path given to scan does not exist or is not a file or folder."""


@dataclass(frozen=True)
class Entry:
    """A file found by the scan: absolute path (links kept as found), size, mtime, and why it is unreadable."""

    path: str
    size: int
    mtime: float
    problem: str | None = None


@dataclass
class ScanResult:
    roots: list[str]
    entries: list[Entry]  # sorted by path, each path once
    unreadable_dirs: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason)


_NOT_IN_EXTENSIONS = re.compile(r"[\s*?\[\]/\\]")  # wildcards, path separators, blanks within a name


def normalize_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """Lower-case extensions with one leading dot, blanks dropped: ["WAV", ".flac", " "] -> {".wav", ".flac"}."""
    names = (ext.strip().lower().lstrip(".") for ext in extensions)
    return frozenset(f".{name}" for name in names if name)


def parse_extensions(value: str) -> frozenset[str]:
    """Comma-separated extensions: "wav,.FLAC" -> {".wav", ".flac"}; OptionError (a ValueError) if it names none,
    or a part is no extension: a glob (`*.mp3`) or a list not split by commas (`mp3 flac`) would match no file, and
    say nothing (a search with no results, an index of nothing)."""
    parts = value.split(",")
    if odd := next((part.strip() for part in parts if _NOT_IN_EXTENSIONS.search(part.strip())), None):
        raise OptionError("ext", "{odd!r} is no extension (write names alone, split by commas: e.g. wav,flac)", odd=odd)
    extensions = normalize_extensions(parts)
    if not extensions:
        raise OptionError("ext", "{value!r} names no extension (write e.g. wav,flac)", value=value)
    return extensions


def absolute(path: str | os.PathLike[str]) -> str:
    """An absolute, normalised path that keeps symbolic links as written (the form the store holds). A leading `~`
    is a name like any other: the shell expands the one a user means (see `paths.home_expanded`)."""
    return os.path.abspath(os.fspath(path))


def has_extension(path: str, extensions: frozenset[str]) -> bool:
    return os.path.splitext(path)[1].lower() in extensions


def inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it (both absolute)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def skipped_name(name: str, *, hidden: bool) -> bool:
    """Whether a walk passes over an entry of this name (see the module docstring)."""
    return name.startswith(APPLEDOUBLE_PREFIX) or (not hidden and name.startswith("."))


def skipped_at(path: str, root: str, *, hidden: bool) -> str | None:
    """The entry on the way from the folder `root` down to `path` (both absolute, `path` inside `root`) that a walk
    passes over, or None when it reaches `path` (the root itself is always reached)."""
    relative = os.path.relpath(path, root)
    if relative == os.curdir:
        return None
    names = relative.split(os.sep)
    for depth, name in enumerate(names, start=1):
        if skipped_name(name, hidden=hidden):
            return os.path.join(root, *names[:depth])
    return None


def hidden_path(path: str, root: str) -> str | None:
    """The hidden path (the topmost) that keeps a walk of the folder `root` without `hidden` from `path` below it;
    None when that walk reaches `path`, or when no walk does (an AppleDouble file, never audio)."""
    if skipped_at(path, root, hidden=True) is not None:
        return None
    return skipped_at(path, root, hidden=False)


def scan(roots: Sequence[str | os.PathLike[str]], extensions: frozenset[str], *, hidden: bool = False) -> ScanResult:
    """Every audio file under `roots` (folders are walked; a file named as a root is taken whatever its extension);
    hidden names below a root only with `hidden`, AppleDouble files never.

    Folders reached twice (a link loop, or a link to a folder already walked) are walked once, under the path that
    follows the fewest symbolic links: a folder under a root is walked where it lies, not through a link to it,
    whatever the names; a root is walked as given (in the order given). Folders that cannot be listed are reported
    in `unreadable_dirs`; raises ScanError only when a root itself is missing (before anything is walked).
    """
    absolute_roots = [absolute(root) for root in roots]
    walk = _Walk(extensions, hidden)
    folders: list[tuple[str, os.stat_result]] = []
    for given, root in zip(roots, absolute_roots, strict=True):
        try:
            info = os.stat(root)
        except OSError as exc:  # named as given, as every command names a missing input
            raise ScanError(given, read_reason(given, exc, "file or folder")) from exc
        if stat.S_ISDIR(info.st_mode):
            folders.append((root, info))
        else:
            walk.found[root] = _entry(root, info)
    walk.run(folders)
    return ScanResult(absolute_roots, [walk.found[path] for path in sorted(walk.found)], walk.unreadable)


def _folder_key(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


class _Walk:
    """One scan's walk, in rounds: the first walks the roots without entering linked folders, each later one the
    linked folders that the round before it found (sorted by path) and no round has walked yet. So a folder
    reached both where it lies and through a link (`a-link -> real`, beside `real`) is walked where it lies, and a
    link loop ends when its folders have all been walked."""

    def __init__(self, extensions: frozenset[str], hidden: bool) -> None:
        self.extensions, self.hidden = extensions, hidden
        self.found: dict[str, Entry] = {}
        self.unreadable: list[tuple[str, str]] = []
        self.seen: set[tuple[int, int]] = set()

    def run(self, folders: list[tuple[str, os.stat_result]]) -> None:
        while folders:
            links: list[tuple[str, os.stat_result]] = []
            for folder, info in folders:
                if _folder_key(info) not in self.seen:
                    self.seen.add(_folder_key(info))
                    links += sorted(self._tree(folder), key=lambda link: link[0])
            folders = links

    def _tree(self, top: str) -> list[tuple[str, os.stat_result]]:
        """Walk `top` and the folders below it that are not links; return the links to folders found there."""
        links: list[tuple[str, os.stat_result]] = []
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as listing:
                    children = sorted(listing, key=lambda child: child.name)
            except OSError as exc:
                self.unreadable.append((folder, f"cannot list folder ({os_reason(exc)})"))
                continue
            for child in children:
                if skipped_name(child.name, hidden=self.hidden):  # by name alone: not even a stat
                    continue
                if (info := self._visit(child)) is None:
                    continue
                if child.is_symlink():  # walked in a later round, unless reached where it lies by then
                    links.append((child.path, info))
                elif _folder_key(info) not in self.seen:  # a folder mounted twice (a bind mount) is walked once
                    self.seen.add(_folder_key(info))
                    stack.append(child.path)
        return links

    def _visit(self, child: os.DirEntry[str]) -> os.stat_result | None:
        """Stat a listed entry: an audio file goes into `found`; a folder's status is returned, to walk."""
        try:
            info = child.stat()  # follows links
        except OSError as exc:
            if has_extension(child.path, self.extensions):
                self.found[child.path] = _dangling(child, exc)
            return None
        if stat.S_ISDIR(info.st_mode):
            return info
        if has_extension(child.path, self.extensions):
            self.found[child.path] = _entry(child.path, info)
        return None


def stamp_of(info: os.stat_result) -> tuple[int, float]:
    """A file's size and mtime as the library records them (the mtime in seconds, from its nanoseconds)."""
    return info.st_size, info.st_mtime_ns / 1e9


def _entry(path: str, info: os.stat_result) -> Entry:
    problem = None if stat.S_ISREG(info.st_mode) else f"not a regular file ({_kind(info.st_mode)})"
    return Entry(path, *stamp_of(info), problem)


def _dangling(child: os.DirEntry[str], exc: OSError) -> Entry:
    """An entry whose target cannot be reached: a broken or looping link (stamped with the link itself)."""
    try:
        size, mtime = stamp_of(child.stat(follow_symlinks=False))
    except OSError:
        size, mtime = 0, 0.0
    reason = missing_reason(child.path) if child.is_symlink() else read_reason(child.path, exc)
    return Entry(child.path, size, mtime, reason)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"

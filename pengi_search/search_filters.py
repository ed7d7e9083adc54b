"""What a search's filters accept: a hit's score, its file's path (a glob over absolute paths), extension and
duration, and the files a search leaves out (`similar`'s query file, however it is reached).

`Filters` is read from the command line's options (`Filters.from_options`) and the server's parameters; `search`
applies it, the store-side part (the glob's literal folder, the durations: `Filters.folder`, `restricts_store`) to
the FAISS search itself and the rest to the hits.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .db import WindowDetails
from .errors import OptionError
from .pathnames import from_typed
from .scan import has_extension, normalize_extensions, parse_extensions

_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Filters:
    """Conditions a hit's file must meet; None means no condition."""

    min_score: float | None = None
    path_glob: str | None = None  # fnmatch pattern over the full path
    extensions: frozenset[str] | None = None  # as given ("WAV", ".flac", "wav,flac"), kept lower-case with the dot
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    exclude_paths: frozenset[str] = frozenset()  # left out however they are reached (see `_left_out`)

    def __post_init__(self) -> None:
        # A script's {"mp3"} would match no file, silently, if kept as given: the names are compared with the dot.
        if (given := self.extensions) is not None:
            names = parse_extensions(given) if isinstance(given, str) else normalize_extensions(given)
            object.__setattr__(self, "extensions", names)
        low, high = self.min_duration_s, self.max_duration_s
        if low is not None and high is not None and low > high:
            # No file can match: say so rather than answer "no results" as if the library lacked them.
            raise OptionError(
                "min_duration", "{low:g} is more than {max_duration} {high:g}: no file can match", low=low, high=high
            )

    @classmethod
    def from_options(
        cls,
        *,
        min_score: float | None = None,
        path: str | None = None,
        ext: str | None = None,
        min_duration: float | None = None,
        max_duration: float | None = None,
    ) -> Filters:
        """Command-line values: a relative `path` glob is taken from the current folder (`\\xff` in it is the byte
        0xff of a name that is not UTF-8, see `pathnames.from_typed`), `ext` is "wav,.flac". A number that is not
        finite (`nan` parses as a float) is refused: no score or duration compares true with it."""
        if path == "":  # `--path "$UNSET"`: as a glob from the current folder it would match nothing, silently
            raise OptionError("path", "is empty; give a glob such as '*/dogs/*', or leave the option out")
        bounds = {"min_score": min_score, "min_duration": min_duration, "max_duration": max_duration}
        for option, value in bounds.items():
            if value is not None and not math.isfinite(value):
                raise OptionError(option, "{value} is not a finite number", value=value)
        return cls(
            min_score=min_score,
            path_glob=None if path is None else absolute_glob(from_typed(path)),
            extensions=None if ext is None else parse_extensions(ext),
            min_duration_s=min_duration,
            max_duration_s=max_duration,
        )

    def folder(self) -> str | None:
        """The literal folder the glob starts with (a store-side restriction), if any."""
        if self.path_glob is None:
            return None
        literal = _WILDCARD.split(self.path_glob, maxsplit=1)[0]
        folder = literal if literal == self.path_glob else literal.rpartition("/")[0]
        if not _one_spelling(folder):  # the store compares names as stored: end the folder before the first é
            spelled_once = next(end for end in range(len(folder), -1, -1) if _one_spelling(folder[:end]))
            folder = folder[:spelled_once].rpartition("/")[0]
        return folder or None

    def restricts_store(self) -> bool:
        return self.folder() is not None or self.min_duration_s is not None or self.max_duration_s is not None

    def names_files(self) -> bool:
        """Whether a condition is on the files' names (a path glob, extensions)."""
        return self.path_glob is not None or self.extensions is not None

    def accepts(self, window: WindowDetails) -> bool:
        """The conditions the store-side restriction does not cover (or covers only in part)."""
        if self.exclude_paths and _left_out(window.path, self.exclude_paths):
            return False
        return self.accepts_name(window.path)

    def accepts_name(self, path: str) -> bool:
        """Whether the path glob and the extensions accept the file at `path`."""
        if self.path_glob is not None and not fnmatch.fnmatch(_composed(path), _composed(self.path_glob)):
            return False
        return self.extensions is None or has_extension(path, self.extensions)


def _composed(name: str) -> str:
    """A name with each accented letter as one character (NFC): macOS writes `é` in names as `e` and a combining
    accent (NFD), while a keyboard types the one character, so a glob typed `*/Café/*` must match both spellings."""
    return unicodedata.normalize("NFC", name)


def _one_spelling(name: str) -> bool:
    """Whether `name` is spelled alike composed and decomposed (no letter it holds has two spellings)."""
    return unicodedata.is_normalized("NFC", name) and unicodedata.is_normalized("NFD", name)


def _left_out(path: str, excluded: frozenset[str]) -> bool:
    """Whether the file at `path` is one of `excluded`: by its path, or by the real path behind its links (a linked
    folder, a library indexed through a link). Only a path whose name is one of theirs is resolved: resolving every
    candidate would stat files on a mount that may not answer."""
    if path in excluded:
        return True
    name = os.path.basename(path)
    return any(os.path.basename(other) == name for other in excluded) and os.path.realpath(path) in excluded


def absolute_glob(pattern: str) -> str:
    """`pattern` as a glob over absolute paths: a relative one (not starting with a wildcard) is joined to the cwd."""
    pattern = os.path.expanduser(pattern)
    if pattern.startswith(("/", "*", "?", "[")):
        return pattern
    return Path.cwd().as_posix().rstrip("/") + "/" + pattern


def glob_under_folder(pattern: str) -> str | None:
    """The glob that finds the files under `pattern` when it is a folder on disk named without a wildcard (`--path
    sounds`: as a glob over whole paths it matches only a file of that name, so a search finds nothing); else None."""
    if _WILDCARD.search(pattern) or not os.path.isdir(os.path.expanduser(pattern)):
        return None
    return pattern.rstrip("/") + "/*"

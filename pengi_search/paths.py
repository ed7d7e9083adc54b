"""Where pengi-search keeps its files (models and the default index, under the user data directory), and how a
path is shown to the user who typed it."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from .errors import UnwritableFolderError, UsageError, os_reason, write_block
from .pathnames import shown

APP_NAME = "pengi-search"
HOME_ENV = "PENGI_SEARCH_HOME"  # the data folder, instead of the platform's


def home_expanded(path: str | os.PathLike[str]) -> Path:
    """`path` with a leading `~` or `~user` expanded; an unknown user's `~name` stays as written, as the shell leaves
    it (`Path.expanduser` raises RuntimeError there, which would reach the user as a traceback).

    Only for values no shell has seen (environment variables): a path given as an argument is taken as given, the
    shell having expanded what the user meant it to (`'~'`, quoted, is a folder named `~`)."""
    return Path(os.path.expanduser(os.fspath(path)))


def unexpanded_home(path: str | os.PathLike[str]) -> Path | None:
    """The folder named like a home folder (`~`, `~user`) that making `path` with its parents would create, or None.

    Such a name is a `~` no shell expanded: bash leaves the one of `--db=~/lib.db` (after `=`) as it is, and any in
    quotes. Made, it would sit in the current folder as a folder called `~`, one `rm -rf ~` away from deleting the
    real home folder; so commands refuse to make one (`refuse_unexpanded_home`), and use one that is already there."""
    absolute = Path(os.path.abspath(path))
    missing = [folder for folder in (absolute, *absolute.parents) if not folder.exists()]
    return next((folder for folder in reversed(missing) if folder.name.startswith("~")), None)


def refuse_unexpanded_home(path: str | os.PathLike[str]) -> None:
    """UsageError where making `path` (a folder, with its parents) would make a folder named `~` (`unexpanded_home`)."""
    folder = unexpanded_home(path)
    if folder is not None:
        raise UsageError(
            path,
            f"would make a folder named {folder.name!r}: a '~' the shell did not expand (it does not after '=' or "
            "in quotes); put a space, not '=', between the option and the path, or give the whole path",
        )


def as_typed(path: str | os.PathLike[str]) -> Path:
    """`path` as a user would type it in the current folder: relative to it when under it, else absolute. Symbolic
    links are kept (not resolved), as the user named them. For paths the program worked out (a configuration's,
    resolved against its file's folder), not for those the user gave, which are shown as given."""
    absolute = Path(os.path.abspath(path))
    here = Path.cwd()
    return absolute.relative_to(here) if absolute.is_relative_to(here) else absolute


def shown_path(path: str | os.PathLike[str]) -> str:
    """`as_typed(path)` for a terminal or a text file: relative to the current folder when under it (shorter
    tables), escaped (`pathnames.shown`: undecodable bytes, control characters); JSON keeps paths absolute and as
    they are."""
    return shown(os.fspath(as_typed(path)))


class GivenPath(type(Path())):  # type: ignore[misc]  # the platform's concrete class, as Path() makes
    """A path as the user gave it (a command-line option): `os.fspath` gives the text as typed, so every message
    made from it (an error's `where`) names `./labels.txt` as typed, where pathlib's `str` drops the `./`. Both
    texts name the same file. Equality, hashing and `str` are pathlib's; a path made from it (`parent`, `/`) names
    what pathlib names. Code that re-wraps a path it is given keeps this one with `as_path`."""

    _typed: str | None = None

    @classmethod
    def typed(cls, text: str | os.PathLike[str]) -> GivenPath:
        path = cls(text)
        path._typed = os.fspath(text)
        return path

    def __fspath__(self) -> str:
        return self._typed if self._typed is not None else super().__fspath__()


def as_path(path: str | os.PathLike[str]) -> Path:
    """`path` as a Path; one already (a `GivenPath`, whose text as typed messages show) kept as it is."""
    return path if isinstance(path, Path) else Path(path)


def named(path: str | os.PathLike[str]) -> Path:
    """How a message names `path`: as the user typed it when they gave it (a `GivenPath` made by `typed`), else
    `as_typed` (a path the program worked out, such as the checkpoint `--resume` found in the output_dir: made
    from a GivenPath, it is one too, with no text as typed)."""
    given = isinstance(path, GivenPath) and path._typed is not None
    return path if given else as_typed(path)


def data_dir() -> Path:
    """`PENGI_SEARCH_HOME` (`~` expanded), else the platform's user data directory (~/.local/share/pengi-search)."""
    return home_expanded(os.environ.get(HOME_ENV) or platformdirs.user_data_dir(APP_NAME))


def models_dir() -> Path:
    return data_dir() / "models"


def made_folder(folder: Path, *, library: bool = False) -> Path:
    """`folder`, made with its parents where missing, and one this process can write in: the data folder (or one in
    it) or, `library`, the folder of a library's database file. Else UnwritableFolderError, in one line: the folder,
    why (a read-only mount, a path under /proc, a file where a folder should be) and how to choose another."""
    refuse_blocked_folder(folder, library=library)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _folder_error(folder, "cannot make", _why_not_made(folder, exc), library=library) from exc
    blocked = write_block(folder)
    if blocked is not None:
        raise _folder_error(folder, "cannot write in", blocked, library=library)
    return folder


def refuse_blocked_folder(folder: Path, *, library: bool = False) -> None:
    """UnwritableFolderError, as `made_folder` says it, when a file stands where `folder` or a folder above it
    should be, so that no folder can be made there. Makes nothing: commands that only read a library in the data
    folder say the data folder's trouble in the words of those that would make it."""
    in_the_way = file_in_the_way(folder)
    if in_the_way is not None:
        reason = f"{shown_path(in_the_way)} is a file, not a folder"
        raise _folder_error(folder, "cannot make", reason, library=library)


def file_in_the_way(folder: str | os.PathLike[str]) -> Path | None:
    """The nearest of `folder` and the folders above it that exists, when it is not a folder (a file, a device):
    nothing below it can be made. None when there is none, or when the system will not say (mkdir then will)."""
    absolute = Path(os.path.abspath(folder))
    try:
        there = next(path for path in (absolute, *absolute.parents) if path.exists())  # the root, at the latest
    except OSError:
        return None
    return None if there.is_dir() else there


def choose_elsewhere(*, in_data: bool, library: bool) -> str:
    """How to choose another folder: another data folder, or another place for the library's file."""
    choices = [f"another data folder with {HOME_ENV}=FOLDER"] if in_data else []
    if library:
        choices.append("another library file with --db FILE")
    return "choose " + (", or ".join(choices) or "another folder")


def _folder_error(folder: Path, verb: str, why: str, *, library: bool) -> UnwritableFolderError:
    """`made_folder`'s one line: the folder as typed, what it is to pengi-search, why not, and how to choose another."""
    absolute, data = Path(os.path.abspath(folder)), Path(os.path.abspath(data_dir()))
    in_data = absolute.is_relative_to(data)
    what = "the data folder" if absolute == data else "a folder of the data folder" if in_data else "the folder"
    what = "the library's folder" if library and not in_data else what
    advice = choose_elsewhere(in_data=in_data, library=library)
    return UnwritableFolderError(as_typed(folder), f"{verb} {what} ({why})", advice)


def _why_not_made(folder: Path, error: OSError) -> str:
    """Why `error` kept `folder` from being made, naming the folder above to blame where it is not `folder` itself
    (`/proc/nope` of `/proc/nope/pengi-search`). A file in the way is found before (`refuse_blocked_folder`)."""
    named = os.fspath(error.filename) if error.filename else None
    part = f"{shown_path(named)}: " if named and os.path.abspath(named) != os.path.abspath(folder) else ""
    return f"{part}{os_reason(error)}"

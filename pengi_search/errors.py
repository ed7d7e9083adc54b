"""The one base of every failure a user can read and act on.

Each error says *where* (a file, URL, option or row) and *why*; the CLI turns it into one line on stderr and the
error's `exit_code` (see `pengi_search.cli.common`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .pathnames import shown

EXIT_OK = 0
EXIT_FAILED = 1  # the command could not do its work (missing model or database, another index run, ...)
EXIT_USAGE = 2  # bad arguments or a bad input file (labels, manifest, config); nothing was done
EXIT_PARTIAL = 3  # the command ran, but some audio inputs failed (each one reported), even if the only one
EXIT_HANGUP = 129  # SIGHUP: the terminal closed, an ssh session dropped (128 + SIGHUP)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)
EXIT_OUTPUT_CLOSED = 141  # the reader of the output went away, `| head` (128 + SIGPIPE, as `cat` and `grep` end)
EXIT_TERMINATED = 143  # SIGTERM: kill, docker stop, systemd, SLURM, torchrun (128 + SIGTERM)


def _rebuilt(cls: type[BaseException], args: tuple[object, ...]) -> BaseException:
    """An error of class `cls` holding `args`, made without running its constructor (see `_pickled`)."""
    return cls.__new__(cls, *args)


def _pickled(error: BaseException) -> tuple[object, ...]:
    """How `error` pickles: remade from its class and `args`, then given back every attribute it had.

    Errors cross process boundaries (decode, DataLoader and serve workers). Pickle's default remakes an exception
    as `cls(*args)`, which fails for a constructor whose parameters are not what it passes on to `args`
    (`DownloadError(source, dest, reason)`, `OptionError(option, template, **values)`); this way no constructor
    runs, so every subclass round-trips, whatever its parameters."""
    return _rebuilt, (type(error), error.args), error.__dict__


class PengiSearchError(Exception):
    """An expected failure: `str()` gives "<where>: <reason>" (or just the reason when `where` is empty), with a
    file name that is not valid UTF-8 shown escaped (`pathnames.shown`); `where` keeps it as it is."""

    exit_code = EXIT_FAILED

    def __init__(self, where: str | os.PathLike[str], reason: str) -> None:
        where = os.fspath(where)
        super().__init__(where, reason)
        self.where = where
        self.reason = reason

    def __str__(self) -> str:
        return f"{shown(self.where)}: {self.reason}" if self.where else self.reason

    def __reduce__(self) -> tuple[object, ...]:
        return _pickled(self)


class UsageError(PengiSearchError):
    """Bad arguments or a bad input file the user can fix; nothing was done."""

    exit_code = EXIT_USAGE


class UnwritableFolderError(PengiSearchError):
    """A folder pengi-search keeps its files in (the data folder, a library's) cannot be made or written: `trouble`
    says what and why, `advice` how to choose another. A command that only reads needs no other folder: it says the
    trouble alone, with what it does instead (`index_files.save_index`)."""

    def __init__(self, where: str | os.PathLike[str], trouble: str, advice: str) -> None:
        super().__init__(where, f"{trouble}; {advice}")
        self.trouble = trouble
        self.advice = advice


def not_found(
    where: str | os.PathLike[str],
    what: str = "file",
    *,
    in_folder: str | None = None,
    kind: type[UsageError] = UsageError,
) -> UsageError:
    """Bad usage, of type `kind`, for a path the user gave that names no `what` ("file", "folder", "file or folder",
    "training checkpoint"): the one way every command says an input is missing. The path, as given (a `./` kept),
    is the error's `where`, so it is shown escaped, on one line; `missing_reason` says why."""
    return kind(where, missing_reason(where, what, in_folder=in_folder))


def missing_reason(where: str | os.PathLike[str], what: str = "file", *, in_folder: str | None = None) -> str:
    """Why `where` is no `what`: `no such file`, a broken symbolic link, a folder where a file was wanted (with
    `in_folder`, what to give instead), a file where a folder was, or something that is neither (a device)."""
    path = Path(where)
    if path.is_symlink() and not path.exists():
        return "broken symbolic link (its target does not exist or is a loop)"
    if not path.exists():
        return f"no such {what}"
    if path.is_dir():
        return f"a folder, not a {what}" + (f"; {in_folder}" if in_folder else "")
    if what == "folder":
        return "a file, not a folder"
    return f"not a regular {what} (a device, FIFO or socket)"


def os_reason(error: OSError) -> str:
    """What the system says went wrong, as a message goes on: `permission denied` (its strerror, lower-cased)."""
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def write_block(path: str | os.PathLike[str]) -> str | None:
    """Why this process cannot write `path` (a file, or a folder to make files in), as messages say it:
    `read-only file system` (a read-only mount, which root cannot write either) or `permission denied`; None when
    it can. What `os.access` finds, so that nothing is written to find out."""
    if os.access(path, os.W_OK):
        return None
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else "permission denied"


def read_reason(where: str | os.PathLike[str], error: OSError, what: str = "file") -> str:
    """Why `error` kept `where` from being read, as every message says it: a path that is gone (or is a folder) as
    `missing_reason` says it, anything else `cannot read (permission denied)`."""
    if isinstance(error, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return missing_reason(where, what)
    return f"cannot read ({os_reason(error)})"


def unreadable(path: str | os.PathLike[str], error: OSError, kind: type[UsageError] = UsageError) -> UsageError:
    """Bad usage, of type `kind`, for a file the user named that `error` kept from being read (`read_reason`)."""
    return kind(path, read_reason(path, error))


def refuse_unusable_file(
    path: Path, where: str | os.PathLike[str] | None = None, *, in_folder: str | None = None
) -> None:
    """Bad usage when `path` names no regular file (`missing_reason`, with `in_folder`) or one that cannot be opened
    for reading (`read_reason`), said of `where` (what the user typed, such as a URL; `path` by default). For a file
    checked before any work: what reads it later would blame something else (a checkpoint loader calls any failure
    "not a readable checkpoint")."""
    where = path if where is None else where
    if not path.is_file():  # before opening it: opening a FIFO would wait for a writer
        raise UsageError(where, missing_reason(path, in_folder=in_folder))
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise UsageError(where, read_reason(path, exc)) from None


def empty_file(advice: str = "") -> str:
    """How every message says that a file holds nothing (audio, labels, a CSV, a training configuration):
    `empty file`, then `advice`, what it should hold."""
    return f"empty file; {advice}" if advice else "empty file"


def first_line(err: BaseException) -> str:
    """An exception's message as one line (its first), or its class name when it says nothing: what a user reads
    of a library's exception, whose message may run over many lines of advice."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def cli_option(name: str) -> str:
    """An option's neutral name as the command line spells it: min_score -> --min-score."""
    return "--" + name.replace("_", "-")


class OptionError(ValueError):
    """A value an option cannot take, with the option's neutral name (`min_score`) apart from the reason, so that
    each front end names it its own way: `str()` is the command line's "--min-score nan is not a finite number",
    `option` and `reason(str)` are the JSON API's parameter `min_score` and "nan is not a finite number".

    `template` is the reason with the values as `{value}` fields (given as keywords) and any other option it names
    as `{option_name}`, spelled by the front end."""

    def __init__(self, option: str, template: str, **values: object) -> None:
        self.option = option
        self.template = template
        self.values = values
        super().__init__(f"{cli_option(option)} {self.reason(cli_option)}")

    def reason(self, spell: Callable[[str], str] = cli_option) -> str:
        """The reason, other options named as `spell` writes them."""
        return self.template.format_map(_Spelled(self.values, spell))

    def __reduce__(self) -> tuple[object, ...]:
        return _pickled(self)


class _Spelled(dict[str, object]):
    """Format fields: the values given, else an option name as `spell` writes it."""

    def __init__(self, values: dict[str, object], spell: Callable[[str], str]) -> None:
        super().__init__(values)
        self.spell = spell

    def __missing__(self, name: str) -> str:
        return self.spell(name)

"""The audio files that the paths given on a command line stand for (describe, ask, classify, similar, eval
classify): a folder walked for its audio, each file named as the user reached it, each once, missing ones refused;
and the names of what `index` and `remove` reach, given the same way."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

from ..errors import UsageError, not_found

AudioInputs = tuple[list[str], list[tuple[str, str]]]  # the audio files, and (path, reason) of those unreadable


def audio_files_in(folder: str, *, hidden: bool = False) -> AudioInputs:
    """The audio files in a folder (recursively, sorted; hidden names only with `hidden`), and the (path, reason)
    of entries that cannot be read, each named as reached from the folder as typed (`reached_name`).

    A folder with neither is bad usage (a typo'd or wrong folder) for every command that reads audio files from it
    (describe, ask, similar, classify, eval classify); `index` does not come here, and only warns: a drop folder may
    be empty.
    """
    from ..audio import AUDIO_EXTENSIONS
    from ..scan import ScanError, scan

    try:
        result = scan([folder], frozenset(AUDIO_EXTENSIONS), hidden=hidden)
    except ScanError as err:
        raise UsageError("", str(err)) from None
    name = functools.partial(reached_name, folder, *result.roots)
    files = [name(e.path) for e in result.entries if e.problem is None]
    problems = [(name(e.path), e.problem) for e in result.entries if e.problem is not None]
    problems += [(name(path), reason) for path, reason in result.unreadable_dirs]
    if not files and not problems:
        raise UsageError(folder, "no audio file in this folder")
    return files, problems


def reached_name(folder: str, root: str, found: str) -> str:
    """The name of `found`, which the scan of `folder` (as typed; `root` as the scan made it absolute) reached: the
    folder as typed joined with the path inside it, as ripgrep and fd name what they find (`sounds/dog.wav`,
    `/home/me/sounds/dog.wav`, `./sounds/dog.wav`). The one place a command names a file it found in a folder."""
    inside = os.path.relpath(found, root)
    return folder if inside == os.curdir else os.path.join(folder, inside)


def name_as_reached(found: str, targets: Sequence[str]) -> str:
    """The name of `found`, an absolute path that a walk of `targets` (the paths as typed) reached, or that the
    library holds below them (what `index` and `remove` report): a target itself as typed, a path inside one after
    the first target that holds it (`reached_name`), as `audio_inputs` names what it reaches; a path that none holds
    as it is."""
    from ..scan import absolute, inside

    roots = [(target, absolute(target)) for target in targets]
    if given := next((target for target, root in roots if root == found), None):
        return given
    holder = next(((target, root) for target, root in roots if inside(found, root)), None)
    return found if holder is None else reached_name(*holder, found)


def audio_inputs(targets: Sequence[str | os.PathLike[str]], *, hidden: bool = False) -> AudioInputs:
    """The audio files that files and folders given on the command line stand for, in the order given (a folder's
    recursively and sorted), each once, with the (path, reason) of entries that cannot be read. Each is named as
    reached: a file as typed, a folder's file as `reached_name` says. A file reached twice (given, and inside a given
    folder, or under another spelling) is kept once, where first reached, named as given directly if it was (else
    as first reached). Every target is checked before any file is read: a missing one is bad usage (describe, ask,
    similar, classify, eval classify)."""
    # Keyed by the file itself (its real path): a folder given under two spellings (a symbolic link and the folder it
    # points to) holds each file once. Matching on the library or a truth file uses the name's absolute path.
    names: dict[str, str] = {}  # real path -> the name shown
    given: set[str] = set()  # real paths of the files given directly: their name wins over a folder's
    unreadable: dict[tuple[str, str], str] = {}  # (real path, reason) -> the name shown
    for target in map(os.fspath, targets):
        found, problems = _audio_files_of(target, hidden)
        direct = not os.path.isdir(target)
        for name in found:
            key = os.path.realpath(name)
            if key not in names or (direct and key not in given):
                names[key] = name  # a key assigned again keeps its place in the order
            if direct:
                given.add(key)
        for name, reason in problems:
            unreadable.setdefault((os.path.realpath(name), reason), name)
    return list(names.values()), [(name, reason) for (_, reason), name in unreadable.items()]


def one_file_given(targets: Sequence[str | os.PathLike[str]]) -> bool:
    """Whether the command line names a single file, which a command answers on its own (a ranked table, a bare
    JSON object or list of hits) rather than as one entry of a list. Decided by what was given, never by what a
    folder turned out to hold, so that a script reads the same shape from a folder of one file as of many."""
    return len(targets) == 1 and not os.path.isdir(targets[0])


def _audio_files_of(target: str, hidden: bool) -> AudioInputs:
    """One target's audio files (a folder's, recursively and sorted) and those that cannot be read."""
    if os.path.isdir(target):
        return audio_files_in(target, hidden=hidden)
    if os.path.isfile(target):
        return [target], []
    raise not_found(target, "file or folder")

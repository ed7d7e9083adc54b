"""The `pengi-search index` commands that messages suggest, ready to paste: the folders as they are (the library's
own, where it holds files), each quoted for the shell, the options that shape the run, and the library as the user
named it (`Store.db_option`)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .scan import inside

if TYPE_CHECKING:
    from .db import Store

# Said in place of the folders where a library names none (an empty one) or too many to read on one line: the user
# writes their own (left unquoted: a word to replace, not a folder's name).
FOLDERS_PLACEHOLDER = "PATH..."
# The most folders a suggested command lists: past it, a library's tree is better named by the user.
MOST_FOLDERS = 8


def index_command(paths: Sequence[str | os.PathLike[str]] | None, *options: str, db_option: str) -> str:
    """`pengi-search index PATH...` with `options`: the `paths` (None: the placeholder), then `options`, each word
    quoted for the shell, then `db_option` (` --db VALUE`, already quoted, `urls.db_option`)."""
    folders = FOLDERS_PLACEHOLDER if paths is None else " ".join(shlex.quote(os.fspath(path)) for path in paths)
    words = "".join(f" {shlex.quote(option)}" for option in options)
    return f"pengi-search index {folders}{words}{db_option}"


def library_index_command(store: Store, *options: str) -> str:
    """The `index` command with `options` over the folders that hold the library's files (`library_folders`)."""
    return index_command(library_folders(store), *options, db_option=store.db_option)


def library_folders(store: Store, most: int = MOST_FOLDERS) -> list[str] | None:
    """The fewest folders that hold every file the library knows (none inside another) and are still there,
    sorted; None when there is none or they are more than `most`. What an `index --reindex` must walk to index each
    of its files anew (a folder gone would only be refused)."""
    parents = {os.path.dirname(path) for _, path in store.file_paths()}
    # Sorted by their parts, a folder comes right before the folders inside it (by text, `a/b c` sorts between
    # `a/b` and `a/b/x`).
    tops: list[str] = []
    for folder in sorted(parents, key=lambda folder: folder.split(os.sep)):
        if not tops or not inside(folder, tops[-1]):
            tops.append(folder)
    there = [folder for folder in tops if os.path.isdir(folder)]
    return there if 0 < len(there) <= most else None


def other_model_fix(store: Store, model: str | None, use_its_model: str) -> str:
    """What a command line does about a library that `model` (as given; None: the default model) did not build:
    `use_its_model` (how it is given the library's model instead), or the `index --reindex` to paste that builds
    the library anew with `model`."""
    anew = library_index_command(store, "--reindex", *(() if model is None else ("--model", model)))
    this = "the default model" if model is None else "this one"
    return f"{use_its_model}, or index the library anew with {this}: `{anew}`"

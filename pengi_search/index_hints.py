"""The `pengi-search index` commands that messages suggest, ready to paste: the folders as they are (the library's
own, where it holds files), each quoted for the shell, the options that shape the run, and the library as the user
named it (`Store.db_option`)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .db.folders import PathSpan, folder_contents, path_span

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
    sorted by their parts; None when there is none or they are more than `most`. What an `index --reindex` must
    walk to index each of its files anew (a folder gone would only be refused).

    The database answers a folder at a time (`db.folders`): a walk down from the folder all files lie in, which
    stops at a folder that holds a file itself (nothing inside it is another), skips a folder gone from disk
    (nothing inside it is there either) and ends once more than `most` are found, rather than a read of every
    path each time a hint is shown."""
    span = path_span(store)
    if span is None:
        return None
    found: list[str] = []
    _walk(store, _common_folder(span), found, most)
    return found if 0 < len(found) <= most else None


def _walk(store: Store, folder: str, found: list[str], most: int) -> None:
    """Add to `found` the folders below `folder` (itself included) that hold a file themselves and are there, in
    order, where no folder above `folder` holds a file itself and every file below it lies below `folder`."""
    if not os.path.isdir(folder):
        return
    contents = folder_contents(store, folder)
    if contents.holds_files:
        found.append(folder)
        return
    for name in sorted(contents.subfolders):  # by name: the order of the folders' parts, which `found` keeps
        if len(found) > most:
            return
        subfolder = os.path.join(folder, name)
        span = path_span(store, under=subfolder) if os.path.isdir(subfolder) else None  # gone: none below is there
        if span is not None:
            # Below the subfolder, the folders down to the one its files have in common hold none of their own.
            _walk(store, _common_folder(span), found, most)


def _common_folder(span: PathSpan) -> str:
    """The deepest folder that holds both paths of `span`, and so (in byte order) every path between them."""
    return os.path.commonpath([os.path.dirname(path) for path in span])


def other_model_fix(store: Store, model: str | None, use_its_model: str) -> str:
    """What a command line does about a library that `model` (as given; None: the default model) did not build:
    `use_its_model` (how it is given the library's model instead), or the `index --reindex` to paste that builds
    the library anew with `model`."""
    anew = library_index_command(store, "--reindex", *(() if model is None else ("--model", model)))
    this = "the default model" if model is None else "this one"
    return f"{use_its_model}, or index the library anew with {this}: `{anew}`"

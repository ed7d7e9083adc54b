"""A library's FAISS files, one per vector kind beside its database: what each file is and whose, read and written.

A file's tag records what its vectors came from (the text embedder or the model), the type asked for (what a
database older than the record of it has to go by) and which library wrote it (`library_id`): a file left beside the
database by a library deleted before this one was made at the same place holds another library's vectors under the
same window ids, and is taken as no file at all (`owned_tag`). Writers of a file take the lock beside it (`locked`);
a file that cannot be loaded or saved is a warning, never an error: the database is the source of truth, and
`library.Library` rebuilds from it. What a file's header says (`index_file`, `described_by_file`) is read without
loading its vectors where the header is enough.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

from .db import IndexMeta, Store, VectorIndexInfo, default_index_path
from .errors import UnwritableFolderError, os_reason
from .index_types import INDEX_TYPES
from .pathnames import shown
from .paths import made_folder
from .vector_file import DamagedIndexFileError, read_index_header, update_index_params
from .vectors import VectorIndex, VectorIndexError

log = logging.getLogger(__name__)

DEFAULT_INDEX_TYPE = "flat"


@dataclasses.dataclass(frozen=True)
class IndexFile:
    """A FAISS file as its header says: its size, and the removed vectors it still stores (`vectors`: tombstones;
    None when the header is damaged)."""

    bytes: int
    removed: int | None


def index_file(store: Store, kind: str) -> IndexFile | None:
    """The library's FAISS file of `kind` as its header says; None when there is none (another library's is none).

    Only the file's header is read: a damaged file still counts (it is rebuilt when next opened).
    """
    path = default_index_path(store.url, kind)
    try:
        tag, removed = read_index_header(path)
    except VectorIndexError:
        tag, removed = None, None
    except OSError:
        return None
    try:
        size = path.stat().st_size
    except OSError:  # removed (or replaced by a rebuild's rename) since its header was read: as good as none
        return None
    if tag is not None and owned_tag(store.index_meta(), path, tag) is None:
        return None
    return IndexFile(size, removed)


def described_by_file(store: Store, kind: str) -> VectorIndexInfo | None:
    """What a FAISS file written before the database kept its record of the index (`Store.vector_indexes`) says
    about itself; None when there is no such file of this library's."""
    path = default_index_path(store.url, kind)
    index, tag = load_own(store, path)
    if index is None or tag is None:
        return None
    try:
        written = path.stat().st_mtime
    except OSError:  # removed since it was read: as good as none
        return None
    return VectorIndexInfo(
        kind=kind,
        requested_type=requested_type(tag),
        effective_type=index.type,
        params=dataclasses.asdict(index.params),
        vectors=len(index),
        updated_at=datetime.fromtimestamp(written, timezone.utc),
    )


def tune_file(store: Store, path: Path, knobs: Mapping[str, int | None]) -> None:
    """Give the library's FAISS file at `path` the search `knobs`. One that is missing, damaged or another
    library's is left alone: the next command rebuilds it, with the knobs the database then holds."""
    try:
        tag, _removed = read_index_header(path)
    except (OSError, VectorIndexError):
        return
    if owned_tag(store.index_meta(), path, tag) is None:  # checked first: the rewrite makes it newer
        return
    try:
        update_index_params(path, knobs)
    except FileNotFoundError:
        return
    except DamagedIndexFileError as exc:
        log.warning("ignoring damaged vector index %s (it is rebuilt from the database): %s", path, exc.reason)


def index_tag(meta: IndexMeta | None, kind: str, index_type: str) -> str:
    """The tag a file of `kind` is saved with: what its vectors came from (embedder or model), the index type asked
    for and the library (`meta`: None before its first vectors)."""
    if meta is None:
        source = ""
    elif kind == "text":
        source = f"{meta.embedder.name}/{meta.embedder.dim}"
    else:
        source = f"{meta.model.name}@{meta.model.fingerprint}"
    fields = {"kind": kind, "source": source, "index_type": index_type}
    if meta is not None:
        fields["library"] = library_id(meta)
    return json.dumps(fields, sort_keys=True)


def requested_type(tag: str | None) -> str:
    """The index type a file's tag says was asked for (the default for a tag without one)."""
    if not tag:
        return DEFAULT_INDEX_TYPE
    try:
        value = json.loads(tag).get("index_type")
    except (ValueError, AttributeError):
        return DEFAULT_INDEX_TYPE
    return value if value in INDEX_TYPES else DEFAULT_INDEX_TYPE


def library_id(meta: IndexMeta) -> str:
    """What tells one library from another made later at the same place: when its first vectors were recorded
    (a re-index keeps it). Only a library with vectors has FAISS files worth telling apart."""
    return meta.created_at.isoformat()


def owned_tag(meta: IndexMeta | None, path: Path, tag: str) -> str | None:
    """The tag of the FAISS file at `path` as this library (`meta`: None before its first vectors) writes it, or
    None when the file was written for another library.

    A tag that names no library was written before tags did; it is this library's when the file is newer than the
    library (a leftover of a library deleted before this one was made is older), and is then read as if it named
    it, so that an upgrade does not rebuild every index. A tag that is not this module's JSON is left as it is
    (it never fits: the index is rebuilt).
    """
    try:
        fields = json.loads(tag)
    except ValueError:
        return tag
    if not isinstance(fields, dict):
        return tag
    ours = None if meta is None else library_id(meta)
    if meta is None or "library" in fields:
        return tag if fields.get("library") == ours else None
    try:
        written = path.stat().st_mtime
    except OSError:
        return None
    return None if written < meta.created_at.timestamp() else json.dumps({**fields, "library": ours}, sort_keys=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the FAISS file while checking and saving it.

    Processes take it in turn, each reading the database after the previous one saved, so the file on disk never
    goes back to an older state of the database. Where no lock can be taken (no fcntl, read-only folder) the
    database check on every open still keeps results right.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            made_folder(path.parent)
            handle = stack.enter_context(open(path.with_name(path.name + ".lock"), "a+b"))
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        except (OSError, UnwritableFolderError):  # saving says why: a warning, see `save_index`
            pass
        yield


def load_own(store: Store, path: Path) -> tuple[VectorIndex | None, str | None]:
    """The index saved at `path` and its tag (see `owned_tag`); (None, None) when missing, damaged or another
    library's. Another library's is replaced as a missing one is: an ordinary leftover, told only in the log."""
    loaded, tag = _load(path)
    if tag is None:
        return loaded, tag
    own = owned_tag(store.index_meta(), path, tag)
    if own is None:
        log.info("vector index %s was written for another library: it is not used", path)
        return None, None
    return loaded, own


def _load(path: Path) -> tuple[VectorIndex | None, str | None]:
    try:
        return VectorIndex.load(path)
    except (FileNotFoundError, NotADirectoryError):  # none there; a file in a folder's place holds none either
        return None, None
    except VectorIndexError as exc:
        log.warning("ignoring damaged vector index %s (it is rebuilt from the database): %s", path, exc.reason)
        return None, None


def save_index(index: VectorIndex, path: Path, tag: str, *, reader_option: str | None) -> None:
    """Save `index`, or warn why not: the index in memory is right, and the command goes on with it. A command
    reading the library (`reader_option`: its `Store.db_option`, None for one that writes) is told what happens
    instead of being sent to another folder: the library is where it is, and another folder is advice for the
    commands that write it."""
    try:
        index.save(path, tag)
    except UnwritableFolderError as exc:  # a read-only folder
        said = str(exc) if reader_option is None else f"{shown(exc.where)}: {exc.trouble}; {_unsaved(reader_option)}"
        log.warning("vector index not saved: %s", said)
    except VectorIndexError as exc:  # a full disk
        log.warning("vector index not saved: %s", exc)


def _unsaved(db_option: str) -> str:
    """What a command that only reads does with an index it brought in line but cannot save."""
    return (
        "it is brought up to date in memory for this command (one that can write in the folder saves it, such as "
        f"`pengi-search rebuild-index{db_option}`)"
    )


def removed_file(path: Path) -> None:
    """Remove a file that no longer fits, or warn why not: a read-only folder's is ignored all the same (its tag
    does not fit)."""
    if not path.exists():
        return
    try:
        path.unlink()
    except OSError as exc:
        log.warning("vector index not removed: %s: %s", shown(os.fspath(path)), os_reason(exc))

"""A FAISS file saved at the version of its kind's vectors that the database is at is trusted without reading
their ids; every write of vectors gives them a new version, so the next open checks the ids as before.

The ids are what a command on a large library used to read on every open (0.1 s a kind at 200,000 windows). On
SQLite and, when the tests have a server, PostgreSQL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from sqlalchemy import event

from pengi_search.db import (
    VECTOR_KINDS,
    Store,
    TextRecord,
    WindowCaptions,
    WindowInput,
    add_captions,
    copy_identical_file,
    drop_fast_captions,
    record_content_hash,
)
from pengi_search.library import Library
from pengi_search.vectors import VectorIndex

from .test_library import AUDIO_DIM, EMBEDDER, MODEL, add_file, in_line, two_files
from .test_store import db_url  # noqa: F401 (the fixture: SQLite, and PostgreSQL when a server is given)

IdReads = list[str]  # the kinds whose vector ids were read, in order

HASH = "0" * 64


@pytest.fixture
def db(db_url: str) -> str:  # noqa: F811 (a fixture)
    """`test_library`'s library, on SQLite and, when the tests have a server, on PostgreSQL."""
    return two_files(db_url)


@contextlib.contextmanager
def opened(db: str) -> Iterator[tuple[Library, IdReads]]:
    """The library, and the kinds whose vector ids its store read (statements listing window_vectors' ids alone;
    reading the vectors themselves, which a sync does for the windows it lacks, is not counted)."""
    reads: IdReads = []
    with Library.open(db) as library:

        def spy(_conn, _cursor, statement: str, parameters, *_args) -> None:
            if "FROM window_vectors" in statement and "window_vectors.vector" not in statement:
                reads.append(next(kind for kind in VECTOR_KINDS if kind in str(parameters)))

        event.listen(library.store.engine, "before_cursor_execute", spy)
        yield library, reads


def saved_version(library: Library, kind: str) -> int | None:
    return VectorIndex.load(library.index_path(kind))[0].vectors_version


def all_in_line(library: Library) -> bool:
    return all(in_line(library, kind) for kind in VECTOR_KINDS)


def test_a_file_saved_at_the_databases_version_opens_without_reading_the_ids(db: str) -> None:
    with opened(db) as (library, reads):
        library.sync_vector_indexes()
        assert reads == ["text", "audio"]
        versions = {kind: library.store.vector_state(kind).version for kind in VECTOR_KINDS}
        assert {kind: saved_version(library, kind) for kind in VECTOR_KINDS} == versions

    with opened(db) as (library, reads):
        text, audio = library.vector_index("text"), library.vector_index("audio")
        assert reads == [] and (len(text), len(audio)) == (5, 5)
        ids, vectors = library.store.vectors("text")
        assert text.search(vectors, 1)[1][:, 0].tolist() == ids.tolist()


def uncaptioned_file(store: Store, path: str = "/lib/c.wav") -> list[int]:
    """A file indexed by pass 1 (audio vectors only), with texts a --fast mode wrote; its window ids."""
    fast = [TextRecord("p", "a dog", None, "bf16+greedy")]
    windows = [WindowInput(i, 7.0 * i, 7.0 * (i + 1), fast, {"audio": np.ones(AUDIO_DIM)}) for i in range(2)]
    return store.replace_file_windows(store.upsert_file(path, size=1, mtime=1.0), windows).added_window_ids


def captions(store: Store) -> None:
    """Pass 2 writes the captions of the file `uncaptioned_file` made."""
    ids = [int(i) for i in store.vector_ids("audio")][-2:]
    add_captions(store, [WindowCaptions(i, [], np.ones(EMBEDDER.dim)) for i in ids])


def copy_of_a(store: Store) -> None:
    copy_identical_file(
        store, "/lib/copy.wav", [store.get_file("/lib/a.wav").id], lambda _: True, size=1, mtime=1.0, content_hash=HASH
    )


def a_hashed(store: Store) -> None:
    record_content_hash(store, "/lib/a.wav", (1, 1.0), HASH)


Write = Callable[[Store], object]
# name: (what the library holds first, the write, the kinds whose vectors it changes)
WRITES: dict[str, tuple[Write | None, Write, tuple[str, ...]]] = {
    "new file": (None, lambda store: add_file(store, "/lib/c.wav", 2, seed=3), VECTOR_KINDS),
    "file indexed anew": (None, lambda store: add_file(store, "/lib/a.wav", 3, seed=4), VECTOR_KINDS),
    "new file by pass 1": (None, uncaptioned_file, ("audio",)),
    "captions by pass 2": (uncaptioned_file, captions, ("text",)),
    "fast captions dropped": (uncaptioned_file, drop_fast_captions, VECTOR_KINDS),
    "copy of an indexed file": (a_hashed, copy_of_a, VECTOR_KINDS),
    "remove": (None, lambda store: store.remove("/lib/a.wav"), VECTOR_KINDS),
    "prune": (None, lambda store: store.prune_missing(["/lib/a.wav"]), VECTOR_KINDS),
    "full re-index": (None, lambda store: store.reset_index(MODEL, EMBEDDER), VECTOR_KINDS),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_write_from_another_store_makes_the_next_open_check_the_ids_of_the_kinds_it_wrote(
    db: str, write: str
) -> None:
    before, change, kinds = WRITES[write]
    if before is not None:
        with Store.open(db) as store:
            before(store)
    with opened(db) as (library, reads):
        library.sync_vector_indexes()
        with Store.open(db) as writer:  # another process, as an `index` run is
            change(writer)
        reads.clear()
        library.sync_vector_indexes()
        assert reads == [kind for kind in VECTOR_KINDS if kind in kinds] and all_in_line(library)
        reads.clear()
        library.sync_vector_indexes()  # once checked, trusted again
        assert reads == []


def test_a_rebuilt_file_is_trusted_at_the_next_open(db: str) -> None:
    with opened(db) as (library, _):
        library.sync_vector_indexes()
        assert library.rebuild("hnsw") == {"text": 5, "audio": 5}
    with opened(db) as (library, reads):
        assert library.vector_index("text").type == "hnsw" and reads == [] and all_in_line(library)


def test_a_file_saved_before_versions_is_checked_once_then_trusted(db: str) -> None:
    """A library upgraded from revision 0005 has FAISS files that record no version."""
    with opened(db) as (library, _):
        index = library.vector_index("text")
        index.vectors_version = None
        index.save(library.index_path("text"), VectorIndex.load(library.index_path("text"))[1])
    with opened(db) as (library, reads):
        library.vector_index("text")
        assert reads == ["text"] and saved_version(library, "text") == library.store.vector_state("text").version
    with opened(db) as (library, reads):
        library.vector_index("text")
        assert reads == [] and in_line(library, "text")


def test_a_window_deleted_while_its_vector_is_fetched_leaves_the_file_without_a_version(db: str) -> None:
    """The missing vectors are read after the ids: a window removed in between is not added, so the file does not
    hold the ids of the version read, and must not claim it."""
    with opened(db) as (library, _):
        library.sync_vector_indexes()
    with Store.open(db) as store:
        assert add_file(store, "/lib/c.wav", 2, seed=3).added_window_ids == [6, 7]
    with opened(db) as (library, reads):
        fetch = library.store.vector_batches

        def removed_meanwhile(kind: str, ids=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            with Store.open(db) as writer:
                writer.remove("/lib/c.wav")
            return fetch(kind, ids)

        library.store.vector_batches = removed_meanwhile  # type: ignore[method-assign]
        assert library.vector_index("text").ids().tolist() == [1, 2, 3, 4, 5]  # c's windows were gone
        assert reads == ["text"] and saved_version(library, "text") is None
    with opened(db) as (library, reads):
        assert library.vector_index("text").ids().tolist() == [1, 2, 3, 4, 5] and reads == ["text"]

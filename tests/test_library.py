"""The library's one FAISS policy: each saved index holds exactly the database's vectors of its kind.

A file that still fits (same source of vectors, same index type) is brought in line incrementally, fetching only
the vectors it lacks; a missing, damaged or foreign file, or one of another type, is rebuilt from the database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy import event
from typer.testing import CliRunner

from pengi_search import index_files
from pengi_search.cli import app
from pengi_search.db import ClosedLibraryError, EmbedderInfo, ModelInfo, ReplaceResult, Store, WindowInput
from pengi_search.doctor import check_vector_files
from pengi_search.index_files import index_file
from pengi_search.library import EmptyLibraryError, Library
from pengi_search.library_stats import index_info
from pengi_search.search import SearchScope, search_index
from pengi_search.serve.live import LiveLibrary
from pengi_search.vector_file import write_index_file
from pengi_search.vectors import VectorIndex, VectorIndexError

MODEL = ModelInfo("pengi-test", "f" * 64)
EMBEDDER = EmbedderInfo("embedder-a", 16)
AUDIO_DIM = 8
DIMS = {"text": EMBEDDER.dim, "audio": AUDIO_DIM}

Fetched = list[tuple[str, list[int] | None]]  # (kind, ids asked for; None: every vector of the kind)


def windows(count: int, seed: int, text_dim: int = EMBEDDER.dim) -> list[WindowInput]:
    rng = np.random.default_rng(seed)
    return [
        WindowInput(
            i,
            7.0 * i,
            7.0 * (i + 1),
            vectors={"text": rng.standard_normal(text_dim), "audio": rng.standard_normal(AUDIO_DIM)},
        )
        for i in range(count)
    ]


def add_file(store: Store, path: str, count: int, seed: int, text_dim: int = EMBEDDER.dim) -> ReplaceResult:
    file_id = store.upsert_file(path, size=1, mtime=1.0)
    return store.replace_file_windows(file_id, windows(count, seed, text_dim))


def two_files(db: str) -> str:
    """`db` (a path or URL) made a library of two files (3 + 2 windows, text and audio vectors), no FAISS file yet."""
    with Store.open(db) as store:
        store.set_index_meta(MODEL, EMBEDDER)
        add_file(store, "/lib/a.wav", 3, seed=1)
        add_file(store, "/lib/b.wav", 2, seed=2)
    return db


@pytest.fixture
def db(tmp_path: Path) -> str:
    return two_files(str(tmp_path / "lib.db"))


@contextlib.contextmanager
def opened(db: str) -> Iterator[tuple[Library, Fetched]]:
    """The library, and the vectors it reads from the database (a full read means a rebuild)."""
    fetched: Fetched = []
    with Library.open(db) as library:
        read = library.store.vector_batches

        def vector_batches(kind: str, ids=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            fetched.append((kind, None if ids is None else sorted(int(i) for i in ids)))
            return read(kind, ids)

        library.store.vector_batches = vector_batches  # type: ignore[method-assign]
        yield library, fetched


def saved_ids(library: Library, kind: str) -> list[int]:
    return VectorIndex.load(library.index_path(kind))[0].ids().tolist()


def built_types(library: Library) -> dict[str, tuple[str, str | None] | None]:
    """Per kind, (type asked for, type built) as the database records them."""
    return {
        kind: None if info is None else (info.requested_type, info.effective_type)
        for kind, info in index_info(library.store).items()
    }


def in_line(library: Library, kind: str) -> bool:
    return saved_ids(library, kind) == library.store.vector_ids(kind).tolist()


def test_the_first_open_builds_the_file_and_later_opens_only_read_it(db: str) -> None:
    with opened(db) as (library, fetched):
        index = library.vector_index("text")
        assert fetched == [("text", None)] and in_line(library, "text")
        assert library.vector_index("text") is index and len(fetched) == 1
        assert not library.index_path("audio").exists()  # built when first asked for

    with opened(db) as (library, fetched):
        index = library.vector_index("text")
        assert fetched == [] and index.ids().tolist() == library.store.vector_ids("text").tolist()
        ids, vectors = library.store.vectors("text")
        assert index.search(vectors, 1)[1][:, 0].tolist() == ids.tolist()


def test_new_windows_are_added_without_a_rebuild(db: str, caplog: pytest.LogCaptureFixture) -> None:
    with opened(db) as (library, _):
        library.sync_vector_indexes()
        added = add_file(library.store, "/lib/c.wav", 2, seed=3).added_window_ids

    with caplog.at_level(logging.INFO, logger="pengi_search.library"), opened(db) as (library, fetched):
        assert len(library.vector_index("text")) == 7
        assert fetched == [("text", added)] and in_line(library, "text")
    assert "2 added, 0 removed" in caplog.text


def test_replaced_and_removed_windows_leave_the_files(db: str) -> None:
    with opened(db) as (library, fetched):
        library.sync_vector_indexes()
        store = library.store
        fetched.clear()
        file_id = store.get_file("/lib/b.wav").id
        result = store.replace_file_windows(file_id, windows(2, seed=5))  # same count, new window ids
        library.sync_vector_indexes()
        assert fetched == [("text", result.added_window_ids), ("audio", result.added_window_ids)]
        assert all(in_line(library, kind) for kind in ("text", "audio"))

        fetched.clear()
        store.remove("/lib/a.wav")
        library.sync_vector_indexes()
        assert fetched == [] and saved_ids(library, "audio") == result.added_window_ids

        store.remove("/lib")
        library.sync_vector_indexes()
        assert saved_ids(library, "text") == [] and built_types(library) == {
            "text": ("flat", None),
            "audio": ("flat", None),
        }
        with pytest.raises(EmptyLibraryError, match="index PATH"):
            library.vector_index("text")


def test_a_file_for_another_text_embedder_is_rebuilt(db: str) -> None:
    with opened(db) as (library, fetched):
        library.sync_vector_indexes()
        library.store.reset_index(MODEL, EmbedderInfo("embedder-b", 12))
        added = add_file(library.store, "/lib/a.wav", 2, seed=6, text_dim=12).added_window_ids
        fetched.clear()
        library.sync_vector_indexes()
        # The text vectors come from another embedder; the audio vectors from the same model.
        assert fetched == [("text", None), ("audio", added)]
        assert library.vector_index("text").dim == 12 and in_line(library, "text") and in_line(library, "audio")


def test_a_file_with_a_foreign_tag_is_rebuilt_or_removed(db: str) -> None:
    with opened(db) as (library, _):
        library.vector_index("text").save(library.index_path("text"), tag="vectors of something else")

    with opened(db) as (library, fetched):
        library.vector_index("text")
        assert fetched == [("text", None)] and in_line(library, "text")
        library.vector_index("text").save(library.index_path("text"), tag="vectors of something else")
        library.store.remove("/lib")
        library.sync_vector_indexes()
        assert not library.index_path("text").exists()  # nothing to hold, and no type worth keeping


def test_a_file_that_no_longer_fits_and_cannot_be_removed_is_left_with_a_warning(
    db: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader in a folder it cannot write (a read-only share) goes on without the file, as it would without a
    file it cannot save."""
    with opened(db) as (library, _):
        library.vector_index("text").save(library.index_path("text"), tag="vectors of something else")
        library.store.remove("/lib")
    refused = library.index_path("text")
    real_unlink = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path == refused:
            raise PermissionError(13, "Permission denied", str(path))
        real_unlink(path, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with caplog.at_level(logging.WARNING, logger="pengi_search.index_files"), opened(db) as (library, _):
        library.sync_vector_indexes()
    assert refused.exists() and "vector index not removed" in caplog.text and "permission denied" in caplog.text


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-40] + bytes(b ^ 0xFF for b in data[-40:]), "checksum mismatch"),
        (lambda data: data[: len(data) // 2], "bytes where the header promises"),
        (lambda data: b"JUNK" + data[4:], "not a pengi-search vector index"),
    ],
    ids=["flipped", "truncated", "foreign"],
)
def test_a_damaged_file_is_rebuilt(
    db: str, caplog: pytest.LogCaptureFixture, damage: Callable[[bytes], bytes], reason: str
) -> None:
    with opened(db) as (library, _):
        path = library.index_path("text")
        library.vector_index("text")
    path.write_bytes(damage(path.read_bytes()))

    with caplog.at_level(logging.WARNING, logger="pengi_search.index_files"), opened(db) as (library, fetched):
        assert len(library.vector_index("text")) == 5
        assert fetched == [("text", None)] and in_line(library, "text")
    assert "ignoring damaged vector index" in caplog.text and reason in caplog.text

    with opened(db) as (library, fetched):
        library.vector_index("text")
        assert fetched == []


def test_another_index_type_rebuilds_and_is_kept(db: str) -> None:
    with opened(db) as (library, fetched):
        library.sync_vector_indexes()
        fetched.clear()
        library.sync_vector_indexes("hnsw")
        assert fetched == [("text", None), ("audio", None)]
        assert built_types(library) == {"text": ("hnsw", "hnsw"), "audio": ("hnsw", "hnsw")}
        added = add_file(library.store, "/lib/c.wav", 1, seed=4).added_window_ids

    with opened(db) as (library, fetched):
        assert library.vector_index("audio").type == "hnsw"
        assert fetched == [("audio", added)] and in_line(library, "audio")


def test_windows_removed_from_an_hnsw_index_stay_in_its_file_as_tombstones_that_no_count_sees(db: str) -> None:
    with opened(db) as (library, fetched):
        add_file(library.store, "/lib/c.wav", 20, seed=3)  # 25 windows: b's 2 are under the fifth that compacts
        library.sync_vector_indexes("hnsw")
        fetched.clear()
        library.store.remove("/lib/b.wav")
        library.sync_vector_indexes()
        saved = VectorIndex.load(library.index_path("audio"))[0]
        assert fetched == [] and saved.removed == 2 and in_line(library, "audio")
        assert index_info(library.store)["audio"].vectors == len(library.vector_index("audio")) == 23
        report, problems = check_vector_files(library.store)
        assert problems == [] and report["audio"]["state"] == "ok" and report["audio"]["vectors"] == 23

        assert library.rebuild() == {"text": 23, "audio": 23}
        assert VectorIndex.load(library.index_path("audio"))[0].removed == 0


def test_rebuild_reads_every_vector_and_remembers_an_ivfpq_request(db: str) -> None:
    with opened(db) as (library, fetched):
        library.sync_vector_indexes()
        fetched.clear()
        assert library.rebuild("ivfpq") == {"text": 5, "audio": 5}
        assert fetched == [("text", None), ("audio", None)]
        # Too few vectors to train IVF-PQ: the exact index serves, and the database keeps the request.
        assert built_types(library) == {"text": ("ivfpq", "flat"), "audio": ("ivfpq", "flat")}
        assert library.vector_index("text").type == "flat"
    with opened(db) as (library, fetched):
        assert library.vector_index("text").type == "flat" and fetched == []
        with pytest.raises(VectorIndexError, match="unknown 'lsh'"):
            library.sync_vector_indexes("lsh")


def test_an_index_that_cannot_be_saved_still_serves(
    db: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(_index: faiss.Index, _writer: faiss.IOWriter) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    with caplog.at_level(logging.WARNING, logger="pengi_search.index_files"), opened(db) as (library, _):
        index = library.vector_index("text")
        assert index.ids().tolist() == library.store.vector_ids("text").tolist()
        assert not library.index_path("text").exists()
    assert "vector index not saved" in caplog.text and "disk full" in caplog.text


def delete_and_make_anew(db: str, files: int) -> None:
    """`rm lib.db*`, which leaves the FAISS files (`lib.text.faiss`...), then a new library at the same path: its
    window ids start again at 1, under other vectors."""
    for part in Path(db).parent.glob(Path(db).name + "*"):
        part.unlink()
    with Store.open(db) as store:
        if files:
            store.set_index_meta(MODEL, EMBEDDER)
        for number in range(files):
            add_file(store, f"/new/{number}.wav", 1, seed=10 + number)


def test_the_faiss_files_of_a_deleted_library_are_not_those_of_a_new_one_at_the_same_path(db: str) -> None:
    with opened(db) as (library, _):
        library.sync_vector_indexes("hnsw")  # ids 1 to 5
    delete_and_make_anew(db, files=2)  # ids 1 and 2, other vectors

    with opened(db) as (library, fetched):
        index = library.vector_index("text")
        assert fetched == [("text", None)] and in_line(library, "text")  # built anew, not trimmed to ids 1 and 2
        ids, vectors = library.store.vectors("text")
        assert index.search(vectors, 1)[0][:, 0] == pytest.approx([1.0, 1.0], abs=1e-5)
        assert index.type == "flat"  # the type the other library asked for is not taken either
    with opened(db) as (library, fetched):
        library.vector_index("text")
        assert fetched == []  # the file is this library's now


def test_a_new_library_without_vectors_shows_and_keeps_no_faiss_file_of_the_deleted_one(db: str) -> None:
    with opened(db) as (library, _):
        library.sync_vector_indexes()
    delete_and_make_anew(db, files=0)

    with Library.open(db, read_only=True) as library:  # as `stats` reads it
        assert index_info(library.store) == {"text": None, "audio": None}
        assert index_file(library.store, "text") is None and index_file(library.store, "audio") is None
    with opened(db) as (library, _):
        library.sync_vector_indexes()
        assert not library.index_path("text").exists() and not library.index_path("audio").exists()


def test_a_file_written_before_files_named_their_library_is_kept_when_newer_than_the_library(db: str) -> None:
    """An upgrade reads the files an earlier version wrote (no rebuild); a leftover older than the library is not."""
    with opened(db) as (library, _):
        path = library.index_path("text")
        index = library.vector_index("text")
        tag = json.loads(VectorIndex.load(path)[1])
        del tag["library"]
        index.save(path, json.dumps(tag, sort_keys=True))
        created = library.store.index_meta().created_at.timestamp()
    with opened(db) as (library, fetched):
        library.vector_index("text")
        assert fetched == []
    os.utime(path, (created - 60, created - 60))  # saved before the library was made: another library's
    with opened(db) as (library, fetched):
        library.vector_index("text")
        assert fetched == [("text", None)] and in_line(library, "text")


def test_stats_and_doctor_count_the_removed_vectors_each_file_still_stores(db: str) -> None:
    with Library.open(db) as library:
        add_file(library.store, "/lib/c.wav", 20, seed=3)  # 25 windows: b's 2 are under the fifth that compacts
        library.sync_vector_indexes("hnsw")
        library.store.remove("/lib/b.wav")
        library.sync_vector_indexes()
    stats = json.loads(CliRunner().invoke(app, ["stats", "--db", db, "--json"]).stdout)["vector_indexes"]
    assert {kind: info["removed"] for kind, info in stats.items()} == {"text": 2, "audio": 2}
    text = CliRunner().invoke(app, ["stats", "--db", db]).stdout
    assert "audio index: 23 vectors, hnsw, default efSearch 64 (" in text
    assert "; 2 removed vectors kept in it until they pass a fifth)" in text

    doctor = CliRunner().invoke(app, ["doctor", "--db", db, "--json"])
    database = json.loads(doctor.stdout)["database"]
    assert {kind: info["removed"] for kind, info in database["vector_indexes"].items()} == {"text": 2, "audio": 2}
    assert not [problem for problem in json.loads(doctor.stdout)["problems"] if "index" in problem["where"]]
    doctor_text = CliRunner().invoke(app, ["doctor", "--db", db]).stdout
    assert re.search(r"audio index +ok, 23 of 23 vectors, 2 removed ones still stored\n", doctor_text)


def test_stats_counts_no_file_for_a_damaged_one_removed_while_it_was_read(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's size is taken after its header: a rebuild may remove a damaged file in between."""
    with opened(db) as (library, _):
        library.sync_vector_indexes()
        path = library.index_path("text")

    def read_then_removed(read: Path) -> tuple[str, int]:
        read.unlink()
        raise VectorIndexError(str(read), "truncated header")

    monkeypatch.setattr("pengi_search.index_files.read_index_header", read_then_removed)
    with Library.open(db, read_only=True) as library:
        assert index_file(library.store, "text") is None
    assert not path.exists()


def test_a_file_removed_once_read_describes_no_index(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A library indexed before the database kept its indexes' record is described from its file, whose time of
    writing is taken after it was read: a rebuild may remove it in between."""
    with opened(db) as (library, _):
        library.sync_vector_indexes()
    load_own = index_files.load_own

    def loaded_then_removed(store: Store, read: Path) -> tuple[VectorIndex | None, str | None]:
        index, tag = load_own(store, read)
        read.unlink()
        return index, tag

    monkeypatch.setattr(index_files, "load_own", loaded_then_removed)
    with Library.open(db, read_only=True) as library:
        assert index_files.described_by_file(library.store, "text") is None


def test_doctor_says_when_a_file_stores_more_removed_vectors_than_a_compaction_leaves(db: str) -> None:
    """A removal past the fifth compacts at once, so only a file written otherwise (by hand, by another version)
    holds more: searches pass over them until the next removal compacts it, or a rebuild."""
    with Library.open(db) as library:
        add_file(library.store, "/lib/c.wav", 15, seed=3)  # 20 windows: a's and b's 5 are over the fifth
        library.sync_vector_indexes("hnsw")
        gone = library.store.vector_ids("audio")[:5]
        library.store.remove("/lib/a.wav")
        library.store.remove("/lib/b.wav")
        path = library.index_path("audio")
        saved, tag = VectorIndex.load(path)
        write_index_file(path, saved._index, dataclasses.asdict(saved.params), tag, removed=gone)
        report, problems = check_vector_files(library.store)
    assert report["audio"] | {"path": ""} == {
        "path": "",
        "database_vectors": 15,
        "type": "hnsw",
        "vectors": 15,
        "removed": 5,
        "state": "ok",
    }
    [overdue] = [problem for problem in problems if problem.where == "audio index"]
    assert overdue.what.endswith("still stores 5 removed vectors of its 20, over the fifth that is compacted away")
    assert overdue.fix == "pengi-search rebuild-index"


@pytest.mark.parametrize("kind", [Library, LiveLibrary])
def test_a_closed_library_refuses_use_and_opens_no_connection_again(db: str, kind: type[Library]) -> None:
    """Use after `close` said so, where it used to reconnect on the quiet and leave connections nobody closed; a
    second `close` does nothing, and the database opens again as before."""
    library = kind(Store.open(db, read_only=True))
    library.vector_index("text")
    connections: list[object] = []
    event.listen(library.store.engine, "connect", lambda connection, _record: connections.append(connection))
    library.close()
    for use in (
        lambda: library.vector_index("text"),  # a LiveLibrary within its refresh interval too
        library.caption_counts,
        lambda: index_info(library.store),
        library.store.stats,
        lambda: library.store.engine,
    ):
        with pytest.raises(ClosedLibraryError, match=r"lib\.db: this library was closed"):
            use()
    assert connections == []
    library.close()
    with Library.open(db, read_only=True) as again:
        assert len(again.vector_index("text")) == 5


def test_threads_searching_one_library_at_once_load_each_index_once_and_find_what_a_search_alone_finds(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `Library` is thread-safe to search (README, "From Python"): threads that search it at once before its
    indexes are loaded wait for the one that loads each, and each finds what the same search finds alone."""
    rng = np.random.default_rng(7)
    searches = [(kind, rng.standard_normal((1, DIMS[kind]))) for kind in ("text", "audio") for _ in range(8)]
    scope = SearchScope(k=3, by="window")
    with Library.open(db) as alone:
        expected = [search_index(alone, alone.vector_index(kind), query, scope) for kind, query in searches]
    loads: list[str] = []
    load = Library._in_line

    def slow_load(library: Library, kind: str, *args, **kwargs) -> VectorIndex | None:
        loads.append(kind)
        time.sleep(0.05)  # a large index: long enough for every thread to ask for it meanwhile
        return load(library, kind, *args, **kwargs)

    monkeypatch.setattr(Library, "_in_line", slow_load)
    together = threading.Barrier(len(searches))

    def search(kind: str, query: np.ndarray) -> list:
        together.wait()
        return search_index(library, library.vector_index(kind), query, scope)

    with Library.open(db) as library, ThreadPoolExecutor(len(searches)) as pool:
        found = list(pool.map(search, *zip(*searches, strict=True)))
    assert found == expected
    assert sorted(loads) == ["audio", "text"]


class Told:
    """A library's `progress`: what each index it fills says, as (name, "start" or "advance", vectors)."""

    def __init__(self) -> None:
        self.said: list[tuple[str, str, int]] = []

    def __call__(self, name: str) -> Told.Fill:
        return Told.Fill(self, name)

    class Fill:
        def __init__(self, told: Told, name: str) -> None:
            self.told, self.name = told, name

        def start(self, vectors: int) -> None:
            self.told.said.append((self.name, "start", vectors))

        def advance(self, vectors: int) -> None:
            self.told.said.append((self.name, "advance", vectors))


def test_an_index_filled_from_the_database_says_how_far_it_is_and_one_in_line_says_nothing(db: str) -> None:
    """A rebuild, a compaction's re-fill and the first open that rebuilds a missing file went minutes in silence on
    millions of vectors: each says how many vectors it adds, then each batch added."""
    told = Told()
    with Library.open(db, progress=told) as library:
        library.vector_index("audio")  # the first open builds the file
        assert told.said == [("audio index", "start", 5), ("audio index", "advance", 5)]
        told.said.clear()
        library.rebuild("hnsw")
        assert told.said == [(f"{kind} index", step, 5) for kind in ("text", "audio") for step in ("start", "advance")]
        told.said.clear()
        library.sync_vector_indexes()  # in line: nothing to fill
        library.store.remove("/lib/b.wav")  # 2 of 5 vectors: past the fifth that an HNSW index re-fills without
        library.sync_vector_indexes()
        assert told.said == [(f"{kind} index", step, 3) for kind in ("text", "audio") for step in ("start", "advance")]

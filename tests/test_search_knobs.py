"""How searches trade speed for recall: HNSW's efSearch and IVF-PQ's nprobe, set by `rebuild-index --ef-search N
--nprobe N`, kept in the FAISS files and the database for every later search and rebuild, shown by `stats`."""

from __future__ import annotations

import contextlib
import errno
import json
import re
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from pengi_search import library as library_module
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_FAILED, EXIT_USAGE
from pengi_search.db import Store, WindowInput
from pengi_search.errors import OptionError
from pengi_search.index_types import cells_probed, searched_with
from pengi_search.library import Library
from pengi_search.library_stats import index_info, indexes_json
from pengi_search.paths import HOME_ENV
from pengi_search.serve.live import LiveLibrary
from pengi_search.vector_file import read_index_file, update_index_params
from pengi_search.vectors import VectorIndex

from .test_library import AUDIO_DIM, EMBEDDER, MODEL, add_file, opened, two_files
from .test_store import pg_url  # noqa: F401 (fixture: a PostgreSQL schema, when a server is given)

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def db(tmp_path: Path) -> str:
    return two_files(str(tmp_path / "lib.db"))


def ef_searches(library: Library) -> dict[str, int]:
    """Per kind, the efSearch its index is searched with now."""
    return {kind: library.vector_index(kind).params.ef_search for kind in ("text", "audio")}


def test_ef_search_set_at_a_rebuild_is_what_every_later_command_searches_with(db: str) -> None:
    with Library.open(db) as library:
        library.rebuild("hnsw", ef_search=7)
        assert ef_searches(library) == {"text": 7, "audio": 7}
    with Library.open(db, read_only=True) as library:  # another command: from the file
        assert ef_searches(library) == {"text": 7, "audio": 7}
        assert index_info(library.store)["text"].params["ef_search"] == 7


def test_a_rebuild_of_its_own_keeps_the_knobs_the_user_set(db: str) -> None:
    """A damaged or deleted file, another type and back, another rebuild: the value set stays until set again."""
    with Library.open(db) as library:
        library.rebuild("hnsw", ef_search=7)
        library.index_path("text").unlink()
    with Library.open(db) as library:
        assert library.vector_index("text").params.ef_search == 7
        library.sync_vector_indexes("flat")
        library.sync_vector_indexes("hnsw")
        library.rebuild()
        assert ef_searches(library) == {"text": 7, "audio": 7}
        library.rebuild(ef_search=9)
        assert ef_searches(library) == {"text": 9, "audio": 9}


def test_a_knob_set_while_a_kind_has_no_vectors_is_what_its_first_index_is_built_with(tmp_path: Path) -> None:
    """`index --captions later`: no caption vectors yet, so no text index to keep the value in; the database keeps
    it for the index the captions bring."""
    db = str(tmp_path / "lib.db")
    with Store.open(db) as store:
        store.set_index_meta(MODEL, EMBEDDER)
        audio_only = [
            WindowInput(i, 7.0 * i, 7.0 * (i + 1), vectors={"audio": np.ones(AUDIO_DIM) + i}) for i in range(3)
        ]
        store.replace_file_windows(store.upsert_file("/lib/a.wav", size=1, mtime=1.0), audio_only)
    with Library.open(db) as library:
        assert library.rebuild("hnsw", ef_search=7) == {"text": 0, "audio": 3}
        add_file(library.store, "/lib/b.wav", 2, seed=2)
    with Library.open(db) as library:
        assert ef_searches(library) == {"text": 7, "audio": 7}


def test_a_knob_for_another_index_type_is_refused_before_anything_is_rebuilt(db: str) -> None:
    with opened(db) as (library, fetched):
        library.sync_vector_indexes()
        fetched.clear()
        with pytest.raises(OptionError, match=r"^--ef-search tunes hnsw indexes, not flat \(the library's type; "):
            library.rebuild(ef_search=8)
        with pytest.raises(OptionError, match=r"^--nprobe tunes ivfpq indexes, not hnsw \(the type asked for\)$"):
            library.rebuild("hnsw", nprobe=4)
        assert fetched == []


def test_rebuild_index_refuses_a_knob_of_another_type_in_one_line_with_exit_2(db: str) -> None:
    result = run("rebuild-index", "--db", db, "--nprobe", "4")
    assert result.exit_code == EXIT_USAGE and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: --nprobe tunes ivfpq indexes, not flat (the library's type; --index-type ivfpq changes it)"
    ]
    for bad in ("0", "-3", "many"):
        refused = run("rebuild-index", "--db", db, "--index-type", "hnsw", "--ef-search", bad)
        assert refused.exit_code == EXIT_USAGE and "--ef-search" in refused.stderr, bad
    with Library.open(db, read_only=True) as library:
        assert {info.requested_type for info in index_info(library.store).values() if info} <= {"flat"}


def test_stats_and_rebuild_index_show_the_knob_each_index_is_searched_with(db: str) -> None:
    rebuilt = run("rebuild-index", "--db", db, "--index-type", "hnsw", "--ef-search", "40")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert rebuilt.stdout.splitlines()[:2] == [
        "text: 5 vectors (hnsw, efSearch 40)",
        "audio: 5 vectors (hnsw, efSearch 40)",
    ]
    assert "text index: 5 vectors, hnsw, efSearch 40 (" in run("stats", "--db", db).stdout
    shown = json.loads(run("stats", "--db", db, "--json").stdout)["vector_indexes"]["audio"]
    assert (shown["index_type"], shown["ef_search"], shown["nprobe"]) == ("hnsw", 40, None)

    assert run("rebuild-index", "--db", db, "--index-type", "flat").exit_code == 0
    shown = json.loads(run("stats", "--db", db, "--json").stdout)["vector_indexes"]["audio"]
    assert (shown["index_type"], shown["ef_search"], shown["nprobe"]) == ("flat", None, None)


def test_nprobe_asked_for_before_ivfpq_can_be_built_is_what_it_searches_with_once_built(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under IVFPQ_MIN_VECTORS the exact index serves, and the value waits for the IVF-PQ index; `stats` shows the
    cells probed, never more than there are."""
    monkeypatch.setattr("pengi_search.index_types.IVFPQ_MIN_VECTORS", 1000)  # an IVF-PQ index of 16 cells, built fast
    rebuilt = run("rebuild-index", "--db", db, "--index-type", "ivfpq", "--nprobe", "3", "--json")
    shown = json.loads(rebuilt.stdout)["vector_indexes"]["text"]
    assert (shown["index_type"], shown["nprobe"], shown["params"]["nprobe"]) == ("flat", None, 3)
    with Store.open(db) as store:
        add_file(store, "/lib/many.wav", 1000, seed=5)
    with Library.open(db) as library:
        index = library.vector_index("audio")
        assert (index.type, index.params.nprobe) == ("ivfpq", 3)
        assert indexes_json(library.store)["audio"]["nprobe"] == 3
        library.rebuild(nprobe=10_000)
        assert indexes_json(library.store)["audio"]["nprobe"] == library.vector_index("audio").params.nlist == 16


def test_nprobe_left_unset_shows_as_the_cells_a_search_probes() -> None:
    params = {"ef_search": 64, "nprobe": None, "nlist": 2048}
    assert searched_with("ivfpq", params) == {"ef_search": None, "nprobe": 32}
    assert searched_with("hnsw", params) == {"ef_search": 64, "nprobe": None}


# -- tune: the knobs changed without a rebuild ---------------------------------------------------------------------


def file_contents(library: Library, kind: str) -> tuple[bytes, dict, list[int], int | None]:
    """What the FAISS file of `kind` holds: faiss's serialisation of its vectors, its parameters, its tombstoned ids
    and the database's version it was saved at."""
    index, params, _tag, removed, version = read_index_file(library.index_path(kind))
    return faiss.serialize_index(index).tobytes(), params, removed.tolist(), version


@pytest.fixture(params=[("hnsw", "ef_search"), ("ivfpq", "nprobe")], ids=["hnsw", "ivfpq"])
def approximate(request: pytest.FixtureRequest, db: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(index type, the knob that tunes it) of each approximate type, `db` made large enough for it: IVF-PQ gets
    enough vectors for an index of 16 cells, built fast (IVFPQ_MIN_VECTORS lowered)."""
    index_type, knob = request.param
    if index_type == "ivfpq":
        monkeypatch.setattr("pengi_search.index_types.IVFPQ_MIN_VECTORS", 1000)
        with Store.open(db) as store:
            add_file(store, "/lib/many.wav", 1000, seed=5)
    return index_type, knob


def test_tune_changes_a_knob_in_the_files_and_the_database_without_adding_a_vector_again(
    db: str, approximate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    index_type, knob = approximate
    with Library.open(db) as library:
        library.rebuild(index_type)
        before = {kind: file_contents(library, kind) for kind in ("text", "audio")}
    builds: list[object] = []
    monkeypatch.setattr(VectorIndex, "build_streamed", lambda *args, **kw: builds.append(args))

    with opened(db) as (library, fetched):
        library.tune(**{knob: 3})
        assert fetched == [] and builds == []  # no vector read from the database, no index built
        for kind in ("text", "audio"):
            payload, params, removed, version = file_contents(library, kind)
            old_payload, old_params, old_removed, old_version = before[kind]
            assert (payload, removed, version) == (old_payload, old_removed, old_version)  # the same vectors
            assert params == {**old_params, knob: 3}
            assert index_info(library.store)[kind].params[knob] == 3
    with opened(db) as (library, fetched):  # another command: the file as it is, the knob in effect
        assert {getattr(library.vector_index(kind).params, knob) for kind in ("text", "audio")} == {3}
        assert fetched == [] and builds == []


def test_a_library_tuned_searches_with_the_knob_at_once_and_a_running_server_from_its_next_check(db: str) -> None:
    with Library.open(db) as library:
        library.rebuild("hnsw")
    with (
        Library.open(db) as tuner,
        LiveLibrary(Store.open(db, read_only=True), check_s=0) as server,
    ):
        served = server.vector_index("text")
        assert served._index.params.ef_search is None  # the default: 64
        tuner.vector_index("text")
        tuner.tune(ef_search=5)
        assert tuner.vector_index("text").params.ef_search == 5  # its own index in memory too
        assert server.vector_index("text")._index.params.ef_search == 5  # the file changed: loaded again


def test_tune_takes_the_lock_every_writer_of_the_files_takes(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Library.open(db) as library:
        library.rebuild("hnsw")
        locked: list[str] = []
        real = library_module.locked

        @contextlib.contextmanager
        def recorded(path: Path) -> Iterator[None]:
            with real(path):
                locked.append(path.name)
                yield

        monkeypatch.setattr(library_module, "locked", recorded)
        library.tune(ef_search=5)
        assert locked == [library.index_path("text").name, library.index_path("audio").name]


def test_auto_goes_back_to_the_automatic_choice_and_later_rebuilds_keep_it(
    db: str, approximate: tuple[str, str]
) -> None:
    index_type, knob = approximate
    with Library.open(db) as library:
        library.rebuild(index_type, **{knob: 3})
        library.tune(**{knob: "auto"})
        assert index_info(library.store)["audio"].params[knob] is None
    with Library.open(db) as library:
        index = library.vector_index("audio")
        assert getattr(index.params, knob) is None
        assert indexes_json(library.store)["audio"][knob] == (64 if knob == "ef_search" else cells_probed(None, 16))
        library.rebuild()
        assert getattr(library.vector_index("audio").params, knob) is None
        library.rebuild(**{knob: 4})
        library.rebuild(**{knob: "auto"})  # rebuild-index takes auto too
        assert indexes_json(library.store)["audio"]["params"][knob] is None


def test_stats_tells_the_default_knob_from_one_the_user_chose(db: str) -> None:
    assert run("rebuild-index", "--db", db, "--index-type", "hnsw").exit_code == 0
    assert "text index: 5 vectors, hnsw, default efSearch 64 (" in run("stats", "--db", db).stdout
    shown = json.loads(run("stats", "--db", db, "--json").stdout)["vector_indexes"]["text"]
    assert (shown["ef_search"], shown["params"]["ef_search"]) == (64, None)  # in effect; null: automatic

    tuned = run("tune", "--db", db, "--ef-search", "64")  # the same value, chosen
    assert tuned.exit_code == 0, tuned.output
    assert tuned.stdout.splitlines() == [
        "text: 5 vectors (hnsw, efSearch 64)",
        "audio: 5 vectors (hnsw, efSearch 64)",
        tuned.stdout.splitlines()[2],
    ]
    assert re.fullmatch(r"tuned in \d+\.\d s, nothing rebuilt", tuned.stdout.splitlines()[2])
    shown = json.loads(run("stats", "--db", db, "--json").stdout)["vector_indexes"]["text"]
    assert (shown["ef_search"], shown["params"]["ef_search"]) == (64, 64)

    back = json.loads(run("tune", "--db", db, "--ef-search", "auto", "--json").stdout)["vector_indexes"]["audio"]
    assert (back["ef_search"], back["params"]["ef_search"]) == (64, None)
    assert run("tune", "--db", db).stdout.splitlines() == [  # without options: what is in use, nothing changed
        "text: 5 vectors (hnsw, default efSearch 64)",
        "audio: 5 vectors (hnsw, default efSearch 64)",
    ]


def test_tune_refuses_a_knob_of_another_type_in_one_line_with_exit_2_changing_nothing(db: str) -> None:
    assert run("rebuild-index", "--db", db, "--index-type", "hnsw", "--ef-search", "9").exit_code == 0
    with Library.open(db) as library:
        before = {kind: file_contents(library, kind) for kind in ("text", "audio")}
    for knob in ("3", "auto"):
        refused = run("tune", "--db", db, "--nprobe", knob, "--ef-search", "5")
        assert refused.exit_code == EXIT_USAGE and refused.stdout == ""
        assert refused.stderr.splitlines() == [
            "error: --nprobe tunes ivfpq indexes, not hnsw (the library's type; pengi-search rebuild-index "
            "--index-type ivfpq changes it)"
        ]
    for bad in ("0", "-3", "many", ""):
        refused = run("tune", "--db", db, "--ef-search", bad)
        assert refused.exit_code == EXIT_USAGE and "--ef-search" in refused.stderr, bad
    with Library.open(db) as library:
        assert {kind: file_contents(library, kind) for kind in ("text", "audio")} == before
        assert index_info(library.store)["text"].params["ef_search"] == 9


def test_a_damaged_file_is_left_to_be_rebuilt_with_the_knob_tuned(db: str, caplog: pytest.LogCaptureFixture) -> None:
    with Library.open(db) as library:
        library.rebuild("hnsw")
        path = library.index_path("text")
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        library.tune(ef_search=5)
        assert "ignoring damaged vector index" in caplog.text
        assert path.read_bytes() == bytes(data)  # never given a checksum that would make it look whole
    with Library.open(db) as library:
        assert library.vector_index("text").params.ef_search == 5


def test_tune_on_a_full_disk_says_so_in_one_line_and_leaves_the_file_and_the_database_as_they_were(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("rebuild-index", "--db", db, "--index-type", "hnsw").exit_code == 0
    with Library.open(db) as library:
        before = {kind: file_contents(library, kind) for kind in ("text", "audio")}
        folder = library.index_path("text").parent
    files = sorted(folder.iterdir())

    def no_room(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pengi_search.vector_file.os.fsync", no_room)
    result = run("tune", "--db", db, "--ef-search", "5")
    assert result.exit_code == EXIT_FAILED and len(result.stderr.splitlines()) == 1
    assert "cannot write the index: [Errno 28] No space left on device" in result.stderr
    monkeypatch.undo()
    assert sorted(folder.iterdir()) == files  # no partial file left
    with Library.open(db) as library:
        assert {kind: file_contents(library, kind) for kind in ("text", "audio")} == before
        assert index_info(library.store)["text"].params["ef_search"] is None


def test_a_knob_tuned_on_another_machine_is_searched_with_here_and_not_written_back(db: str) -> None:
    """A PostgreSQL library's FAISS files are each machine's own: `tune` on one rewrote its files and the database,
    while another machine, its files older, searched with their knob and wrote it back over the database's at its
    next write (an `index` run's sync beside the tune, a `remove`). That older file is made here as it is there:
    the knob it had before the tune, in the file only."""
    with Library.open(db) as library:
        library.rebuild("hnsw")
        library.tune(ef_search=5)
        for kind in ("text", "audio"):
            update_index_params(library.index_path(kind), {"ef_search": None})
    with Library.open(db) as library:
        assert ef_searches(library) == {"text": 5, "audio": 5}
        library.sync_vector_indexes()  # what `remove` and an `index` run do
        assert {kind: info.params["ef_search"] for kind, info in index_info(library.store).items()} == {
            "text": 5,
            "audio": 5,
        }


def test_two_machines_of_a_postgresql_library_search_with_the_knob_either_tuned(
    pg_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same on a server's database, each machine's data folder holding its own FAISS files."""
    two_files(pg_url)
    machines = {name: tmp_path / name for name in ("one", "two")}
    monkeypatch.setenv(HOME_ENV, str(machines["one"]))
    with Library.open(pg_url) as library:
        library.rebuild("hnsw")
    monkeypatch.setenv(HOME_ENV, str(machines["two"]))
    with Library.open(pg_url) as library:
        library.tune(ef_search=5)  # its files made first, from the database
    monkeypatch.setenv(HOME_ENV, str(machines["one"]))
    with Library.open(pg_url) as library:
        library.sync_vector_indexes()
        assert ef_searches(library) == {"text": 5, "audio": 5}
        assert index_info(library.store)["audio"].params["ef_search"] == 5

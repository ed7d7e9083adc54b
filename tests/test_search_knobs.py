"""How searches trade speed for recall: HNSW's efSearch and IVF-PQ's nprobe, set by `rebuild-index --ef-search N
--nprobe N`, kept in the FAISS files and the database for every later search and rebuild, shown by `stats`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.cli.common import EXIT_USAGE
from pengi_search.db import Store, WindowInput
from pengi_search.errors import OptionError
from pengi_search.index_types import searched_with
from pengi_search.library import Library

from .test_library import AUDIO_DIM, EMBEDDER, MODEL, add_file, opened, two_files

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
        assert library.index_info()["text"].params["ef_search"] == 7


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
        assert {info.requested_type for info in library.index_info().values() if info} <= {"flat"}


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
        assert library.indexes_json()["audio"]["nprobe"] == 3
        library.rebuild(nprobe=10_000)
        assert library.indexes_json()["audio"]["nprobe"] == library.vector_index("audio").params.nlist == 16


def test_nprobe_left_unset_shows_as_the_cells_a_search_probes() -> None:
    params = {"ef_search": 64, "nprobe": None, "nlist": 2048}
    assert searched_with("ivfpq", params) == {"ef_search": None, "nprobe": 32}
    assert searched_with("hnsw", params) == {"ef_search": 64, "nprobe": None}

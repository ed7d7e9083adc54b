"""An indexing run over many roots, as `eval retrieval` and `eval caption` make one (every file of the set a root
of its own): it asks the database about all the roots at once, never once a root, and still indexes, counts and
prunes only what lies below a root."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, event
from typer.testing import CliRunner

from indexer.pipeline import run_index
from indexer.plan import file_stamps
from indexer.roots import PER_ROOT_MOST, Roots
from indexer.run_report import IndexOptions
from pengi_search.choices import Captions
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_OK
from pengi_search.db import EmbedderInfo, ModelInfo, Store, TextRecord, WindowInput, missing_captions
from pengi_search.library import Library
from pengi_search.query_plans import plan_steps, recorded

from .indexing import write_tone

DIM = 4


def stored_library(db: Path, files: list[Path], *, uncaptioned: tuple[Path, ...] = ()) -> None:
    """A library that holds `files` as they are on disk, one window each, captioned but for `uncaptioned`: written
    through the store, as an earlier run would have (no model runs)."""
    rng = np.random.default_rng(0)
    with Library.open(str(db)) as library:
        store = library.store
        store.set_index_meta(ModelInfo("tiny", "0" * 64), EmbedderInfo("tiny-text", DIM))
        for path in files:
            info = path.stat()
            file_id = store.upsert_file(str(path), size=info.st_size, mtime=info.st_mtime_ns / 1e9)
            vectors = {"audio": rng.standard_normal(DIM), "text": rng.standard_normal(DIM)}
            texts = [TextRecord("generate audio caption", "a tone", -0.5)]
            if path in uncaptioned:
                vectors.pop("text")
                texts = []
            store.replace_file_windows(file_id, [WindowInput(0, 0.0, 0.1, texts, vectors)])
        library.sync_vector_indexes()


def tones(folder: Path, names: list[str]) -> list[Path]:
    return [write_tone(folder / name, 0.1, freq=200.0 + 10 * i) for i, name in enumerate(names)]


def library_paths(db: Path) -> list[str]:
    with Store.open(str(db), read_only=True) as store:
        return [record.path for record in store.files_under()]


@pytest.fixture
def selects() -> Iterator[list[str]]:
    """Every SELECT any engine runs while the test does."""
    seen: list[str] = []

    def count(_connection, _cursor, statement: str, _parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    yield seen
    event.remove(Engine, "before_cursor_execute", count)


def test_a_run_over_many_files_as_roots_queries_the_database_as_often_as_a_run_over_two(tmp_path, selects):
    """A query per root cost a 20,000-file set 30 to 60 minutes before `eval` scored anything, though nothing had
    changed (full-table reads: 19 ms for the stamps and 62 ms for the caption count, each root)."""
    files = tones(tmp_path / "set", [f"clip-{n:02d}.wav" for n in range(12)])
    db = tmp_path / "index.db"
    stored_library(db, files)
    queries = []
    for roots in (files[: PER_ROOT_MOST + 1], files):  # both past the roots asked about one by one
        selects.clear()
        summary = run_index(IndexOptions(roots=[str(path) for path in roots], db=str(db), workers=0))
        assert (summary.unchanged, summary.indexed, summary.pruned) == (len(roots), 0, 0)
        queries.append(len(selects))
    assert queries[0] == queries[1]


def test_what_lies_below_a_folder_is_found_by_a_search_of_the_path_index_not_a_scan_of_the_table(tmp_path):
    """What a run asks below its roots (stamps, windows without captions), on SQLite: no step of the plan reads a
    whole table."""
    db = tmp_path / "index.db"
    stored_library(db, tones(tmp_path / "set", ["a.wav"]))
    with Store.open(str(db), read_only=True) as store, recorded(store.engine) as statements:
        assert len(store.all_file_stamps(under=str(tmp_path / "set"))) == 1
        assert missing_captions(store, under=str(tmp_path / "set")) == {}
    plan = plan_steps(str(db), statements)
    assert plan and not [step for step in plan if step.startswith("SCAN")], plan


def test_files_outside_the_roots_are_neither_indexed_nor_pruned_nor_counted(tmp_path):
    """Roots: two files of the set, and the folder `set/b`. Outside them: `set/b.wav` and `set/b0/x.wav`, whose
    names start as the folder's does, a file gone from disk, one never indexed and one without captions."""
    kept = tones(tmp_path / "set", ["one.wav", "two.wav", "b.wav", "gone.wav", "uncaptioned.wav", "b0/x.wav"])
    below = tones(tmp_path / "set" / "b", ["in.wav", "deleted.wav"])
    db = tmp_path / "index.db"
    stored_library(db, kept + below, uncaptioned=(kept[4],))
    os.remove(tmp_path / "set" / "gone.wav")
    os.remove(tmp_path / "set" / "b" / "deleted.wav")
    tones(tmp_path / "set", ["new.wav"])
    roots = [str(kept[0]), str(kept[1]), str(tmp_path / "set" / "b")]

    summary = run_index(IndexOptions(roots=roots, db=str(db), workers=0, captions=Captions.later))

    assert (summary.unchanged, summary.indexed, summary.pruned, summary.captions_missing) == (3, 0, 1, 0)
    expected = {*map(str, kept), str(below[0])}
    assert set(library_paths(db)) == expected  # b/deleted.wav pruned; gone.wav kept, new.wav not indexed


def test_a_root_window_without_captions_is_counted_and_no_other(tmp_path):
    files = tones(tmp_path / "set", ["a.wav", "b.wav", "c.wav"])
    db = tmp_path / "index.db"
    stored_library(db, files, uncaptioned=(files[0], files[2]))
    options = IndexOptions(roots=[str(files[0]), str(files[1])], db=str(db), workers=0, captions=Captions.later)
    assert run_index(options).captions_missing == 1


def test_windows_waiting_below_one_folder_are_counted_by_the_database(tmp_path):
    """A run over one folder (the usual run) counts what waits for captions in the database, not by a path read
    per waiting window (a million rows after a library was indexed `--captions later`)."""
    from indexer.captions import captions_missing

    files = tones(tmp_path / "set", [f"clip-{n:02d}.wav" for n in range(12)])
    db = tmp_path / "index.db"
    stored_library(db, files, uncaptioned=tuple(files))
    with Store.open(str(db), read_only=True) as store, recorded(store.engine) as statements:
        assert captions_missing(store, Roots([str(tmp_path / "set")])) == len(files)
    selects = [(statement, parameters) for statement, parameters in statements if statement.startswith("SELECT")]
    with sqlite3.connect(db) as connection:
        rows = [len(connection.execute(statement, parameters).fetchall()) for statement, parameters in selects]
    assert sum(rows) <= 2, selects


def test_a_run_over_a_few_folders_reads_their_files_not_the_rest_of_the_library(tmp_path):
    """Two folders of a large library are asked about one by one, each a search of the paths' index: not below the
    folder they share, which holds the rest of the library too."""
    with Store.open(str(tmp_path / "lib.db")) as store:
        for folder, files in (("music/new", 2), ("music/old", 40), ("music/other", 2)):
            for n in range(files):
                store.upsert_file(str(tmp_path / folder / f"{n:02d}.wav"), size=1, mtime=1.0)
        roots = Roots([str(tmp_path / "music/new"), str(tmp_path / "music/other")])
        with recorded(store.engine) as statements:
            assert len(file_stamps(store, roots)) == 4
    selects = [(statement, parameters) for statement, parameters in statements if statement.startswith("SELECT")]
    with sqlite3.connect(tmp_path / "lib.db") as connection:
        rows = [len(connection.execute(statement, parameters).fetchall()) for statement, parameters in selects]
    assert sum(rows) == 4, selects


def test_roots_below_another_root_are_asked_about_with_it():
    assert Roots(["/set/b/c.wav", "/set/b", "/other"]).folders == ["/other", "/set/b"]
    assert Roots([f"/set/{n}.wav" for n in range(PER_ROOT_MOST + 1)]).folders == ["/set"]


@pytest.mark.parametrize(
    ("path", "covered"),
    [
        ("/set/a.wav", True),
        ("/set/b", True),
        ("/set/b/c/d.wav", True),
        ("/set/b.wav", False),
        ("/set/b0/x.wav", False),
        ("/set/a.wav.bak", False),
        ("/set", False),
        ("/other/a.wav", False),
    ],
)
def test_roots_cover_each_root_and_what_lies_below_a_root_only(path, covered):
    roots = Roots(["/set/a.wav", "/set/b/"])
    assert roots.common == "/set"
    assert roots.covers(path) is covered


def test_no_roots_cover_nothing():
    assert Roots([]).common is None and not Roots([]).covers("/a.wav")


def test_eval_retrieval_on_a_library_indexes_only_the_sets_files_and_prunes_none_of_the_others(
    tmp_path, tiny_model_dir
):
    """`--db` names a library that holds more than the set: its files gone from disk stay, and a file beside the
    set's that the set does not list is not indexed."""
    sounds = tmp_path / "sounds"
    files = [write_tone(sounds / name, 1.0, freq=f) for name, f in (("a.wav", 300), ("b.wav", 500), ("c.wav", 700))]
    db = tmp_path / "lib.db"
    quick = ["--device", "cpu", "--beam", "2", "--max-len", "3", "--batch-size", "4", "--workers", "0"]
    model = ["--model", str(tiny_model_dir)]
    runner = CliRunner()
    indexed = runner.invoke(app, ["index", str(sounds), "--db", str(db), *model, *quick])
    assert indexed.exit_code == EXIT_OK, indexed.output
    os.remove(files[2])
    write_tone(sounds / "new.wav", 1.0, freq=900)
    captions = tmp_path / "captions.csv"
    captions.write_text("file_name,caption\na.wav,a low tone\nb.wav,a high tone\n")
    args = ["eval", "retrieval", str(captions), "--audio-root", str(sounds), "--db", str(db), "-o", str(tmp_path / "r")]
    result = runner.invoke(app, [*args, *model, *quick, "--json"])
    assert result.exit_code == EXIT_OK, result.output
    assert library_paths(db) == [str(path) for path in files]
    assert json.loads((tmp_path / "r" / "report.json").read_text())["index_run"]["indexed"] == 0

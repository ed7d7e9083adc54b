"""`similar` of many files at once: the indexed files' stored vectors are read together and searched in one FAISS
call, and every file gets the results it gets alone (hits, scores, order, its copies left out, filters, `within`,
`by window`), in the order the files were given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pengi_search import similar as similar_module
from pengi_search.choices import By
from pengi_search.cli import app
from pengi_search.db import StoreMismatchError
from pengi_search.library import Library
from pengi_search.search import SearchScope
from pengi_search.search_filters import Filters
from pengi_search.similar import similar_to_files
from pengi_search.stored import stored_windows
from pengi_search.testing import make_tiny_model_dir

from .indexing import write_tone
from .search_library import index_folder, tone

# (name, seconds): one window for the short files, several for the long ones; two FLAC files for the filters.
SOUNDS = [("t0.wav", 3.0), ("t1.flac", 9.0), ("t2.wav", 1.0), ("t3.wav", 12.0), ("t4.flac", 5.0), ("t5.wav", 2.0)]


@pytest.fixture(scope="module")
def shelf(tmp_path_factory, tiny_model_dir) -> tuple[str, Path, Path]:
    """A library of SOUNDS and a copy of t0.wav (left out with it), and a file outside it (decoded)."""
    root = tmp_path_factory.mktemp("batched")
    sounds = root / "sounds"
    for seed, (name, seconds) in enumerate(SOUNDS):
        write_tone(sounds / name, seconds, freq=tone(seed))
    shutil.copy(sounds / "t0.wav", sounds / "copy-of-t0.wav")
    index_folder(str(root / "index.db"), sounds, tiny_model_dir)
    outside = write_tone(root / "outside.wav", 8.0, freq=tone(3) + 7.0)
    return str(root / "index.db"), sounds, outside


def queries(shelf) -> list[str]:
    """Every indexed file, the outside one among them (a decoded file between two runs of indexed ones)."""
    _, sounds, outside = shelf
    names = [name for name, _ in SOUNDS]
    return [*(str(sounds / n) for n in names[:3]), str(outside), *(str(sounds / n) for n in names[3:])]


def both_ways(library: Library, paths: list[str], model: Path, **options) -> tuple[list, list]:
    """`similar_to_files` of all `paths` in one call, and of each path alone."""
    together = list(similar_to_files(library, paths, model=str(model), device="cpu", **options))
    alone = [r for path in paths for r in similar_to_files(library, [path], model=str(model), device="cpu", **options)]
    return together, alone


@pytest.mark.parametrize(
    ("scope", "within"),
    [
        (SearchScope(k=3), None),
        (SearchScope(k=4, by=By.window), None),
        (SearchScope(k=2, filters=Filters(extensions={"flac"})), None),  # names few files have: more rounds
        (SearchScope(k=3, filters=Filters(min_duration_s=2.5)), None),  # a filter on the store: allowed ids
        (SearchScope(k=3, by=By.window), (2.0, 8.0)),  # --start 2 --end 8
    ],
    ids=["file", "window", "ext", "duration", "within"],
)
def test_many_files_get_what_each_gets_alone(shelf, tiny_model_dir, monkeypatch, scope, within):
    db, sounds, _ = shelf
    monkeypatch.setattr(similar_module, "FILES_PER_SEARCH", 2)  # runs of indexed files cut into several searches
    with Library.open(db, read_only=True) as library:
        together, alone = both_ways(library, queries(shelf), tiny_model_dir, scope=scope, within=within)
    assert together == alone
    assert [r.source for r in together] == ["index"] * 3 + ["decoded"] + ["index"] * 3
    assert all(r.hits for r in together if r.error is None)
    first = together[0]  # t0.wav: itself and its copy are left out
    assert not {h.path for h in first.hits} & {str(sounds / "t0.wav"), str(sounds / "copy-of-t0.wav")}


def test_indexed_files_are_searched_in_one_faiss_call_and_read_together(shelf, monkeypatch, store_reads):
    """Five indexed files: one FAISS search, and as many reads of the store as for two files (a file alone made
    about seven, and its own FAISS search)."""
    db, sounds, _ = shelf
    reads = store_reads
    paths = [str(sounds / name) for name, _ in SOUNDS]
    with Library.open(db, read_only=True) as library:
        index = library.vector_index("audio")
        searches = []
        real_search = index.search

        def search(rows, *args, **kwargs):
            searches.append(len(rows))
            return real_search(rows, *args, **kwargs)

        monkeypatch.setattr(index, "search", search)
        store_reads = []
        for count in (2, 5):
            reads["count"] = 0
            found = list(similar_to_files(library, paths[:count], SearchScope(k=3)))
            store_reads.append(reads["count"])
            assert [r.source for r in found] == ["index"] * count
        rows = sum(len(stored_windows(library, path).windows) for path in paths[:5])
    assert searches == [searches[0], rows] and searches[0] < rows  # one search for the two files, one for the five
    assert store_reads[0] == store_reads[1]


def test_a_gone_file_and_a_file_without_windows_are_reported_as_alone(shelf, tiny_model_dir, tmp_path):
    """Among indexed files: a file gone from disk cannot be decoded (reported, the others go on); an indexed file
    whose windows are gone is decoded, as a file that is not indexed is."""
    db, sounds, _ = shelf
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    with Library.open(str(copy)) as library:
        record = library.store.get_file(str(sounds / "t3.wav"))
        library.store.replace_file_windows(record.id, [])
    paths = [str(sounds / "t0.wav"), str(tmp_path / "gone.wav"), str(sounds / "t3.wav"), str(sounds / "t4.flac")]
    with Library.open(str(copy), read_only=True) as library:
        together, alone = both_ways(library, paths, tiny_model_dir, scope=SearchScope(k=3))
    assert together == alone
    assert [r.source for r in together] == ["index", None, "decoded", "index"]
    assert together[1].error and not together[1].hits
    assert all(r.hits for r in together if r.error is None)


def test_a_model_that_did_not_build_the_library_is_refused_for_many_indexed_files(shelf, tmp_path):
    db, sounds, _ = shelf
    other = make_tiny_model_dir(tmp_path / "other", seed=3)
    paths = [str(sounds / name) for name, _ in SOUNDS]
    with Library.open(db, read_only=True) as library, pytest.raises(StoreMismatchError, match="as model="):
        list(similar_to_files(library, paths, model=str(other), device="cpu"))


def test_the_command_prints_for_each_file_what_it_prints_for_that_file_alone(shelf, tiny_model_dir):
    """`similar a b c --json` (the files' objects) against `similar a --json` (its bare list of hits), with
    --by window and --start/--end."""
    db, _, _ = shelf
    options = ["--db", db, "--model", str(tiny_model_dir), "--by", "window", "-k", "4", "--start", "0.5", "--json"]
    paths = queries(shelf)

    def printed(*files: str):
        result = CliRunner().invoke(app, ["similar", *files, *options])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    together = printed(*paths)
    assert [entry["hits"] for entry in together] == [printed(path) for path in paths]
    assert [entry["source"] for entry in together] == ["index"] * 3 + ["decoded"] + ["index"] * 3

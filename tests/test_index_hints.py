"""The `index` commands that messages suggest can be pasted into a shell as they are: the library's own folders,
each quoted, the options given, and the library as the user named it."""

from __future__ import annotations

import shlex

import pytest

from pengi_search.db import Store
from pengi_search.index_hints import MOST_FOLDERS, index_command, library_folders, library_index_command
from pengi_search.library import EmptyLibraryError, Library


def _store_with(db: str, paths: list[str]) -> Store:
    store = Store.open(db)
    for path in paths:
        store.upsert_file(path, size=1, mtime=1.0)
    return store


def test_the_folders_are_the_fewest_that_hold_every_file(tmp_path):
    """A folder inside another is left out, even when a folder whose name starts alike (`dogs b`) sorts between
    them by text; a file's own folder counts, not a folder above it that holds no file."""
    for folder in ("sounds/dogs/small", "sounds/dogs b", "other"):
        (tmp_path / folder).mkdir(parents=True)
    paths = ["sounds/dogs/a.wav", "sounds/dogs b/c.wav", "sounds/dogs/small/d.wav", "other/e.wav", "sounds/dogs/f.wav"]
    expected = ["other", "sounds/dogs", "sounds/dogs b"]
    with _store_with(str(tmp_path / "lib.db"), [str(tmp_path / path) for path in paths]) as store:
        assert library_folders(store) == [str(tmp_path / folder) for folder in expected]


def test_folders_gone_from_disk_are_left_out_and_none_at_all_is_a_placeholder(tmp_path):
    (tmp_path / "here").mkdir()
    with _store_with(str(tmp_path / "lib.db"), [str(tmp_path / "here/a.wav"), "/nowhere/b.wav"]) as store:
        assert library_folders(store) == [str(tmp_path / "here")]
    with _store_with(str(tmp_path / "gone.db"), ["/nowhere/b.wav"]) as store:
        assert library_folders(store) is None
        assert library_index_command(store) == f"pengi-search index PATH... --db {tmp_path / 'gone.db'}"


def test_a_library_of_many_folders_leaves_them_to_the_user(tmp_path):
    folders = [tmp_path / f"f{number}" for number in range(MOST_FOLDERS + 1)]
    for folder in folders:
        folder.mkdir()
    with _store_with(str(tmp_path / "lib.db"), [str(folder / "a.wav") for folder in folders]) as store:
        assert library_folders(store) is None
        assert library_folders(store, most=len(folders)) == sorted(map(str, folders))


def test_the_command_pastes_as_the_words_it_means(tmp_path):
    """Spaces and quotes in folders and options, and a --db as typed, come back as the same words from the shell."""
    folder = tmp_path / "it's my sounds"
    folder.mkdir()
    with _store_with(str(tmp_path / "my lib.db"), [str(folder / "a.wav")]) as store:
        command = library_index_command(store, "--reindex", "--model", "./my model")
    assert shlex.split(command) == [
        "pengi-search",
        "index",
        str(folder),
        "--reindex",
        "--model",
        "./my model",
        "--db",
        str(tmp_path / "my lib.db"),
    ]
    assert index_command(None, "--model", "base", db_option="") == "pengi-search index PATH... --model base"


def test_a_library_whose_files_all_failed_says_the_index_of_their_folder(tmp_path):
    """No vectors yet, but files known (each failed): the command that indexes them names their folder."""
    (tmp_path / "sounds").mkdir()
    db = str(tmp_path / "lib.db")
    with Store.open(db) as store:
        store.record_file_error(str(tmp_path / "sounds/broken.wav"), "empty file (0 bytes)", size=0, mtime=1.0)
    with Library.open(db, read_only=True) as library, pytest.raises(EmptyLibraryError) as empty:
        library.vector_index("audio")
    assert f"run `pengi-search index {tmp_path / 'sounds'} --db {db}` first" in str(empty.value)

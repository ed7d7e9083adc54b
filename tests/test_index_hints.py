"""The `index` commands that messages suggest can be pasted into a shell as they are: the library's own folders,
each quoted, the options given, and the library as the user named it."""

from __future__ import annotations

import os
import random
import shlex
import sqlite3

import pytest
from sqlalchemy import delete

from pengi_search.db import Store
from pengi_search.db.schema import AudioFileRow
from pengi_search.index_hints import MOST_FOLDERS, index_command, library_folders, library_index_command
from pengi_search.library import EmptyLibraryError, Library
from pengi_search.query_plans import recorded
from pengi_search.scan import inside

from .test_store import postgres_schema_url


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


def _folders_by_definition(paths: list[str], most: int) -> list[str] | None:
    """What `library_folders` answers, as its docstring defines it, from every path at once."""
    parents = {os.path.dirname(path) for path in paths}
    tops = [folder for folder in parents if not any(other != folder and inside(folder, other) for other in parents)]
    there = sorted((folder for folder in tops if os.path.isdir(folder)), key=lambda folder: folder.split(os.sep))
    return there if 0 < len(there) <= most else None


# Names whose order by text differs from their order as folders ('a b' and 'a0' sort around 'a/'), an accent, and
# a byte that is not UTF-8 (stored escaped).
_NAMES = ["a", "a b", "a0", "b", "caf\u00e9", "x\udcff"]


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request: pytest.FixtureRequest, tmp_path):
    """Each backend: SQLite searches the paths' index, PostgreSQL reads a folder's paths in the server."""
    if request.param == "sqlite":
        yield str(tmp_path / "lib.db")
        return
    yield from postgres_schema_url()


def test_the_folders_are_those_of_the_definition_for_libraries_of_every_shape(tmp_path, any_db):
    """Random trees: files at several depths, some folders gone from disk, more folders than the most or fewer."""
    chance = random.Random(166)
    with Store.open(any_db) as store:
        for case in range(40):
            base = tmp_path / f"case{case}"
            paths = set()
            for _ in range(chance.randint(1, 12)):
                folder = os.path.join(base, *chance.choices(_NAMES, k=chance.randint(0, 3)))
                paths.add(os.path.join(folder, f"{chance.choice(_NAMES)}.wav"))
            for path in paths:
                if chance.random() < 0.8:  # the others' folders are gone from disk (unless another made them)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
            with store.session(write=True) as session:
                session.execute(delete(AudioFileRow))
            for path in paths:
                store.upsert_file(path, size=1, mtime=1.0)
            for most in (2, MOST_FOLDERS):
                assert library_folders(store, most) == _folders_by_definition(sorted(paths), most), (case, paths)


def test_the_database_hands_back_a_row_per_folder_not_per_file(tmp_path):
    """A hint is shown on a large library too: its folders come from the database, not from every path read."""
    paths = [
        str(tmp_path / folder / f"{n:03d}.wav") for folder in ("dogs", "cats/small", "cats/big") for n in range(40)
    ]
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    db = str(tmp_path / "lib.db")
    with _store_with(db, paths) as store, recorded(store.engine) as statements:
        assert library_folders(store) == [
            str(tmp_path / "cats/big"),
            str(tmp_path / "cats/small"),
            str(tmp_path / "dogs"),
        ]
    with sqlite3.connect(db) as connection:
        selects = [
            (statement, parameters)
            for statement, parameters in statements
            if statement.lstrip().startswith(("SELECT", "WITH"))
        ]
        rows = sum(len(connection.execute(statement, parameters).fetchall()) for statement, parameters in selects)
    assert rows <= 12, statements

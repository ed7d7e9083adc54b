"""How errors name a library: as the user named it. A SQLite file given as `--db ./lib.db` is `./lib.db`, not the
SQLAlchemy URL made of it (`sqlite:////home/me/lib.db`); a library the user did not name (the data folder's, or
`$PENGI_SEARCH_DB`'s) is its file relative to the current folder when under it; a server's URL stays a URL, its
password hidden."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.db import Store
from pengi_search.db.errors import IndexBusyError
from pengi_search.db.run_lock import indexing_lock
from pengi_search.db.urls import db_option, library_name
from pengi_search.errors import EXIT_FAILED, EXIT_USAGE


def run(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture
def here(tmp_path, isolated_home, monkeypatch):
    """The current folder, which holds the data folder (`pengi-home`)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("db", "name"),
    [
        ("./lib.db", "./lib.db"),
        ("lib.db", "lib.db"),
        ("../elsewhere/lib.db", "../elsewhere/lib.db"),
        ("sqlite:///lib.db", "sqlite:///lib.db"),  # a URL typed stays one
        ("postgres://me:Secret-PW@db.lan/pengi", "postgresql+psycopg://me:***@db.lan/pengi"),
        (None, "pengi-home/index.db"),
        ("", "pengi-home/index.db"),  # `--db "$UNSET"`: the default library
    ],
)
def test_a_library_is_named_as_typed_and_the_default_one_by_its_file_from_here(here, db, name):
    assert library_name(db) == name


def test_a_library_named_by_the_environment_is_named_by_its_file_from_here(here, monkeypatch):
    monkeypatch.setenv("PENGI_SEARCH_DB", str(here / "shelf" / "lib.db"))
    assert library_name(None) == "shelf/lib.db"
    monkeypatch.setenv("PENGI_SEARCH_DB", "/srv/sounds/lib.db")  # outside the current folder: absolute
    assert library_name(None) == "/srv/sounds/lib.db"


def test_a_command_hint_names_the_library_as_errors_do(here):
    assert db_option("./my lib.db") == " --db './my lib.db'"
    assert db_option("postgres://me:Secret-PW@db.lan/pengi") == " --db 'postgresql+psycopg://me:***@db.lan/pengi'"
    assert db_option(None) == ""


def test_the_store_keeps_the_name_beside_the_url(here):
    with Store.open("./lib.db") as store:
        assert store.name == "./lib.db"
        assert store.url == f"sqlite:///{here / 'lib.db'}"  # what it is: FAISS files and `stats` go by it


def test_a_missing_default_library_is_named_by_its_file_from_here(here):
    result = run("stats")
    assert result.exit_code == EXIT_FAILED
    assert result.stderr.splitlines() == [
        "error: pengi-home/index.db: no index here yet; create it with `pengi-search index PATH...`"
    ]


def test_a_folder_given_as_the_library_is_named_as_typed(here):
    (here / "shelf").mkdir()
    result = run("stats", "--db", "./shelf")
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "error: ./shelf is a folder, not a database file: point --db or PENGI_SEARCH_DB at a database file (such as "
        "index.db)"
    ]


def test_an_empty_library_is_named_as_typed(here, tiny_model_dir):
    Store.open("lib.db").close()
    result = run("query", "rain", "--db", "lib.db", "--model", tiny_model_dir)
    assert result.exit_code == EXIT_FAILED
    assert result.stderr.splitlines() == [
        # for that library, with the model asked for
        f"error: lib.db: the index is empty: run `pengi-search index PATH... --model {tiny_model_dir} --db lib.db` "
        "first"
    ]


def test_a_library_another_run_holds_is_named_as_typed(here):
    with (
        Store.open("lib.db") as store,
        indexing_lock(store),
        Store.open("lib.db") as other,
        pytest.raises(IndexBusyError) as busy,
        indexing_lock(other),
    ):
        pass
    assert busy.value.where == "lib.db"


@pytest.mark.parametrize(
    ("db", "shown"), [("./lib.db", "./lib.db"), (None, "pengi-home/index.db"), ("sqlite:///lib.db", "sqlite:///lib.db")]
)
def test_stats_and_doctor_show_the_library_as_named_and_their_json_its_url(here, db, shown):
    """They showed `sqlite:////home/me/lib.db`, a URL the user never typed, for `--db ./lib.db`."""
    given = [] if db is None else ["--db", db]
    Store.open(db).close()
    stats = run("stats", *given)
    assert stats.stdout.splitlines()[0].startswith(f"database: {shown} (")  # and the file's size
    doctor = run("doctor", *given)
    label = "url" if "://" in shown else "file"
    assert f"\ndatabase\n  {label:<14} {shown}\n" in doctor.stdout
    url = {None: f"sqlite:///{here / 'pengi-home' / 'index.db'}", "./lib.db": f"sqlite:///{here / 'lib.db'}"}.get(
        db, db
    )
    assert json.loads(run("stats", *given, "--json").stdout)["database"] == url
    assert json.loads(run("doctor", *given, "--json").stdout)["database"]["url"] == url

"""A machine that does not let pengi-search write where it would: a data folder that cannot be made (a path under
/proc, a file where a folder should be) or is read-only, a library on a read-only mount, a database another program
keeps locked, a tiny COLUMNS. Each is said in one line that names the file or folder, why, and what to do."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.consoles import NARROWEST
from pengi_search.db import engine as db_engine
from pengi_search.db.migrate import SCHEMA_HEAD
from pengi_search.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pengi_search.library import Library
from pengi_search.paths import data_dir
from pengi_search.vectors import VectorIndex

from .indexing import write_tone
from .search_library import caption_library

HOME_ADVICE = "choose another data folder with PENGI_SEARCH_HOME=FOLDER"


def run(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [str(arg) for arg in args], env=env)


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def library(tmp_path, tiny_model_dir) -> Path:
    """A small library of its own, in a folder of its own: the tests make it read-only."""
    db = tmp_path / "shelf" / "index.db"
    caption_library(str(db), tmp_path / "sounds", tiny_model_dir, {"bell.wav": (2.0, ["a bell rings"])})
    return db


@pytest.fixture
def read_only(monkeypatch) -> Iterator[set[Path]]:
    """Files and folders that this process may not write, as the system says of them after `chmod a-w` (or of a
    whole read-only mount): `os.access` answers no, which it does not for root after a chmod."""
    paths: set[Path] = set()
    access = os.access

    def refused(path: object, mode: int, **kwargs: object) -> bool:
        target = Path(os.path.abspath(os.fspath(path)))  # type: ignore[arg-type]
        if mode & os.W_OK and target in paths:
            return False
        return access(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", refused)
    yield paths


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no folder can be made")
@pytest.mark.parametrize("home_variable", ["PENGI_SEARCH_HOME", "XDG_DATA_HOME"])
def test_index_into_a_data_folder_that_cannot_be_made_names_it_and_how_to_choose_another(
    tmp_path, tiny_model_dir, monkeypatch, home_variable
):
    """It said `error: [Errno 2] No such file or directory: '/proc/nope'`."""
    monkeypatch.delenv("PENGI_SEARCH_HOME")
    monkeypatch.setenv(home_variable, "/proc/nope")
    write_tone(tmp_path / "sounds" / "a.wav", 1.0)
    result = run("index", tmp_path / "sounds", "--model", tiny_model_dir)
    assert result.exit_code == EXIT_FAILED
    line = one_error_line(result)
    assert line.startswith("error: /proc/nope") and "cannot make the data folder" in line, line
    assert "no such file or directory" in line and HOME_ADVICE in line and "--db FILE" in line, line


def test_index_into_a_read_only_data_folder_says_it_cannot_write_there(tmp_path, tiny_model_dir, read_only):
    home = Path(os.environ["PENGI_SEARCH_HOME"])
    home.mkdir()
    read_only.add(home)
    write_tone(tmp_path / "sounds" / "a.wav", 1.0)
    result = run("index", tmp_path / "sounds", "--model", tiny_model_dir)
    assert result.exit_code == EXIT_FAILED
    line = one_error_line(result)
    assert line == (
        f"error: {home}: cannot write in the data folder (permission denied); {HOME_ADVICE}, "
        "or another library file with --db FILE"
    )


@pytest.mark.parametrize("command", ["import", "fetch"])
def test_installing_a_model_where_the_data_folder_is_a_file_says_so_before_any_work(tmp_path, monkeypatch, command):
    """Importing converted the whole checkpoint first, then failed with a bare `[Errno 20] Not a directory`."""
    taken = tmp_path / "taken"
    taken.write_text("a file where the data folder should be")
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(taken))
    checkpoint = tmp_path / "base.pth"
    checkpoint.write_bytes(b"not looked at")
    given = ["import", checkpoint, "--no-tokenizers"] if command == "import" else ["fetch", "--url", checkpoint]
    result = run("model", *given)
    assert result.exit_code == EXIT_FAILED
    line = one_error_line(result)
    assert line.startswith(f"error: {taken / 'models'}"), line
    assert line.endswith(f": cannot make a folder of the data folder ({taken} is a file, not a folder); {HOME_ADVICE}")


LIBRARY_ADVICE = f"{HOME_ADVICE}, or another library file with --db FILE"


@pytest.fixture
def sounds(tmp_path) -> Path:
    write_tone(tmp_path / "sounds" / "a.wav", 1.0)
    return tmp_path / "sounds"


def default_library_commands(sounds: Path, model: Path) -> dict[str, list[object]]:
    """Every kind of command on the default library: one that makes it, one that changes it, some that read it."""
    return {
        "index": ["index", sounds, "--model", model],
        "remove": ["remove", sounds],
        "query": ["query", "a tone", "--model", model],
        "stats": ["stats"],
        "serve": ["serve", "--port", "0"],
    }


@pytest.mark.parametrize("command", ["index", "remove", "query", "stats", "serve"])
@pytest.mark.parametrize("home_in", ["a file", "under a file"])
def test_a_default_library_in_a_data_folder_that_is_a_file_names_the_data_folder(
    tmp_path, sounds, tiny_model_dir, monkeypatch, command, home_in
):
    """`index` said `.../index.db: point --db or PENGI_SEARCH_DB at a database file` (exit 2), blaming a --db nobody
    gave, where `model fetch` said to choose another data folder (exit 1): nobody named the library's place, so the
    data folder is what to change, and every command says so as `model fetch` does."""
    taken = tmp_path / "taken"
    taken.write_text("a file where the data folder should be")
    home = taken if home_in == "a file" else taken / "pengi"
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(home))
    result = run(*default_library_commands(sounds, tiny_model_dir)[command])
    assert result.exit_code == EXIT_FAILED
    assert one_error_line(result) == (
        f"error: {home}: cannot make the data folder ({taken} is a file, not a folder); {LIBRARY_ADVICE}"
    )


@pytest.mark.parametrize("named_by", ["--db", "PENGI_SEARCH_DB"])
def test_a_library_named_inside_a_file_stays_bad_usage_and_names_no_data_folder(
    tmp_path, sounds, tiny_model_dir, monkeypatch, named_by
):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    db = taken / "index.db"
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(taken))  # the same place as the default, but named
    option = ["--db", db] if named_by == "--db" else []
    if named_by == "PENGI_SEARCH_DB":
        monkeypatch.setenv("PENGI_SEARCH_DB", str(db))
    result = run("index", sounds, "--model", tiny_model_dir, *option)
    assert result.exit_code == EXIT_USAGE
    assert one_error_line(result) == (
        f"error: {taken} is a file, not a folder: no database can be made at {db}: "
        "point --db or PENGI_SEARCH_DB at a database file (such as index.db)"
    )


def test_a_folder_where_the_default_library_file_should_be_names_the_data_folder(tmp_path, sounds, isolated_home):
    (isolated_home / "index.db").mkdir(parents=True)
    result = run("stats")
    assert result.exit_code == EXIT_FAILED
    assert one_error_line(result) == (
        f"error: {isolated_home / 'index.db'} is a folder, not a database file: {LIBRARY_ADVICE}"
    )


def test_a_model_command_with_no_model_in_a_data_folder_that_is_a_file_names_the_data_folder(
    tmp_path, sounds, monkeypatch
):
    """It said `pass --yes to fetch it now`, and the fetch --yes started could not have put the model anywhere."""
    taken = tmp_path / "taken"
    taken.write_text("a file")
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(taken))
    result = run("describe", sounds / "a.wav")
    assert result.exit_code == EXIT_FAILED
    assert one_error_line(result) == (
        f"error: {taken / 'models' / 'base'}: cannot make a folder of the data folder ({taken} is a file, "
        f"not a folder); {HOME_ADVICE}"
    )


def test_model_info_in_a_data_folder_that_is_a_file_names_the_data_folder(tmp_path, monkeypatch):
    """It said `no Pengi model is installed here: run model fetch`, and no fetch could have installed one there."""
    taken = tmp_path / "taken"
    taken.write_text("a file")
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(taken))
    result = run("model", "info")
    assert result.exit_code == EXIT_FAILED
    assert one_error_line(result) == (
        f"error: {taken / 'models' / 'base'}: cannot make a folder of the data folder ({taken} is a file, "
        f"not a folder); {HOME_ADVICE}"
    )


def test_paths_in_these_messages_are_spelt_as_typed(tmp_path, sounds, tiny_model_dir, monkeypatch):
    """A relative data folder and a relative --db were named by their absolute paths in some messages, as typed in
    others (`taken/models/...` beside `/tmp/.../taken`)."""
    monkeypatch.chdir(tmp_path)
    Path("taken").write_text("a file")
    monkeypatch.setenv("PENGI_SEARCH_HOME", "taken")
    for args, line in {
        ("stats",): f"error: taken: cannot make the data folder (taken is a file, not a folder); {LIBRARY_ADVICE}",
        ("stats", "--db", "taken/lib.db"): "error: taken is a file, not a folder: no database can be made at "
        "taken/lib.db: point --db or PENGI_SEARCH_DB at a database file (such as index.db)",
        ("model", "fetch", "--url", sounds / "a.wav"): "error: taken/models/downloads/base: cannot make a folder of "
        f"the data folder (taken is a file, not a folder); {HOME_ADVICE}",
    }.items():
        assert one_error_line(run(*args)) == line


def test_faiss_files_in_a_data_folder_that_is_a_file_are_not_saved_and_say_why(library, tmp_path, monkeypatch, caplog):
    """A PostgreSQL library's FAISS files go in the data folder: one that is a file failed with a bare
    `[Errno 20] Not a directory`, ending the command, where the index in memory was still right."""
    taken = tmp_path / "taken"
    taken.write_text("a file")
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(taken))
    monkeypatch.setattr(Library, "index_path", lambda self, kind: data_dir() / f"postgresql-0123456789ab.{kind}.faiss")
    with Library.open(library, create=False) as opened:
        assert opened.rebuild() == {"text": 1, "audio": 1}
    assert caplog.messages[-1] == (
        f"vector index not saved: {taken}: cannot make the data folder ({taken} is a file, not a folder); {HOME_ADVICE}"
    )


@pytest.mark.parametrize(
    ("command", "blocked"),
    [
        (["index", "{sounds}"], "folder"),
        (["remove", "{sounds}"], "folder"),
        (["rebuild-index"], "folder"),
        (["tune", "--ef-search", "auto"], "folder"),
        (["index", "{sounds}"], "file"),
    ],
)
def test_commands_that_write_a_read_only_library_say_it_cannot_be_written(
    library, tmp_path, tiny_model_dir, read_only, command, blocked
):
    """SQLite only said `cannot open the database: unable to open database file`, naming nothing."""
    read_only.add(library if blocked == "file" else library.parent)
    args = [part.format(sounds=tmp_path / "sounds") for part in command]
    model = ["--model", tiny_model_dir] if command[0] == "index" else []
    result = run(*args, "--db", library, *model)
    assert result.exit_code == EXIT_FAILED
    what = "the file" if blocked == "file" else f"its folder {library.parent}"
    assert one_error_line(result) == (
        f"error: {library}: the library cannot be written ({what}: permission denied); "
        "query, stats and export can still read it"
    )


@pytest.mark.parametrize("command", [["query", "a bell"], ["stats"], ["export"]])
def test_commands_that_only_read_still_read_a_read_only_library(library, tiny_model_dir, read_only, command):
    read_only.add(library.parent)
    model = ["--model", tiny_model_dir] if command[0] == "query" else []
    result = run(*command, "--db", library, *model)
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.strip()


def test_a_reader_that_cannot_save_the_faiss_files_says_it_brings_them_up_to_date_in_memory(
    library, tiny_model_dir, read_only, caplog
):
    """It said `choose another folder`, which a reader of a library where it is cannot do. The query is answered,
    and the warning says what happens instead, in one line."""
    for faiss_file in library.parent.glob("*.faiss"):
        faiss_file.unlink()  # a copy of the library without them: each reader needs them made
    read_only.add(library.parent)
    result = run("query", "a bell", "--db", library, "--model", tiny_model_dir)
    assert result.exit_code == EXIT_OK and "bell.wav" in result.stdout, result.output
    assert caplog.messages == [  # the captions' index, which the query searches
        f"vector index not saved: {library.parent}: cannot write in the folder (permission denied); it is brought up "
        "to date in memory for this command (one that can write in the folder saves it, such as `pengi-search "
        f"rebuild-index --db {library}`)"  # of that library, not the default one
    ]


def test_a_reader_that_cannot_record_the_version_in_faiss_files_from_before_versions_says_nothing(
    library, tiny_model_dir, read_only, caplog
):
    """Files saved before schema revision 0006 record no version of their vectors: a command that can write them
    records it once they are found in line with the database; one that cannot has nothing to bring up to date."""
    for faiss_file in library.parent.glob("*.faiss"):
        index, tag = VectorIndex.load(faiss_file)
        index.vectors_version = None
        index.save(faiss_file, tag)
    read_only.add(library.parent)
    result = run("query", "a bell", "--db", library, "--model", tiny_model_dir)
    assert result.exit_code == EXIT_OK and "bell.wav" in result.stdout, result.output
    assert caplog.messages == []


def downgraded(library: Path, revision: str) -> None:
    """`library` as an older pengi-search left it: its schema at `revision`, its rows kept."""
    from alembic import command

    from pengi_search.db.migrate import alembic_config, migration_connection

    engine = db_engine.create_store_engine(f"sqlite:///{library}")
    config = alembic_config()
    try:
        with migration_connection(engine) as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", [["query", "a bell"], ["stats"], ["export"]])
def test_a_reader_of_an_older_read_only_library_says_it_must_be_upgraded_by_one_that_may_write_it(
    library, tiny_model_dir, read_only, command
):
    """It said `cannot open or upgrade the database: attempt to write a readonly database`: neither that the library
    is older than this pengi-search, nor what would open it. A reader cannot read an older schema as it is."""
    downgraded(library, "0004")
    read_only.add(library.parent)
    model = ["--model", tiny_model_dir] if command[0] == "query" else []
    result = run(*command, "--db", library, *model)
    assert result.exit_code == EXIT_FAILED
    assert one_error_line(result) == (
        f"error: {library}: cannot upgrade the library's schema from revision 0004 to {SCHEMA_HEAD} (attempt to "
        "write a readonly database); this pengi-search reads it only once upgraded, which any of its commands does "
        "where it may write the library"
    )


def test_a_database_locked_past_the_wait_names_the_file_as_typed_and_the_likely_cause(library, monkeypatch):
    """It said only `database is locked`, after 30 s; then named the library by its SQLAlchemy URL."""
    monkeypatch.setattr(db_engine, "SQLITE_BUSY_TIMEOUT_MS", 50)
    monkeypatch.chdir(library.parent)
    writer = sqlite3.connect(library, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another program, in the middle of writing
    try:
        result = run("remove", library.parent.parent / "sounds", "--db", f"./{library.name}")
    finally:
        writer.close()
    assert result.exit_code == EXIT_FAILED
    assert one_error_line(result) == (
        f"error: ./{library.name}: database is locked: another program is writing to the database file and held it "
        "past the wait; try again once it has finished"
    )


def test_a_tiny_columns_keeps_table_cells_readable_in_a_pipe(library, tiny_model_dir):
    """`COLUMNS=20 pengi-search query ... | cat` folded the path one character per line and cut the score to `…`."""
    result = run("query", "a bell", "--db", library, "--model", tiny_model_dir, env={"COLUMNS": "20"})
    assert result.exit_code == EXIT_OK, result.output
    header, first, *_ = result.stdout.splitlines()
    assert header.split() == ["#", "path", "time", "score", "caption"]
    assert first.split()[0] == "1" and "…" not in first and len(first.split()[3]) == len("0.000"), first
    assert max(map(len, result.stdout.splitlines())) <= NARROWEST

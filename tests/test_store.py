"""The SQL store on SQLite and, when PENGI_TEST_POSTGRES_URL is set, on PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

from pengi_search.db import (
    CopiedFile,
    EmbedderInfo,
    ModelInfo,
    RefusedInputError,
    Store,
    StoredAudio,
    StoreError,
    StoreMismatchError,
    TextRecord,
    WindowInput,
    caption_counts,
    copy_identical_file,
    default_db_url,
    default_index_dir,
    default_index_path,
    library_exists,
    resolve_db_url,
    sizes_indexed,
    sqlite_file,
)
from pengi_search.db.captions import (
    UNRECORDED_MODE,
    WindowCaptions,
    add_captions,
    caption_modes,
    drop_fast_captions,
    uncaptioned_twins,
    uncaptioned_windows,
)
from pengi_search.db.engine import create_store_engine
from pengi_search.db.errors import DatabaseURLError, ForeignDatabaseError, MissingDatabaseError
from pengi_search.db.migrate import SCHEMA_HEAD, alembic_config, migrate, migration_connection
from pengi_search.db.queries import IDS_PER_QUERY
from pengi_search.db.schema import Base, in_schema_of
from pengi_search.errors import EXIT_USAGE
from pengi_search.serve import catalog

MODEL = ModelInfo("pengi-base", "a" * 64)
EMBEDDER = EmbedderInfo("pengi-clip-text", 4)
AUDIO = StoredAudio(duration_s=14.0, sample_rate=44_100, channels=2, format="flac")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.db'}"
        return
    yield from postgres_schema_url()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """For what only PostgreSQL does (a server that drops connections, roles): a fresh schema, as `db_url`'s."""
    yield from postgres_schema_url()


def postgres_schema_url() -> Iterator[str]:
    """The URL of a fresh schema on PENGI_TEST_POSTGRES_URL's server (the CI sets it), dropped afterwards."""
    base = os.environ.get("PENGI_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PENGI_TEST_POSTGRES_URL is not set")
    schema = f"pengi_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url) as opened:
        yield opened


def vec(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def windows(count: int, caption: str = "a dog barks", seed: int = 0) -> list[WindowInput]:
    rng = np.random.default_rng(seed)
    return [
        WindowInput(
            index=i,
            start_s=7.0 * i,
            end_s=7.0 * (i + 1),
            texts=[TextRecord("this is a sound of", f"{caption} {i}", -0.5), TextRecord("sound events:", "dog", None)],
            vectors={"text": rng.standard_normal(4).astype(np.float32), "audio": rng.standard_normal(3)},
        )
        for i in range(count)
    ]


def indexed_file(store: Store, path: str, count: int = 2, seed: int = 0) -> int:
    file_id = store.upsert_file(path, size=100, mtime=1.5)
    store.replace_file_windows(file_id, windows(count, seed=seed), audio=AUDIO)
    return file_id


# -- schema and locations ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def migrating(db_url: str) -> Iterator[tuple[Config, Connection]]:
    """An Alembic config bound to one transaction on the database, as `migrate` runs it."""
    engine = create_store_engine(db_url)
    config = alembic_config()
    try:
        with migration_connection(engine) as connection:
            config.attributes["connection"] = connection
            yield config, connection
    finally:
        engine.dispose()


def test_open_migrates_to_head_and_models_match_the_migrations(store: Store) -> None:
    assert store.stats()["schema_revision"] == SCHEMA_HEAD
    with store.session() as session:
        connection = session.connection()
        included = {"include_object": in_schema_of(connection.dialect.name)}  # as the migrations' env.py compares
        assert compare_metadata(MigrationContext.configure(connection, opts=included), Base.metadata) == []


def test_the_sqlite_tables_whose_ids_are_never_reused_are_those_the_models_say(tmp_path: Path) -> None:
    """`compare_metadata` does not see SQLite's AUTOINCREMENT: the migrated tables that have it are the models' own
    (windows: FAISS files are matched by id; files: pages and scripts name them by id)."""
    with Store.open(tmp_path / "index.db") as store, store.session() as session:
        tables = session.connection().exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
        migrated = {name for name, sql in tables if "AUTOINCREMENT" in sql}
    modelled = {table.name for table in Base.metadata.sorted_tables if table.dialect_options["sqlite"]["autoincrement"]}
    assert migrated == modelled == {"audio_files", "windows"}


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    with Store.open(tmp_path / "index.db") as store, store.session() as session:
        pragma = session.connection().exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA foreign_keys").scalar() == 1
        assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert pragma("PRAGMA busy_timeout").scalar() > 0


def test_opening_an_older_database_upgrades_it_and_keeps_its_rows(db_url: str) -> None:
    engine = create_store_engine(db_url)
    migrate(engine, "0001")
    with engine.begin() as connection:
        columns = {column["name"] for column in inspect(connection).get_columns("audio_files")}
        assert "content_hash" not in columns
        connection.execute(
            text(
                "INSERT INTO audio_files (id, path, size, mtime, status) VALUES (1, '/lib/old.wav', 10, 2.5, 'indexed')"
            )
        )
        connection.execute(
            text("INSERT INTO windows (id, file_id, window_index, start_s, end_s) VALUES (5, 1, 0, 0, 7)")
        )
        connection.execute(text("INSERT INTO generated_texts (window_id, prompt, text) VALUES (5, 'p', 'old caption')"))
    engine.dispose()

    with Store.open(db_url) as store:
        assert store.stats()["schema_revision"] == SCHEMA_HEAD
        old = store.get_file("/lib/old.wav")
        assert old is not None and (old.size, old.mtime, old.status, old.content_hash) == (10, 2.5, "indexed", None)
        assert store.window_details([5])[5].texts == (TextRecord("p", "old caption", None),)
        store.upsert_file("/lib/old.wav", size=11, mtime=3.0, content_hash="f" * 64)
        assert [f.path for f in store.files_with_hash("f" * 64)] == ["/lib/old.wav"]


def test_opening_an_older_library_says_once_that_it_upgraded_its_schema(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The upgrade is one way (an earlier pengi-search refuses a newer schema), so it is said, by the one process
    that made it; a new library and one already upgraded are opened without a word."""
    with Store.open(db_url) as store:
        indexed_file(store, "/lib/a.wav")
    assert caplog.messages == []
    with migrating(db_url) as (config, _connection):
        command.downgrade(config, "0003")
    with Store.open(db_url) as store:
        assert store.stats()["files"]["total"] == 1
    (said,) = caplog.messages
    assert said.endswith(
        f": upgraded the library's schema from revision 0003 to {SCHEMA_HEAD} (earlier pengi-search versions cannot "
        "open it any more)"
    ), said
    caplog.clear()
    with Store.open(db_url):
        pass
    assert caplog.messages == []


def test_a_0002_database_gains_run_owners_and_index_records(db_url: str) -> None:
    engine = create_store_engine(db_url)
    migrate(engine, "0002")
    with engine.begin() as connection:
        assert not inspect(connection).has_table("vector_indexes")
        connection.execute(
            text(
                "INSERT INTO runs (started_at, status, files_seen, files_indexed, files_failed, files_pruned) "
                "VALUES ('2025-11-27 10:00:00', 'running', 3, 1, 0, 0)"
            )
        )
    engine.dispose()

    with Store.open(db_url) as store:
        assert store.stats()["schema_revision"] == SCHEMA_HEAD
        (old,) = store.runs()
        assert (old.status, old.host, old.pid, old.files_seen) == ("running", None, None, 3)
        assert store.vector_indexes() == {}
        store.record_vector_index(
            "text", requested_type="ivfpq", effective_type="flat", params={"type": "flat"}, vectors=3
        )
        recorded = store.vector_indexes()["text"]
        assert (recorded.requested_type, recorded.effective_type, recorded.fell_back) == ("ivfpq", "flat", True)
        new_id = store.start_run()
        new = store.runs()[0]
        assert (new.id, new.pid) == (new_id, os.getpid()) and new.host
        assert store.interrupt_stale_runs() == [old.id, new_id]
        assert {run.status for run in store.runs()} == {"interrupted"}


def test_a_0003_database_keeps_its_texts_with_their_mode_unrecorded(db_url: str) -> None:
    """0004 records how each text was generated; texts written before it say nothing about that."""
    engine = create_store_engine(db_url)
    migrate(engine, "0003")
    with engine.begin() as connection:
        assert "mode" not in {column["name"] for column in inspect(connection).get_columns("generated_texts")}
        # Ids come from the database (RETURNING): PostgreSQL's sequences would not know of ids given here.
        insert_file = "INSERT INTO audio_files (path, status) VALUES ('/lib/old.wav', 'indexed') RETURNING id"
        file_id = connection.execute(text(insert_file)).scalar_one()
        insert_window = "INSERT INTO windows (file_id, window_index, start_s, end_s) VALUES (:f, 0, 0, 7) RETURNING id"
        old = connection.execute(text(insert_window), {"f": file_id}).scalar_one()
        insert_text = "INSERT INTO generated_texts (window_id, prompt, text) VALUES (:w, 'p', 'old caption')"
        connection.execute(text(insert_text), {"w": old})
    engine.dispose()

    with Store.open(db_url) as store:
        assert store.stats()["schema_revision"] == SCHEMA_HEAD
        assert store.window_details([old])[old].texts == (TextRecord("p", "old caption", None, None),)
        assert caption_modes(store) == {UNRECORDED_MODE: 1}
        fast = [TextRecord("p", "new caption", -0.5, "bf16+greedy")]
        file_id = store.upsert_file("/lib/new.wav", size=1, mtime=1.0)
        store.replace_file_windows(file_id, [WindowInput(0, 0.0, 7.0, fast, {"audio": vec(1, 2, 3)})], audio=AUDIO)
        (new,) = store.vector_ids("audio")  # the only window with an audio vector
        new = int(new)
        assert store.window_details([new])[new].texts == tuple(fast)
        assert caption_modes(store) == {"bf16+greedy": 1, UNRECORDED_MODE: 1}
    with migrating(db_url) as (config, connection):
        command.downgrade(config, "0003")
        assert "mode" not in {column["name"] for column in inspect(connection).get_columns("generated_texts")}


def test_a_0004_database_keeps_its_texts_with_their_decoding_settings_unrecorded(db_url: str) -> None:
    """0005 records the settings each text was decoded with; texts written before it have none."""
    engine = create_store_engine(db_url)
    migrate(engine, "0004")
    with engine.begin() as connection:
        assert "decoding" not in {column["name"] for column in inspect(connection).get_columns("generated_texts")}
    engine.dispose()

    with Store.open(db_url) as store:
        assert store.stats()["schema_revision"] == SCHEMA_HEAD
        old = TextRecord("p", "old caption", -0.5, "exact")
        decoded = TextRecord("p", "new caption", -0.5, "exact", "beam=3 max_len=30 stop=both")
        for path, texts in (("/lib/old.wav", [old]), ("/lib/new.wav", [decoded])):
            file_id = store.upsert_file(path, size=1, mtime=1.0)
            store.replace_file_windows(file_id, [WindowInput(0, 0.0, 7.0, texts, {"audio": vec(1, 2, 3)})], audio=AUDIO)
        ids = [int(i) for i in store.vector_ids("audio")]
        assert [store.window_details(ids)[i].texts for i in ids] == [(old,), (decoded,)]
        assert [row["windows"][0]["texts"][0]["decoding"] for row in store.export_rows()] == [
            "beam=3 max_len=30 stop=both",
            None,
        ]
    with migrating(db_url) as (config, connection):
        command.downgrade(config, "0004")
        assert "decoding" not in {column["name"] for column in inspect(connection).get_columns("generated_texts")}


def test_a_0005_database_gains_versions_of_its_vectors_and_an_index_of_texts_by_mode(db_url: str) -> None:
    """0006 records a version per kind of vectors, which every write of them renews (a FAISS file saved at the
    version the database is at is trusted without reading the ids), and indexes the texts by (mode, window_id)."""
    engine = create_store_engine(db_url)
    migrate(engine, "0005")
    with engine.begin() as connection:
        assert not inspect(connection).has_table("vector_versions")
    engine.dispose()

    def texts_indexes(connection: Connection) -> set[str]:
        return {index["name"] for index in inspect(connection).get_indexes("generated_texts")}

    with Store.open(db_url) as store:
        assert store.stats()["schema_revision"] == SCHEMA_HEAD
        before = [store.vector_state(kind) for kind in ("text", "audio")]
        assert [(state.version is not None, state.ids.tolist()) for state in before] == [(True, []), (True, [])]
        indexed_file(store, "/lib/a.wav")
        assert [store.vector_state(kind).version for kind in ("text", "audio")] != [s.version for s in before]
        with store.session() as session:
            assert "ix_generated_texts_mode_window_id" in texts_indexes(session.connection())
    with migrating(db_url) as (config, connection):
        command.downgrade(config, "0005")
        assert not inspect(connection).has_table("vector_versions")
        assert "ix_generated_texts_mode_window_id" not in texts_indexes(connection)
    with Store.open(db_url) as store:  # upgraded again
        assert store.stats()["vectors"] == {"text": 2, "audio": 2} and store.vector_state("text").version is not None


def test_the_version_of_vectors_and_their_ids_are_read_in_one_snapshot(store: Store, db_url: str) -> None:
    """A writer that commits between the two reads changes neither: ids newer than the version would be saved
    under it, and trusted by every later command."""
    indexed_file(store, "/lib/a.wav")
    before = store.vector_state("audio")

    def write_after_the_version_is_read(_conn, _cursor, statement, *_args) -> None:
        if "FROM vector_versions" in statement:
            with Store.open(db_url) as writer:
                indexed_file(writer, "/lib/b.wav", seed=1)

    event.listen(store.engine, "after_cursor_execute", write_after_the_version_is_read)
    try:
        during = store.vector_state("audio")
    finally:
        event.remove(store.engine, "after_cursor_execute", write_after_the_version_is_read)
    assert (during.version, during.ids.tolist()) == (before.version, before.ids.tolist())
    after = store.vector_state("audio")
    assert after.version != before.version and len(after.ids) == 4


def test_a_write_that_fails_before_its_commit_leaves_the_version_of_the_vectors(store: Store) -> None:
    indexed_file(store, "/lib/a.wav")
    before = [store.vector_state(kind).version for kind in ("text", "audio")]

    def fail_after_the_new_version(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("UPDATE VECTOR_VERSIONS"):
            raise RuntimeError("simulated crash before the commit")

    event.listen(store.engine, "after_cursor_execute", fail_after_the_new_version)
    try:
        for write in (lambda: indexed_file(store, "/lib/b.wav", seed=1), lambda: store.remove("/lib/a.wav")):
            with pytest.raises(RuntimeError, match="simulated crash"):
                write()
    finally:
        event.remove(store.engine, "after_cursor_execute", fail_after_the_new_version)
    assert [store.vector_state(kind).version for kind in ("text", "audio")] == before
    assert store.stats()["vectors"] == {"text": 2, "audio": 2}


def test_migrations_go_down_to_base_and_up_again(db_url: str) -> None:
    with Store.open(db_url) as store:
        indexed_file(store, "/lib/a.wav")
    with migrating(db_url) as (config, connection):
        command.downgrade(config, "0001")
        assert "content_hash" not in {column["name"] for column in inspect(connection).get_columns("audio_files")}
        command.downgrade(config, "base")
        assert set(inspect(connection).get_table_names()) == {"alembic_version"}
    engine = create_store_engine(db_url)
    migrate(engine)
    engine.dispose()
    with Store.open(db_url) as store:
        assert store.stats()["files"]["total"] == 0
        indexed_file(store, "/lib/a.wav")


def test_a_database_from_a_newer_pengi_search_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path / "index.db").close()
    engine = create_store_engine(f"sqlite:///{tmp_path / 'index.db'}")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match="9999 is newer"):
        Store.open(tmp_path / "index.db")


def another_applications_database(url: str, *statements: str) -> list[str]:
    """Run `statements` in the database at `url` (made by another application); returns its tables."""
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    with engine.connect() as connection:
        tables = sorted(inspect(connection).get_table_names())
    engine.dispose()
    return tables


@pytest.mark.parametrize("create", [True, False], ids=["index", "readers"])
def test_a_database_holding_another_applications_tables_is_refused_and_left_as_it_was(
    db_url: str, create: bool
) -> None:
    """No library in it, but tables: every command refuses it (`index` too, which would add its tables among the
    other application's, or fail on one of the same name) and says whose it is."""
    tables = another_applications_database(db_url, "CREATE TABLE runs (id INTEGER PRIMARY KEY, job TEXT)")
    with pytest.raises(ForeignDatabaseError, match=r"another application's tables \(runs\).*a database of its own"):
        Store.open(db_url, create=create, read_only=not create)
    assert another_applications_database(db_url) == tables


def folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in `folder`: its bytes and modification time."""
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("whose", ["ours", "another application's"])
def test_asking_whether_a_library_exists_creates_and_changes_nothing(tmp_path: Path, whose: str) -> None:
    """An ordinary connection would switch the file to WAL (writing into another application's database, in its
    journal mode) and could leave `-wal` and `-shm` files beside it: a look must not."""
    db = tmp_path / "index.db"
    if whose == "ours":
        Store.open(db).close()
    else:
        another_applications_database(f"sqlite:///{db}", "CREATE TABLE runs (id INTEGER PRIMARY KEY, job TEXT)")
    before = folder_state(tmp_path)
    if whose == "ours":
        assert library_exists(db)
    else:
        with pytest.raises(ForeignDatabaseError):
            library_exists(db)
    assert folder_state(tmp_path) == before


def test_a_library_being_written_is_seen_through_the_writers_files_and_left_as_it_was(tmp_path: Path) -> None:
    """The `-shm` file is the connections' shared memory, where every reader marks what it reads: not compared."""
    with Store.open(tmp_path / "index.db") as writer:  # its connection open: the library's -wal and -shm are there
        writer.start_run()
        before = folder_state(tmp_path)
        assert library_exists(tmp_path / "index.db")
        after = folder_state(tmp_path)
    assert list(after) == list(before) == ["index.db", "index.db-shm", "index.db-wal"]
    assert (after["index.db"], after["index.db-wal"]) == (before["index.db"], before["index.db-wal"])


def test_another_applications_alembic_revision_is_not_taken_for_a_newer_pengi_search(db_url: str) -> None:
    tables = another_applications_database(
        db_url,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('ab12cd34ef56')",
        "CREATE TABLE users (id INTEGER PRIMARY KEY)",
    )
    for create in (True, False):
        with pytest.raises(ForeignDatabaseError, match="belongs to another application .*ab12cd34ef56 is not pengi"):
            Store.open(db_url, create=create, read_only=not create)
    assert another_applications_database(db_url) == tables


def test_an_empty_database_on_a_server_is_where_index_makes_the_library(db_url: str) -> None:
    with pytest.raises(MissingDatabaseError, match="no index here yet"):
        Store.open(db_url, read_only=True)
    with Store.open(db_url) as store:
        assert store.stats()["files"]["total"] == 0


def test_an_empty_file_is_no_library_yet_and_commands_that_only_read_leave_it_untouched(tmp_path: Path) -> None:
    """A 0-byte file (made by `touch`, or a copy that failed) is an empty SQLite database; connecting to it would
    write a header into it. Readers, and `remove` and `rebuild-index`, which need a library, name the command
    that makes one and leave the file as it was; `index` makes its library there."""
    empty = tmp_path / "index.db"
    empty.touch()
    for read_only in (True, False):
        with pytest.raises(MissingDatabaseError, match="no index here yet"):
            Store.open(empty, create=False, read_only=read_only)
    assert not library_exists(empty)
    assert empty.stat().st_size == 0 and sorted(tmp_path.iterdir()) == [empty]
    with Store.open(empty, create=True) as store:
        assert store.stats()["files"]["total"] == 0
    assert library_exists(empty)


def test_a_missing_server_database_is_named_in_the_createdb_command_as_the_shell_takes_it() -> None:
    from pengi_search.db.errors import driver_reason

    reason = driver_reason(Exception('connection failed: FATAL:  database "sound library" does not exist'))
    assert "(create it first, e.g. `createdb 'sound library'`: pengi-search makes its tables" in reason


def test_the_command_that_creates_a_missing_library_is_named_without_the_urls_password(db_url: str) -> None:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        pytest.skip("a SQLite file has no password")
    if not url.password:
        url = url.set(password="never-shown")  # the CI server trusts loopback: any password is accepted
    with pytest.raises(MissingDatabaseError) as missing:
        Store.open(url.render_as_string(hide_password=False), read_only=True)
    assert url.password not in str(missing.value)
    assert f"pengi-search index PATH... --db '{url.render_as_string(hide_password=True)}'" in str(missing.value)


@pytest.mark.parametrize("read_only", [False, True])
def test_a_file_that_is_not_a_database_is_refused_as_bad_usage(tmp_path: Path, read_only: bool) -> None:
    """An audio file or a text file given as the database is a wrong argument, named, and left as it was."""
    notes = tmp_path / "notes.db"
    notes.write_text("shopping list: milk, eggs, a better microphone\n" * 20)
    with pytest.raises(DatabaseURLError, match=f"^{notes} is not a SQLite database: point --db") as refused:
        Store.open(notes, read_only=read_only)
    assert refused.value.exit_code == EXIT_USAGE and library_exists(tmp_path / "other.db") is False
    with pytest.raises(DatabaseURLError):
        library_exists(notes)
    assert notes.read_text().startswith("shopping list") and sorted(tmp_path.iterdir()) == [notes]


def test_a_damaged_database_is_refused(tmp_path: Path) -> None:
    """A file that begins as SQLite's do but is damaged cannot be read: not a usage error, a failure."""
    damaged = tmp_path / "lib.db"
    damaged.write_bytes(b"SQLite format 3\x00" + b"damaged pages " * 100)
    with pytest.raises(StoreError, match="file is not a database") as refused:
        Store.open(damaged)
    assert not isinstance(refused.value, DatabaseURLError)


def test_default_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PENGI_SEARCH_DB", raising=False)
    assert default_db_url() == f"sqlite:///{tmp_path / 'home' / 'index.db'}"
    monkeypatch.setenv("PENGI_SEARCH_DB", str(tmp_path / "env.db"))
    assert resolve_db_url() == f"sqlite:///{tmp_path / 'env.db'}"
    assert resolve_db_url(tmp_path / "cli.db") == f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.chdir(tmp_path)
    assert resolve_db_url("rel.db") == f"sqlite:///{tmp_path / 'rel.db'}"
    pg = "postgresql+psycopg://user:secret@db.example/pengi"
    assert resolve_db_url(pg) == pg
    assert default_index_dir(f"sqlite:///{tmp_path / 'lib' / 'a.db'}") == tmp_path / "lib"
    assert default_index_path(f"sqlite:///{tmp_path / 'a.db'}", "text") == tmp_path / "a.text.faiss"
    assert default_index_dir(pg) == tmp_path / "home"
    pg_text, pg_audio = default_index_path(pg, "text"), default_index_path(pg, "audio")
    assert pg_text.parent == tmp_path / "home" and pg_text.name.startswith("postgresql-") and pg_text != pg_audio
    assert default_index_path("postgresql+psycopg://user:secret@db.example/other", "text") != pg_text
    with pytest.raises(StoreError, match="cannot use this database URL"):
        Store.open("nonsense://somewhere")


def test_a_leading_tilde_is_the_home_folder_only_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The shell expands the `~` of `--db ~/x.db`: one that reaches pengi-search was quoted, or is in a URL, and names
    a folder `~`, as SQLite takes it; an environment variable's, which no shell expanded, is the home folder. An
    unknown user's `~name` stays as written, as in the shell (it was a traceback: Path.expanduser raises)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert resolve_db_url("~/x.db") == f"sqlite:///{tmp_path / '~' / 'x.db'}"
    assert sqlite_file("sqlite:///~/x.db") == tmp_path / "~" / "x.db"
    monkeypatch.setenv("PENGI_SEARCH_DB", "~/x.db")
    assert resolve_db_url() == f"sqlite:///{tmp_path / 'me' / 'x.db'}"
    monkeypatch.setenv("PENGI_SEARCH_DB", "~nobody-here/x.db")
    assert resolve_db_url() == f"sqlite:///{tmp_path / '~nobody-here' / 'x.db'}"
    monkeypatch.delenv("PENGI_SEARCH_DB")
    monkeypatch.setenv("PENGI_SEARCH_HOME", "~/data")
    assert default_index_dir(default_db_url()) == tmp_path / "me" / "data"
    monkeypatch.setenv("PENGI_SEARCH_HOME", "~nobody-here/data")
    assert default_index_dir(default_db_url()) == tmp_path / "~nobody-here" / "data"


def test_a_plain_file_path_opens_sqlite_in_a_new_folder(tmp_path: Path) -> None:
    with Store.open(tmp_path / "new" / "folder" / "index.db") as store:
        assert store.url == f"sqlite:///{tmp_path / 'new' / 'folder' / 'index.db'}"
    assert (tmp_path / "new" / "folder" / "index.db").is_file()


# -- files ------------------------------------------------------------------------------------------------------


def test_upsert_get_and_stamps(store: Store) -> None:
    run = store.start_run()
    file_id = store.upsert_file("/lib/a.wav", size=100, mtime=1234567890.123456, run_id=run)
    store.upsert_file("/lib/sub/b.wav", size=5, mtime=1.0, content_hash="b" * 64)
    record = store.get_file("/lib/a.wav")
    assert record is not None
    assert (record.id, record.size, record.mtime, record.status, record.run_id) == (
        file_id,
        100,
        1234567890.123456,
        "pending",
        run,
    )
    assert store.get_file("/lib/missing.wav") is None
    assert store.upsert_file("/lib/a.wav", size=101, mtime=2.0) == file_id
    stamps = store.all_file_stamps()
    assert stamps == {
        "/lib/a.wav": (101, 2.0, "pending", None),
        "/lib/sub/b.wav": (5, 1.0, "pending", "b" * 64),
    }
    assert stamps["/lib/sub/b.wav"].content_hash == "b" * 64
    assert list(store.all_file_stamps(under="/lib/sub")) == ["/lib/sub/b.wav"]


def test_prefixes_match_whole_folders_case_sensitively(store: Store) -> None:
    for path in ("/lib/dogs", "/lib/dogs/a.wav", "/lib/dogs2/b.wav", "/lib/Dogs/c.wav", "/lib/dogs_x.wav"):
        store.upsert_file(path, size=1, mtime=1.0)
    assert [f.path for f in store.files_under("/lib/dogs/")] == ["/lib/dogs", "/lib/dogs/a.wav"]
    assert [f.path for f in store.files_under("/lib/dogs")] == ["/lib/dogs", "/lib/dogs/a.wav"]
    assert len(store.files_under("/")) == 5
    assert len(store.files_under()) == 5


def test_record_file_error_keeps_indexed_windows(store: Store) -> None:
    file_id = indexed_file(store, "/lib/a.wav")
    before = store.vector_ids("text")
    assert store.record_file_error("/lib/a.wav", "cannot decode: bad header", size=7, mtime=9.0) == file_id
    record = store.get_file("/lib/a.wav")
    assert record is not None and (record.status, record.error, record.size, record.mtime) == (
        "error",
        "cannot decode: bad header",
        7,
        9.0,
    )
    assert np.array_equal(store.vector_ids("text"), before)
    new_id = store.record_file_error("/lib/broken.mp3", "permission denied")
    broken = store.get_file("/lib/broken.mp3")
    assert broken is not None and (broken.id, broken.size, broken.status) == (new_id, None, "error")
    store.upsert_file("/lib/broken.mp3", size=3, mtime=4.0)
    retried = store.get_file("/lib/broken.mp3")
    assert retried is not None and (retried.status, retried.error) == ("pending", None)


def test_touch_file_keeps_status_and_windows(store: Store) -> None:
    indexed_file(store, "/lib/a.wav")
    store.touch_file("/lib/a.wav", size=100, mtime=99.0)
    assert store.all_file_stamps()["/lib/a.wav"] == (100, 99.0, "indexed", None)
    assert len(store.vector_ids("audio")) == 2
    with pytest.raises(StoreError, match="not in the index"):
        store.touch_file("/lib/nope.wav", size=1, mtime=1.0)


# -- windows and vectors ----------------------------------------------------------------------------------------


def test_replace_file_windows_stores_everything_and_never_reuses_ids(store: Store) -> None:
    file_id = store.upsert_file("/lib/a.wav", size=100, mtime=1.0)
    given = windows(3)
    first = store.replace_file_windows(file_id, given, audio=AUDIO)
    assert first.removed_window_ids == [] and len(first.added_window_ids) == 3

    record = store.get_file("/lib/a.wav")
    assert record is not None
    assert (record.status, record.duration_s, record.sample_rate, record.channels, record.format) == (
        "indexed",
        14.0,
        44_100,
        2,
        "flac",
    )
    assert record.indexed_at is not None and record.indexed_at.tzinfo is not None

    ids, matrix = store.vectors("text")
    assert ids.dtype == np.int64 and matrix.dtype == np.float32
    assert ids.tolist() == first.added_window_ids
    np.testing.assert_array_equal(matrix, np.stack([w.vectors["text"] for w in given]))
    audio_ids, audio = store.vectors("audio", ids=[first.added_window_ids[2], 10**9, first.added_window_ids[0]])
    assert audio_ids.tolist() == [first.added_window_ids[0], first.added_window_ids[2]]
    expected_audio = np.stack([given[0].vectors["audio"], given[2].vectors["audio"]]).astype(
        np.float32
    )  # given float64
    np.testing.assert_array_equal(audio, expected_audio)

    details = store.window_details([first.added_window_ids[1], -1, 10**9])
    assert list(details) == [first.added_window_ids[1]]
    hit = details[first.added_window_ids[1]]
    assert (hit.path, hit.index, hit.start_s, hit.end_s, hit.file_duration_s, hit.format) == (
        "/lib/a.wav",
        1,
        7.0,
        14.0,
        14.0,
        "flac",
    )
    assert hit.texts == (TextRecord("this is a sound of", "a dog barks 1", -0.5), TextRecord("sound events:", "dog"))

    # The last window of the database is replaced: its id must not come back (FAISS files are matched by id).
    second = store.replace_file_windows(file_id, windows(1, caption="rain", seed=1))
    assert second.removed_window_ids == first.added_window_ids
    assert second.added_window_ids[0] > max(first.added_window_ids)
    assert store.vector_ids("text").tolist() == second.added_window_ids
    assert store.stats()["texts"] == 2


def test_a_failure_inside_replace_leaves_the_old_windows(store: Store) -> None:
    file_id = indexed_file(store, "/lib/a.wav", count=2)
    store.upsert_file("/lib/a.wav", size=200, mtime=2.0)
    before = (store.vectors("text"), store.window_details(store.vector_ids("text")))
    statements: list[str] = []

    def fail_on_texts(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)
        if statement.lstrip().upper().startswith("INSERT INTO GENERATED_TEXTS"):
            raise RuntimeError("simulated crash while writing texts")

    engine = store.engine
    event.listen(engine, "before_cursor_execute", fail_on_texts)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            store.replace_file_windows(file_id, windows(4, caption="new"), audio=AUDIO)
    finally:
        event.remove(engine, "before_cursor_execute", fail_on_texts)
    assert any(s.lstrip().upper().startswith("DELETE FROM WINDOWS") for s in statements)  # failed after deleting

    after_ids, after_matrix = store.vectors("text")
    np.testing.assert_array_equal(after_ids, before[0][0])
    np.testing.assert_array_equal(after_matrix, before[0][1])
    assert store.window_details(after_ids) == before[1]
    record = store.get_file("/lib/a.wav")
    assert record is not None and record.status == "pending"


def test_a_process_killed_inside_replace_leaves_the_old_windows(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        file_id = indexed_file(store, "/lib/a.wav", count=3)
        before = store.vectors("text")
    script = textwrap.dedent(
        f"""
        import os
        from sqlalchemy import event
        from tests.test_store import windows
        from pengi_search.db import Store

        store = Store.open({str(db)!r})

        def die(_conn, _cursor, statement, *_args):
            if statement.lstrip().upper().startswith("INSERT INTO WINDOW_VECTORS"):
                os._exit(3)

        event.listen(store.engine, "before_cursor_execute", die)
        store.replace_file_windows({file_id}, windows(5, caption="never"))
        """
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    with Store.open(db) as store:
        after = store.vectors("text")
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_array_equal(after[1], before[1])
        assert all("never" not in t.text for d in store.window_details(after[0]).values() for t in d.texts)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (WindowInput(0, 0.0, 7.0, vectors={"text": vec(1.0, float("nan"), 0.0, 0.0)}), "NaN"),
        (WindowInput(0, 0.0, 7.0, vectors={"text": vec(1.0, 2.0)}), "2 dimensions but the index embedder has 4"),
        (WindowInput(0, 0.0, 7.0, vectors={"pixels": vec(1.0)}), "unknown"),
        (WindowInput(0, 7.0, 1.0), "bad time span"),
    ],
)
def test_replace_rejects_bad_windows_and_changes_nothing(store: Store, bad: WindowInput, message: str) -> None:
    store.set_index_meta(MODEL, EMBEDDER)
    file_id = indexed_file(store, "/lib/a.wav")
    before = store.vectors("text")
    with pytest.raises(RefusedInputError, match=message):
        store.replace_file_windows(file_id, [bad])
    after = store.vectors("text")
    np.testing.assert_array_equal(after[0], before[0])


def test_replace_rejects_repeated_window_indexes_and_unknown_files(store: Store) -> None:
    file_id = store.upsert_file("/lib/a.wav", size=1, mtime=1.0)
    with pytest.raises(RefusedInputError, match="window indexes repeat"):
        store.replace_file_windows(file_id, [*windows(2), *windows(1)])
    with pytest.raises(RefusedInputError, match="not in the index"):
        store.replace_file_windows(file_id + 1000, windows(1))


def test_vectors_of_an_empty_kind_and_of_mixed_dimensions(store: Store) -> None:
    ids, matrix = store.vectors("text")
    assert ids.shape == (0,) and matrix.shape == (0, 0)
    first = store.upsert_file("/lib/a.wav", size=1, mtime=1.0)
    second = store.upsert_file("/lib/b.wav", size=1, mtime=1.0)
    store.replace_file_windows(first, [WindowInput(0, 0.0, 7.0, vectors={"text": vec(1, 0, 0)})])
    store.replace_file_windows(second, [WindowInput(0, 0.0, 7.0, vectors={"text": vec(1, 0)})])
    with pytest.raises(StoreError, match=r"mixed dimensions \[2, 3\]"):
        store.vectors("text")
    with pytest.raises(StoreError, match="unknown"):
        store.vector_ids("video")


def test_filter_window_ids(store: Store) -> None:
    indexed_file(store, "/lib/dogs/a.wav", count=2)
    short = store.upsert_file("/lib/cats/b.wav", size=1, mtime=1.0)
    result = store.replace_file_windows(short, windows(1), audio=StoredAudio(3.0, 16_000, 1, "mp3"))
    assert len(store.filter_window_ids()) == 3
    assert store.filter_window_ids(formats=["MP3"]).tolist() == result.added_window_ids
    assert store.filter_window_ids(max_duration_s=5.0).tolist() == result.added_window_ids
    assert len(store.filter_window_ids(under="/lib/dogs", min_duration_s=10.0)) == 2
    assert len(store.filter_window_ids(under="/lib/dogs", formats=["mp3"])) == 0


def test_file_paths_and_the_windows_of_files(store: Store) -> None:
    """What a search filtered by names reads: the files within the folder and durations, then their windows."""
    dogs = indexed_file(store, "/lib/dogs/a.wav", count=2)
    cat = store.upsert_file("/lib/cats/b.wav", size=1, mtime=1.0)
    cat_windows = store.replace_file_windows(cat, windows(3), audio=StoredAudio(3.0, 16_000, 1, "mp3"))
    assert sorted(path for _, path in store.file_paths()) == ["/lib/cats/b.wav", "/lib/dogs/a.wav"]
    assert store.file_paths(under="/lib/cats") == store.file_paths(max_duration_s=5.0) == [(cat, "/lib/cats/b.wav")]
    assert store.file_paths(under="/lib/cats", min_duration_s=5.0) == []
    assert store.window_ids_of_files([cat]).tolist() == cat_windows.added_window_ids
    assert len(store.window_ids_of_files([dogs, cat, cat])) == 5 and store.window_ids_of_files([]).size == 0


# -- pruning, removal, statistics, export -----------------------------------------------------------------------


def test_prune_missing_deletes_files_windows_and_vectors(store: Store) -> None:
    for name in ("a", "b", "c"):
        indexed_file(store, f"/lib/one/{name}.wav")
    indexed_file(store, "/lib/two/d.wav")
    assert store.prune_missing(["/lib/one/a.wav"], under="/lib/one") == 2
    assert sorted(store.all_file_stamps()) == ["/lib/one/a.wav", "/lib/two/d.wav"]
    assert len(store.vector_ids("text")) == 4 and store.stats()["texts"] == 8
    assert store.prune_missing([]) == 2
    assert store.stats()["window_count"] == 0


def test_prune_missing_handles_many_files(store: Store) -> None:
    paths = [f"/big/{i:05d}.wav" for i in range(1200)]
    with store.session(write=True) as session:
        session.execute(
            text("INSERT INTO audio_files (path, size, mtime, status) VALUES (:path, 1, 1.0, 'pending')"),
            [{"path": p} for p in paths],
        )
    assert len(store.all_file_stamps()) == 1200
    assert store.prune_missing(paths[::2]) == 600
    assert sorted(store.all_file_stamps()) == paths[::2]


def test_remove_a_file_or_a_folder(store: Store) -> None:
    for path in ("/lib/x/a.wav", "/lib/x/sub/b.wav", "/lib/xy/c.wav", "/lib/z.wav"):
        indexed_file(store, path)
    assert store.remove("/lib/z.wav") == 1
    assert store.remove("/lib/x") == 2
    assert store.remove("/lib/nothing") == 0
    assert list(store.all_file_stamps()) == ["/lib/xy/c.wav"]
    assert len(store.vector_ids("audio")) == 2


def test_a_removed_files_id_is_never_given_to_another_file(store: Store) -> None:
    """A page or script holding a file's id (`/api/files/ID`, a hit's `file_id`) must not find another file under it:
    the newest file removed, the next file indexed takes a new id (SQLite's rowid would take the removed one)."""
    indexed_file(store, "/lib/a.wav")
    newest = indexed_file(store, "/lib/b.wav", seed=1)
    assert store.remove("/lib/b.wav") == 1
    assert indexed_file(store, "/lib/c.wav", seed=2) > newest


def test_the_highest_ids_ever_given_count_the_removed_newest_file_and_its_windows(store: Store) -> None:
    """What `serve` tells "gone since the page was made" from "never there" by: an id up to the highest ever given
    was there once, the newest file's removed since too."""
    assert (catalog.highest_file_id(store), catalog.highest_window_id(store)) == (0, 0)
    indexed_file(store, "/lib/a.wav")
    newest = indexed_file(store, "/lib/b.wav", count=3, seed=1)
    windows_given = max(store.vector_ids("audio"))
    assert store.remove("/lib/b.wav") == 1
    assert (catalog.highest_file_id(store), catalog.highest_window_id(store)) == (newest, windows_given)


def test_stats(store: Store) -> None:
    run = store.start_run(shard="0/2")
    indexed_file(store, "/lib/a.wav", count=3)
    store.upsert_file("/lib/b.wav", size=1, mtime=1.0)
    store.record_file_error("/lib/c.wav", "bad")
    store.set_index_meta(MODEL, EMBEDDER)
    store.finish_run(run, files_seen=3, files_indexed=1, files_failed=1)
    stats = store.stats()
    json.dumps(stats)
    assert stats["files"] == {"total": 3, "pending": 1, "indexed": 1, "error": 1}
    assert (stats["window_count"], stats["texts"], stats["vectors"]) == (3, 6, {"text": 3, "audio": 3})
    assert stats["indexed_audio_s"] == 14.0
    assert stats["model"]["model"] == "pengi-base" and stats["model"]["embedder_dim"] == 4
    assert stats["last_run"]["id"] == run and stats["last_run"]["status"] == "finished"
    assert stats["last_run"]["shard"] == "0/2" and stats["last_run"]["files_indexed"] == 1


def in_modes(path: str, *modes: str | None) -> tuple[str, list[WindowInput]]:
    """A file of one window whose texts were generated in `modes`, one text each."""
    texts = [TextRecord(f"prompt {i}", "a dog barks", None, mode) for i, mode in enumerate(modes)]
    return path, [WindowInput(0, 0.0, 7.0, texts, {"audio": vec(1, 2, 3)})]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([], {}),
        ([in_modes("/a.wav", "exact", "exact"), in_modes("/b.wav", "exact")], {"exact": 2}),
        ([in_modes("/a.wav", None, None)], {UNRECORDED_MODE: 1}),
        ([in_modes("/a.wav", "exact"), in_modes("/b.wav", None)], {"exact": 1, UNRECORDED_MODE: 1}),
        (
            [in_modes("/a.wav", None, "bf16+greedy"), in_modes("/b.wav", "exact", "exact")],
            {UNRECORDED_MODE: 1, "bf16+greedy": 1, "exact": 1},
        ),
    ],
)
def test_caption_modes_counts_each_window_once_in_each_mode_of_its_texts(store: Store, files, expected) -> None:
    for path, file_windows in files:
        store.replace_file_windows(store.upsert_file(path, size=1, mtime=1.0), file_windows, audio=AUDIO)
    assert caption_modes(store) == expected


def test_windows_by_caption_mode_are_counted_from_an_index_without_sorting_the_texts(tmp_path: Path) -> None:
    """Grouping the texts table by mode sorted every text of the library (127 ms of CPU at 400,000 texts in two
    modes); the (mode, window_id) index of revision 0006 holds them in the order the count needs, whatever the
    modes: SQLite's plan reads it alone, with no temporary b-tree."""
    with Store.open(tmp_path / "index.db") as store:
        statements: list[str] = []

        def record(_conn, _cursor, statement, *_args) -> None:
            statements.append(statement)

        event.listen(store.engine, "before_cursor_execute", record)
        try:
            caption_modes(store)
        finally:
            event.remove(store.engine, "before_cursor_execute", record)
        (query,) = [s for s in statements if "generated_texts" in s]
        with store.session() as session:
            plan = [row[-1] for row in session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {query}")]
    assert plan == ["SCAN generated_texts USING COVERING INDEX ix_generated_texts_mode_window_id"]


def test_drop_fast_captions_renews_those_windows_with_their_audio_only(store: Store) -> None:
    fast_file = store.upsert_file("/lib/fast.wav", size=100, mtime=1.5)
    fast = [replace(w, texts=[replace(t, mode="bf16+greedy") for t in w.texts]) for w in windows(2)]
    store.replace_file_windows(fast_file, fast, audio=AUDIO)
    exact_file = store.upsert_file("/lib/other/exact.wav", size=100, mtime=1.5)
    exact = [replace(w, texts=[replace(t, mode="exact") for t in w.texts]) for w in windows(1, seed=1)]
    store.replace_file_windows(exact_file, exact, audio=AUDIO)
    old_ids = store.vector_ids("audio")
    old_audio = store.vectors("audio", old_ids)[1]

    assert drop_fast_captions(store, "/lib/other") == 0  # below another folder: nothing
    assert drop_fast_captions(store, "/lib", owns=lambda path: path != "/lib/fast.wav") == 0  # not this shard's
    assert drop_fast_captions(store, "/lib") == 2

    waiting = uncaptioned_windows(store)
    assert [(w.path, w.index) for w in waiting] == [("/lib/fast.wav", 0), ("/lib/fast.wav", 1)]
    assert not {w.window_id for w in waiting} & set(old_ids.tolist())  # new ids, never an old one again
    np.testing.assert_array_equal(np.stack([w.audio for w in waiting]), old_audio[:2])  # the same embeddings
    assert caption_modes(store) == {"exact": 1}
    details = store.window_details([w.window_id for w in waiting])
    assert sorted((d.start_s, d.end_s, d.texts) for d in details.values()) == [(0.0, 7.0, ()), (7.0, 14.0, ())]
    assert drop_fast_captions(store, "/lib") == 0


def test_twins_are_waiting_windows_with_the_same_bytes_index_and_audio_embedding(store: Store) -> None:
    """Windows whose captions another's serve (pass 2 captions them once): below a folder, if one is given."""

    def indexed(path: str, content_hash: str, seed: int) -> tuple[int, list[int]]:
        audio_only = [replace(w, texts=[], vectors={"audio": w.vectors["audio"]}) for w in windows(2, seed=seed)]
        file_id = store.upsert_file(path, size=100, mtime=1.5, content_hash=content_hash)
        return file_id, store.replace_file_windows(file_id, audio_only, audio=AUDIO).added_window_ids

    source, first = indexed("/lib/a.wav", "h" * 64, seed=0)
    indexed("/lib/other bytes.wav", "x" * 64, seed=0)  # the same embeddings, other bytes
    indexed("/lib/decoded apart.wav", "h" * 64, seed=1)  # the same bytes, other embeddings
    for path in ("/lib/b.wav", "/elsewhere/c.wav"):
        copy_identical_file(store, path, [source], bool, size=100, mtime=2.0, content_hash="h" * 64)

    def twins(ids: list[int], under: str | None = None) -> list[tuple[int, str]]:
        return [(ids.index(twin.of), twin.path) for twin in uncaptioned_twins(store, ids, under=under)]

    copies = [(0, "/lib/b.wav"), (1, "/lib/b.wav"), (0, "/elsewhere/c.wav"), (1, "/elsewhere/c.wav")]
    assert twins(first) == copies
    assert twins(first, under="/lib") == copies[:2]
    assert twins(first[:1], under="/lib") == copies[:1]
    captioned = [WindowCaptions(twin.window_id, [], vec(1, 0, 0, 0)) for twin in uncaptioned_twins(store, first)]
    assert add_captions(store, captioned[1:]) == 3
    assert twins(first) == copies[:1]  # only windows that wait are twins


def test_a_file_with_an_indexed_files_bytes_is_indexed_as_its_copy(store: Store) -> None:
    """Every window with its audio vector, under a new id; texts and caption vector only where accepted."""
    source_id = store.upsert_file("/lib/a.wav", size=100, mtime=1.5, content_hash="h" * 64)
    source = store.replace_file_windows(source_id, windows(2), audio=replace(AUDIO, notes=("truncated: ...",)))
    store.upsert_file("/lib/b.wav", size=7, mtime=2.0, content_hash="b" * 64)  # pending: no source
    assert sizes_indexed(store, [100, 7, 5]) == {100}

    def first_window_only(texts: Sequence[TextRecord]) -> bool:
        return texts[0].text.endswith(" 0")

    copied = copy_identical_file(
        store, "/lib/b.wav", [source_id], first_window_only, size=100, mtime=3.0, content_hash="h" * 64
    )
    assert copied == CopiedFile("/lib/a.wav", windows=2, captioned=1, notes=("truncated: ...",))
    record = store.get_file("/lib/b.wav")
    assert (record.status, record.size, record.mtime, record.content_hash) == ("indexed", 100, 3.0, "h" * 64)
    assert (record.duration_s, record.format, record.notes) == (14.0, "flac", "truncated: ...")
    assert caption_counts(store, "/lib/b.wav").to_json() == {"window_count": 2, "captioned": 1, "missing": 1}
    waiting = uncaptioned_windows(store, under="/lib/b.wav")
    assert [w.index for w in waiting] == [1] and waiting[0].window_id not in source.added_window_ids
    old_ids, old_audio = store.vectors("audio", source.added_window_ids)
    new_ids = sorted(set(store.vector_ids("audio").tolist()) - set(old_ids.tolist()))
    np.testing.assert_array_equal(store.vectors("audio", new_ids)[1], old_audio)
    copy = store.window_details(new_ids)[new_ids[0]]
    assert copy.texts == store.window_details(old_ids[:1])[old_ids[0]].texts and copy.path == "/lib/b.wav"

    # A source that changed, or the path itself, is none: nothing written.
    assert (
        copy_identical_file(store, "/lib/c.wav", [source_id], bool, size=100, mtime=1.0, content_hash="x" * 64) is None
    )
    assert (
        copy_identical_file(store, "/lib/a.wav", [source_id], bool, size=100, mtime=1.0, content_hash="h" * 64) is None
    )
    assert store.get_file("/lib/c.wav") is None and store.stats()["window_count"] == 4


def test_runs(store: Store) -> None:
    first = store.start_run()
    second = store.start_run(shard="1/4")
    store.finish_run(first, status="interrupted", files_seen=10, files_pruned=2)
    runs = store.runs()
    assert [r.id for r in runs] == [second, first]
    assert (runs[0].status, runs[0].finished_at) == ("running", None)
    assert (runs[1].status, runs[1].files_seen, runs[1].files_pruned) == ("interrupted", 10, 2)
    assert runs[1].finished_at is not None and runs[1].finished_at >= runs[1].started_at
    with pytest.raises(StoreError, match="unknown final status"):
        store.finish_run(second, status="running")
    with pytest.raises(StoreError, match="no such indexing run"):
        store.finish_run(second + 100)


def test_a_run_killed_outright_keeps_what_it_saw_and_did(store: Store) -> None:
    """It records nothing at its end: the files it found were noted on the way, and the files it indexed or failed
    name it, so the run that finds it dead can count them."""
    killed = store.start_run()
    store.note_files_seen(killed, 5)
    for i in range(2):
        file_id = store.upsert_file(f"/lib/{i}.wav", size=100, mtime=1.5, run_id=killed)
        store.replace_file_windows(file_id, windows(1, seed=i), audio=AUDIO, run_id=killed)
    store.record_file_error("/lib/broken.wav", "unreadable", run_id=killed)
    store.upsert_file("/lib/pending.wav", size=100, mtime=1.5, run_id=killed)  # begun, never finished
    assert store.interrupt_stale_runs() == [killed]
    (run,) = store.runs()
    assert (run.status, run.files_seen, run.files_indexed, run.files_failed) == ("interrupted", 5, 2, 1)


def test_export_rows_pages_through_every_file(store: Store) -> None:
    for i in range(5):
        indexed_file(store, f"/lib/{i}.wav", count=i % 3)
    store.record_file_error("/lib/z.wav", "unreadable")
    rows = list(store.export_rows(page_size=2))
    assert [row["path"] for row in rows] == [*(f"/lib/{i}.wav" for i in range(5)), "/lib/z.wav"]
    json.dumps(rows)
    second = rows[2]
    assert (second["status"], second["format"], second["duration_s"]) == ("indexed", "flac", 14.0)
    assert [w["index"] for w in second["windows"]] == [0, 1]
    first_text = {
        "prompt": "this is a sound of",
        "text": "a dog barks 1",
        "score": -0.5,
        "mode": None,
        "decoding": None,
    }
    assert second["windows"][1]["texts"][0] == first_text
    assert (rows[-1]["status"], rows[-1]["error"], rows[-1]["windows"]) == ("error", "unreadable", [])
    assert [row["path"] for row in store.export_rows(under="/lib/3.wav")] == ["/lib/3.wav"]


def test_export_rows_of_a_long_file_keep_every_window_and_text_in_order(store: Store) -> None:
    """More windows in a page than one statement lists ids (`IDS_PER_QUERY`): a recording of hours."""
    count = IDS_PER_QUERY + 20
    indexed_file(store, "/lib/long.wav", count=count)
    (row,) = store.export_rows()
    assert [w["index"] for w in row["windows"]] == list(range(count))
    assert all([t["text"] for t in w["texts"]] == [f"a dog barks {w['index']}", "dog"] for w in row["windows"])


# -- model and embedder -----------------------------------------------------------------------------------------


def test_check_compatible_names_what_built_the_index(store: Store) -> None:
    store.check_compatible(MODEL, EMBEDDER)  # empty index: anything goes
    store.set_index_meta(MODEL, EMBEDDER)
    store.set_index_meta(MODEL, EMBEDDER)  # same again: fine
    store.check_compatible(MODEL, EMBEDDER)
    store.check_compatible(None, EMBEDDER)
    other = ModelInfo("pengi-base-no-text-enc", "b" * 64)
    with pytest.raises(StoreMismatchError) as caught:
        store.check_compatible(other, EMBEDDER)
    assert caught.value.reason == (  # what differs, once
        f"the library was built with model 'pengi-base' (fingerprint {'a' * 16}), but this run uses model "
        f"'pengi-base-no-text-enc' (fingerprint {'b' * 16}): run again with --reindex to index it anew (every caption "
        "and vector made again)"
    )
    with pytest.raises(StoreMismatchError, match="dim 384"):
        store.check_compatible(None, EmbedderInfo("all-MiniLM-L6-v2", 384))
    with pytest.raises(StoreMismatchError):
        store.set_index_meta(other, EMBEDDER)
    meta = store.index_meta()
    assert meta is not None and meta.model == MODEL and meta.embedder == EMBEDDER


def test_reset_index_forgets_windows_for_a_new_model(store: Store) -> None:
    store.set_index_meta(MODEL, EMBEDDER)
    indexed_file(store, "/lib/a.wav")
    indexed_file(store, "/lib/b.wav")
    other = EmbedderInfo("all-MiniLM-L6-v2", 384)
    assert store.reset_index(MODEL, other) == 2
    assert store.stats()["window_count"] == 0
    assert {s.status for s in store.all_file_stamps().values()} == {"pending"}
    store.check_compatible(MODEL, other)


# -- concurrency ------------------------------------------------------------------------------------------------


def assert_whole_files(reader: Store, file_ids: list[int], per_file: int) -> None:
    """Every file has all its windows, and all of them come from one replace (one caption per file)."""
    window_ids, matrix = reader.vectors("text")
    assert len(window_ids) == 2 * per_file and matrix.shape == (2 * per_file, 4)
    details = reader.window_details(window_ids)
    for file_id in file_ids:
        captions = {d.texts[0].text.rsplit(" ", 1)[0] for d in details.values() if d.file_id == file_id}
        assert len(captions) <= 1


def test_readers_see_whole_files_while_writers_work(db_url: str) -> None:
    """A reader in another Store (its own connections) never sees half a file; two writers queue, not fail."""
    per_file = 6
    with Store.open(db_url) as setup:
        ids = [setup.upsert_file(f"/lib/{name}.wav", size=1, mtime=1.0) for name in ("a", "b")]
        for file_id in ids:
            setup.replace_file_windows(file_id, windows(per_file))
    errors: list[BaseException] = []
    done = threading.Event()

    def write(file_id: int, rounds: int) -> None:
        try:
            with Store.open(db_url) as writer:
                for i in range(rounds):
                    writer.replace_file_windows(file_id, windows(per_file, caption=f"round {i}", seed=i))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def read() -> None:
        try:
            with Store.open(db_url) as reader:
                while not done.is_set():
                    assert_whole_files(reader, ids, per_file)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(file_id, 15)) for file_id in ids]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert errors == []
    with Store.open(db_url) as check:
        assert check.stats()["window_count"] == 2 * per_file


def test_schema_head_constant_is_the_newest_migration() -> None:
    """`Store.open` answers "already at head" without alembic by comparing with SCHEMA_HEAD; keep them equal."""
    from alembic.script import ScriptDirectory

    from pengi_search.db.migrate import SCHEMA_HEAD, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_HEAD

"""Schema migrations on SQLite keep every row: Alembic's batch mode rebuilds a table by copy and drop, which with
foreign keys on deletes the rows of its children; so migrations run with them off, checked before the commit, in
one transaction."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import CheckConstraint, inspect, text

from pengi_search.db import Store, StoreError
from pengi_search.db.engine import create_store_engine
from pengi_search.db.migrate import SCHEMA_HEAD, alembic_config, migrate
from pengi_search.db.schema import Base

from .test_store import indexed_file, migrating


@pytest.fixture()
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'index.db'}"


def rows(db_url: str) -> dict[str, object]:
    """What the library holds: files, windows, texts and vectors (opening it upgrades it to the head)."""
    with Store.open(db_url) as store:
        stats = store.stats()
    return {key: stats[key] for key in ("files", "window_count", "texts", "vectors")}


def revision(db_url: str) -> str:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_downgrading_0002_then_upgrading_keeps_every_window_text_and_vector(db_url):
    """0002's downgrade rebuilds `audio_files`: it deleted every window, text and vector."""
    with Store.open(db_url) as store:
        indexed_file(store, "/lib/a.wav", count=2)
        indexed_file(store, "/lib/b.wav", count=1, seed=1)
    before = rows(db_url)
    assert before["window_count"] == 3 and before["texts"] == 6 and before["vectors"] == {"text": 3, "audio": 3}
    with migrating(db_url) as (config, connection):
        command.downgrade(config, "0001")
        assert connection.scalar(text("SELECT count(*) FROM windows")) == 3
    assert revision(db_url) == "0001"
    assert rows(db_url) == before
    assert revision(db_url) == SCHEMA_HEAD


def test_sqlite_is_not_migrated_with_foreign_keys_on(db_url):
    """A connection of the store's own (foreign keys on) handed to Alembic is refused before any change."""
    Store.open(db_url).close()
    engine = create_store_engine(db_url)
    config = alembic_config()
    try:
        with pytest.raises(RuntimeError, match="foreign keys off"), engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")
    finally:
        engine.dispose()
    assert revision(db_url) == SCHEMA_HEAD


def test_an_upgrade_that_would_leave_rows_without_their_parent_is_refused_and_changes_nothing(db_url):
    engine = create_store_engine(db_url)
    migrate(engine, "0004")
    engine.dispose()
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as connection:  # foreign keys off: nothing stops it
        connection.execute("INSERT INTO windows (id, file_id, window_index, start_s, end_s) VALUES (1, 7, 0, 0, 7)")
    with pytest.raises(StoreError) as refused:
        Store.open(db_url)
    assert refused.value.reason == (
        f"cannot upgrade the library's schema to {SCHEMA_HEAD}: after it, rows would refer to rows that are not there "
        "(1 in windows -> audio_files); nothing was changed"
    )
    assert revision(db_url) == "0004"


def test_a_kill_9_in_the_middle_of_an_upgrade_leaves_the_library_as_it_was(db_url):
    """The upgrade is one transaction, foreign keys off or not: killed once every migration ran but before the
    commit, the library is at its old revision with all its rows, and the next command upgrades it."""
    with Store.open(db_url) as store:
        indexed_file(store, "/lib/a.wav", count=2)
    before = rows(db_url)
    with migrating(db_url) as (config, _connection):
        command.downgrade(config, "0001")
    killed_after_the_migrations = textwrap.dedent(
        """
        import os, signal, sys
        from alembic import command
        from pengi_search.db import Store

        upgrade = command.upgrade

        def upgrade_then_die(config, revision):
            upgrade(config, revision)
            os.kill(os.getpid(), signal.SIGKILL)

        command.upgrade = upgrade_then_die
        Store.open(sys.argv[1])
        """
    )
    ended = subprocess.run([sys.executable, "-c", killed_after_the_migrations, db_url], capture_output=True, text=True)
    assert ended.returncode == -9, ended.stderr
    assert revision(db_url) == "0001"
    assert rows(db_url) == before


def schema_of_audio_files(db_url: str) -> dict[str, object]:
    """What the rebuild of `audio_files` must keep: its indexes, the foreign keys to and from it, and its checks."""
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as connection:
        pragma = connection.execute
        sql = pragma("SELECT sql FROM sqlite_master WHERE name = 'audio_files'").fetchone()[0]
        return {
            "indexes": sorted(index[1:] for index in pragma("PRAGMA index_list(audio_files)")),  # but their order
            "references": pragma("PRAGMA foreign_key_list(audio_files)").fetchall(),
            "referred_by": pragma("PRAGMA foreign_key_list(windows)").fetchall(),
            "checks": sorted(line.strip(" \t,") for line in sql.splitlines() if "CHECK" in line or "UNIQUE" in line),
            "autoincrement": "AUTOINCREMENT" in sql,
        }


def test_upgrading_a_0006_library_keeps_every_row_and_key_and_then_never_reuses_a_file_id(db_url):
    """0007 rebuilds `audio_files` with AUTOINCREMENT (the downgrade without), foreign keys off so that dropping the
    old table deletes no window: every file, window, text and vector stays, with their ids and keys, and the newest
    file removed after the upgrade, the next file takes a new id."""
    with Store.open(db_url) as store:
        for seed, path in enumerate(["/lib/a.wav", "/lib/b.wav", "/lib/c.wav"]):
            indexed_file(store, path, count=2, seed=seed)
        newest = store.get_file("/lib/c.wav").id
    upgraded = schema_of_audio_files(db_url)
    before = rows(db_url)
    with migrating(db_url) as (config, _connection):
        command.downgrade(config, "0006")
    assert revision(db_url) == "0006" and not schema_of_audio_files(db_url)["autoincrement"]
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as connection:
        assert connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audio_files'").fetchone() is None

    assert rows(db_url) == before  # opened, so upgraded to the head again
    assert revision(db_url) == SCHEMA_HEAD
    assert schema_of_audio_files(db_url) == upgraded and upgraded["autoincrement"]
    with Store.open(db_url) as store:
        assert store.get_file("/lib/c.wav").id == newest
        assert store.remove("/lib/c.wav") == 1
        assert store.stats()["window_count"] == 4  # the windows' foreign key still deletes a removed file's windows
        assert indexed_file(store, "/lib/d.wav", seed=3) == newest + 1


def test_the_migrated_checks_are_the_models_checks(tmp_path: Path) -> None:
    """`compare_metadata` does not see CHECK constraints: the values the migrated tables allow (the literals of the
    revisions) are those the models build from `records`' tuples, as SQLite keeps them word for word."""
    with Store.open(tmp_path / "index.db") as store, store.session() as session:
        reflected = inspect(session.connection())
        migrated = {
            (table.name, check["name"], check["sqltext"])
            for table in Base.metadata.sorted_tables
            for check in reflected.get_check_constraints(table.name)
        }
    modelled = {
        (table.name, constraint.name, str(constraint.sqltext))
        for table in Base.metadata.sorted_tables
        for constraint in table.constraints
        if isinstance(constraint, CheckConstraint)
    }
    assert migrated == modelled
    assert ("runs", "ck_runs_status", "status IN ('running', 'finished', 'failed', 'interrupted')") in modelled

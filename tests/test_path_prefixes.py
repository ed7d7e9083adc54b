""" "The files below a folder" (`queries.paths_under`) on SQLite and PostgreSQL: exactly the paths that start with the
folder whatever characters it holds (LIKE's `%`, `_` and `\\`, non-ASCII, bytes that are not UTF-8), and on
PostgreSQL read from revision 0008's byte-wise index, also where the database sorts text by language (en-US)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from alembic import command
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.dialects import postgresql

from pengi_search.db import Store
from pengi_search.db.engine import create_store_engine
from pengi_search.db.migrate import SCHEMA_HEAD, migrate
from pengi_search.db.queries import paths_under
from pengi_search.db.schema import PATH_PATTERN_INDEX, AudioFileRow
from pengi_search.pathnames import to_stored
from pengi_search.query_plans import recorded

from . import test_store

db_url = test_store.db_url  # the same fixtures: every test given `store` runs on SQLite and on PostgreSQL
store = test_store.store
pg_url = test_store.pg_url

NAMES = [
    "/lib/50%/a.wav",
    "/lib/50x/b.wav",  # LIKE '/lib/50%/%' unescaped would take it
    "/lib/a_b/c.wav",
    "/lib/axb/d.wav",  # and '/lib/a_b/%' this one
    "/lib/back\\slash/e.wav",
    "/lib/backslash/f.wav",  # '\s' is LIKE's escaped 's'
    "/lib/café/g.wav",
    "/lib/Café/h.wav",
    "/lib/cafe/i.wav",  # the same letters to a collation that ignores accents at first
    "/lib/caf/j.wav",
    "/lib/café0/k.wav",
    "/lib/日本/l.wav",
    "/lib/dogs",  # a file named as the folder
    "/lib/dogs/m.wav",
    "/lib/dogs/puppies/n.wav",
    "/lib/Dogs/o.wav",  # the same letters to a collation that ignores case at first
    "/lib/dogs-old/p.wav",  # '-' sorts before '/' in bytes; punctuation that a collation may ignore
    "/lib/dogs0/q.wav",  # '0' is where the folder's byte-wise range ends
    "/lib/dogsx/r.wav",
    os.fsdecode(b"/lib/caf\xe9/s.wav"),  # Latin-1 bytes from an old share
]
FOLDERS = [
    "/lib/50%",
    "/lib/a_b",
    "/lib/back\\slash",
    "/lib/café",
    "/lib/Café",
    "/lib/日本",
    "/lib/dogs",
    "/lib/dogs/",
    "/lib/Dogs",
    "/lib/dogs/m.wav",
    os.fsdecode(b"/lib/caf\xe9"),
    "/lib/%",
    "/lib/_",
    "/lib",
    "/",
]


def below(folder: str) -> set[str]:
    """What the store must answer: the path `folder` itself, and the paths that start with `folder/`."""
    inside = folder.rstrip("/") + "/"
    return {name for name in NAMES if name == folder.rstrip("/") or name.startswith(inside)}


def found_below(store: Store, folder: str) -> tuple[list[str], bool, set[str]]:
    """The store's answers for `folder`: the files below it, whether it holds any, and their stamps' paths."""
    files = [record.path for record in store.files_under(folder)]
    return files, store.holds(folder), set(store.all_file_stamps(folder))


def recorded_names(store: Store) -> None:
    for number, name in enumerate(NAMES):
        store.upsert_file(name, size=number, mtime=1.0)


def test_the_files_below_a_folder_are_the_paths_that_start_with_it(store: Store) -> None:
    recorded_names(store)
    for folder in FOLDERS:
        files, holds, stamps = found_below(store, folder)
        assert (set(files), holds, stamps) == (below(folder), bool(below(folder)), below(folder)), folder
        assert len(files) == len(set(files))


def test_a_folder_exported_page_by_page_is_its_files_in_byte_order(store: Store) -> None:
    """`export --under` reads the folder's own path, then the paths inside it, a page at a time: the files below
    the folder, each once, in byte order (SQLite's), whatever the size of a page."""
    recorded_names(store)
    for folder in FOLDERS:
        in_byte_order = sorted(below(folder), key=lambda name: to_stored(name).encode())
        for page_size in (1, 2, 200):
            exported = [row["path"] for row in store.export_rows(folder, page_size=page_size)]
            assert exported == in_byte_order, (folder, page_size)


def test_removing_a_folder_removes_its_files_and_no_other(store: Store) -> None:
    recorded_names(store)
    left = set(NAMES)
    for folder in ["/lib/50%", "/lib/a_b", "/lib/back\\slash", "/lib/café", "/lib/dogs", os.fsdecode(b"/lib/caf\xe9")]:
        assert store.remove(folder) == len(below(folder)), folder
        left -= below(folder)
        assert {record.path for record in store.files_under("/")} == left


def test_where_the_database_sorts_text_by_language_the_answers_are_sqlites(
    language_sorted_url: str, tmp_path: Path
) -> None:
    with Store.open(tmp_path / "index.db") as sqlite, Store.open(language_sorted_url) as server:
        with server.engine.connect() as connection:  # so its unique path index cannot hold a folder's files together
            inside = "'/lib/Dogs/o.wav' > '/lib/dogs/' AND '/lib/Dogs/o.wav' < '/lib/dogs0'"
            assert connection.scalar(text(f"SELECT {inside}"))  # to the collation, inside `/lib/dogs`'s range
        for store in (sqlite, server):
            recorded_names(store)
        for folder in FOLDERS:
            assert found_below(server, folder)[1:] == found_below(sqlite, folder)[1:], folder
            assert sorted(found_below(server, folder)[0]) == sorted(found_below(sqlite, folder)[0]), folder
            exported = [[row["path"] for row in store.export_rows(folder, page_size=2)] for store in (server, sqlite)]
            assert exported[0] == exported[1], folder
        for folder in ["/lib/dogs", "/lib/café", "/lib/50%"]:
            assert server.remove(folder) == sqlite.remove(folder) == len(below(folder))
        assert {r.path for r in server.files_under("/")} == {r.path for r in sqlite.files_under("/")}


def plan(connection: Connection, statement: str, parameters: object) -> str:
    """PostgreSQL's plan for `statement` (as the driver ran it), as JSON text: it names each scan and its index."""
    return json.dumps(connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar())


def spread_files(store: Store) -> None:
    """20,000 files in 200 folders of 100 (`/lib/7/...`), each folder's spread over the table; then the planner's
    statistics, which a new table lacks."""
    with store.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO audio_files (path, status) SELECT '/lib/' || (n % 200) || '/' || n || '.wav', "
                "'pending' FROM generate_series(1, 20000) AS n"
            )
        )
        connection.execute(text("ANALYZE audio_files"))


def test_postgresql_reads_the_files_below_a_folder_from_the_byte_wise_index(language_sorted_url: str) -> None:
    """20,000 files, 100 in the folder asked: each command's statement searches the index, in the plan made for
    its folder and in the generic plan of a prepared statement (which knows no folder); no scan of the table."""
    with Store.open(language_sorted_url) as store:
        spread_files(store)
        with recorded(store.engine) as statements:
            assert len(store.files_under("/lib/7")) == 100 and store.holds("/lib/7")
            assert len(store.all_file_stamps("/lib/7")) == 100 and store.remove("/lib/7") == 100
        asked = [(sql, values) for sql, values in statements if "audio_files.path" in sql]
        assert len(asked) == 4
        with store.engine.connect() as connection:
            for sql, values in asked:
                if "LIMIT" in sql:
                    # `holds` stops at its first file: with this folder's files spread over the table the planner
                    # rightly expects one within 200 rows of a scan; with scans off, it shows the index serves it.
                    connection.exec_driver_sql("SET enable_seqscan = off")
                assert PATH_PATTERN_INDEX in plan(connection, sql, values), sql
                assert "Seq Scan" not in plan(connection, sql, values), sql
                connection.exec_driver_sql("RESET enable_seqscan")

            query = select(AudioFileRow.id).where(paths_under("/lib/8"))
            prepared = query.compile(dialect=postgresql.dialect(paramstyle="numeric_dollar"))
            connection.exec_driver_sql(f"PREPARE below_folder AS {prepared}")
            connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            folders = ", ".join(f"'{prepared.params[name]}'" for name in prepared.positiontup)  # EXECUTE binds none
            generic = plan(connection, f"EXECUTE below_folder({folders})", ())
            assert PATH_PATTERN_INDEX in generic and "Seq Scan" not in generic


def path_indexes(connection: Connection) -> dict[str, dict[str, str]]:
    """The indexes of `audio_files`, each with the operator classes of its columns (PostgreSQL's, where not the
    default)."""
    indexes = inspect(connection).get_indexes("audio_files")
    return {index["name"]: index.get("dialect_options", {}).get("postgresql_ops", {}) for index in indexes}


def test_a_0007_library_gains_the_byte_wise_path_index_on_postgresql_only(db_url: str) -> None:
    """The upgrade keeps every row and finds the files below a folder as before; the downgrade drops the index."""
    engine = create_store_engine(db_url)
    migrate(engine, "0007")
    engine.dispose()
    with Store.open(db_url) as store:
        assert store.stats()["schema_revision"] == SCHEMA_HEAD
        recorded_names(store)
        with store.engine.connect() as connection:
            byte_wise = {"path": "text_pattern_ops"} if connection.dialect.name == "postgresql" else None
            assert path_indexes(connection).get(PATH_PATTERN_INDEX) == byte_wise
    with test_store.migrating(db_url) as (config, connection):
        command.downgrade(config, "0007")
        assert PATH_PATTERN_INDEX not in path_indexes(connection)
    with Store.open(db_url) as store:  # upgraded again, with its rows
        assert {record.path for record in store.files_under("/lib/dogs")} == below("/lib/dogs")
        assert len(store.files_under("/")) == len(NAMES)

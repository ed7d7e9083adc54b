"""Files listed by path come in byte order (SQLite's) on PostgreSQL too, whatever the database's collation, and a
paged export reads every file once: the listings of `stats`, `export`, `remove` and the server (`queries.by_path`,
`queries.paths_after`), here on a database that sorts text as en-US does (`language_sorted_url`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from pengi_search.db import Store
from pengi_search.db.schema import PATH_PATTERN_INDEX
from pengi_search.pathnames import to_stored
from pengi_search.query_plans import recorded

from . import test_store
from .test_path_prefixes import plan, spread_files

# Names that a language's collation puts in another order than their bytes: '_' and '-' are ignored at first, case
# and accents count only after the letters, and 'Ä' (two bytes, 0xC3 0x84) goes beside 'A' rather than after 'z'.
NAMES = [
    "/lib/a_b.wav",
    "/lib/ab.wav",
    "/lib/A.wav",
    "/lib/Ä.wav",
    "/lib/b.wav",
    "/lib/z.wav",
    "/lib/dogs-old/a.wav",
    "/lib/dogs/a.wav",
    "/lib/dogs0/a.wav",
    "/lib/dogsx.wav",
    "/lib/café.wav",
    "/lib/cafe.wav",
    "/lib/cafz.wav",
    "/lib/Café.wav",
    os.fsdecode(b"/lib/caf\xe9.wav"),  # Latin-1 bytes from an old share, stored escaped
]
BYTE_ORDER = sorted(NAMES, key=lambda name: to_stored(name).encode())  # how SQLite's BINARY text compares
FAILED = NAMES[::3]
TRUNCATED = NAMES[1::3]


@pytest.fixture(params=["sqlite", "language-sorted postgresql"])
def sorted_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on SQLite, and one on a PostgreSQL database that sorts text by language."""
    language_sorted = request.param != "sqlite"
    url = request.getfixturevalue("language_sorted_url") if language_sorted else str(tmp_path / "index.db")
    with Store.open(url) as store:
        yield store


def recorded_names(store: Store) -> None:
    """`NAMES` as files, the `FAILED` ones failed and the `TRUNCATED` ones indexed shorter than their headers."""
    for number, name in enumerate(NAMES):
        file_id = store.upsert_file(name, size=number, mtime=1.0)
        if name in FAILED:
            store.record_file_error(name, f"unreadable {number}")
        elif name in TRUNCATED:
            store.replace_file_windows(file_id, [], audio=replace(test_store.AUDIO, notes=("truncated: short",)))


def test_files_are_listed_in_byte_order_whatever_the_collation(sorted_store: Store) -> None:
    recorded_names(sorted_store)
    assert [record.path for record in sorted_store.files_under()] == BYTE_ORDER
    assert [record.path for record in sorted_store.files_under("/lib")] == BYTE_ORDER
    assert [path for path, _ in sorted_store.failed_files()] == [name for name in BYTE_ORDER if name in FAILED]
    assert [path for path, _ in sorted_store.failed_files(2)] == [name for name in BYTE_ORDER if name in FAILED][:2]
    assert [record.path for record in sorted_store.truncated_files()] == [n for n in BYTE_ORDER if n in TRUNCATED]
    for page_size in (1, 2, 4, 200):
        assert [row["path"] for row in sorted_store.export_rows(page_size=page_size)] == BYTE_ORDER, page_size
        exported = [row["path"] for row in sorted_store.export_rows("/lib", page_size=page_size)]
        assert exported == BYTE_ORDER, page_size


def test_the_language_sorted_database_orders_these_names_otherwise(language_sorted_url: str) -> None:
    """The names above test something: the database's own `ORDER BY path` and `>` follow the language."""
    with Store.open(language_sorted_url) as store:
        recorded_names(store)
        with store.engine.connect() as connection:
            by_collation = list(connection.scalars(text("SELECT path FROM audio_files ORDER BY path")))
            umlaut_first = connection.scalar(text("SELECT '/lib/Ä.wav' < '/lib/b.wav'"))  # bytes: 0xC3 after 'b'
    assert by_collation != [to_stored(name) for name in BYTE_ORDER] and umlaut_first


def test_a_paged_export_reads_its_pages_from_the_byte_wise_index(language_sorted_url: str) -> None:
    """20,000 files: each page of an export is one search of revision 0008's index, bounded by the folder's range
    and the last path of the page before, and read in the index's order: the table is never scanned, no rows are
    sorted (a folder's rest, again on every page), none filtered out (the paths around the folder). So also in the
    generic plan of a prepared statement (psycopg prepares a statement that a long export runs often)."""
    with Store.open(language_sorted_url) as store:
        spread_files(store)
        for under in (None, "/lib/7"):
            with recorded(store.engine) as statements:
                rows = store.export_rows(under, page_size=40)
                assert len(list(islice(rows, 60))) == 60  # two pages: the first, and one after a path
                rows.close()
            pages = [(sql, values) for sql, values in statements if "FROM audio_files" in sql and "LIMIT" in sql]
            assert "~>~" in pages[-1][0]
            with store.engine.connect() as connection:
                for sql, values in pages:
                    for steps in (plan(connection, sql, values), generic_plan(connection, sql, values)):
                        assert PATH_PATTERN_INDEX in steps and "Seq Scan" not in steps, sql
                        assert "Sort" not in steps and '"Filter"' not in steps, (sql, steps)


def generic_plan(connection: Connection, sql: str, values: dict[str, object]) -> str:
    """PostgreSQL's plan for `sql` (as the driver ran it) prepared, knowing none of its values, as JSON text."""
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))  # each once, in the order they first come
    numbered = re.sub(r"%\((\w+)\)s", lambda name: f"${names.index(name[1]) + 1}", sql)
    connection.exec_driver_sql(f"PREPARE page AS {numbered}")
    connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    try:
        quoted = ("'" + str(values[name]).replace("'", "''") + "'" for name in names)
        return plan(connection, f"EXECUTE page({', '.join(quoted)})", ())  # EXECUTE binds no values: literals
    finally:
        connection.exec_driver_sql("RESET plan_cache_mode")
        connection.exec_driver_sql("DEALLOCATE page")

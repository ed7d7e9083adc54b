"""SQLAlchemy engines for the store: psycopg 3 for PostgreSQL; WAL, foreign keys and write locks for SQLite."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .errors import DatabaseURLError, StoreError
from .urls import URL_EXAMPLE, parse_db_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "pengi_write"  # execution option marking write transactions (SQLite takes its lock up front)


def create_store_engine(url: str | URL) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys and a busy timeout on every connection.

    Nothing is created here: `pengi_search.db.access.open_engine` decides whether a database may be made.
    """
    parsed = parse_db_url(url)
    # The bare name means psycopg2 to SQLAlchemy, psycopg 3 is what we ship; `postgres://` is libpq's short form.
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    where = parsed.render_as_string(hide_password=True)
    try:
        engine = create_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite")
    except ImportError as exc:
        raise StoreError(
            where, f"database driver missing ({exc}); for PostgreSQL: pip install 'psycopg[binary]'"
        ) from exc
    except NoSuchModuleError as exc:  # a mistyped scheme or driver (`postgresql+pyscopg://`)
        raise DatabaseURLError(
            where, f"cannot use this database URL: no database driver {parsed.drivername!r}; the form is {URL_EXAMPLE}"
        ) from exc
    except ArgumentError as exc:
        raise StoreError(where, f"cannot use this database URL ({exc})") from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level: transactions are begun by `_sqlite_on_begin` instead, which also makes
    # migrations transactional DDL.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _use_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch the database to WAL once. The switch fails at once, without waiting, while another connection is
    opening the same new database, so it is retried for as long as the busy timeout allows."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_on_begin(connection: Connection) -> None:
    # A writer takes the write lock at BEGIN, so that concurrent writers wait (busy_timeout) instead of failing
    # when a read lock cannot be upgraded; readers get a plain snapshot.
    write = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

"""SQLAlchemy engines for the store: psycopg 3 for PostgreSQL; WAL, foreign keys and write locks for SQLite."""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, ExceptionContext
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from .errors import DatabaseURLError, StoreError
from .urls import URL_EXAMPLE, parse_db_url, shown_db_url, with_driver

SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "pengi_write"  # execution option marking write transactions (SQLite takes its lock up front)


def create_store_engine(url: str | URL, *, read_only_file: Path | None = None, untouched: bool = False) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys and a busy timeout on every connection.

    Nothing is created here: `pengi_search.db.access.open_engine` decides whether a database may be made.
    `read_only_file`: `url`'s SQLite file, which the engine only reads: as immutable while no writer has it open
    (see `needs_frozen_read`) in a folder this process may not write, or wherever it is when `untouched` (see
    `untouched_read`).
    """
    parsed = with_driver(parse_db_url(url))
    where = shown_db_url(parsed)
    # The URL stays the engine's own (messages, FAISS file names); only the connection to the file differs.
    connector = {} if read_only_file is None else _reading_connections(read_only_file, untouched)
    try:
        engine = create_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite", **connector)
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
    event.listen(engine, "handle_error", _failed_connection_is_lost)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect if read_only_file is None else _reader_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _failed_connection_is_lost(context: ExceptionContext) -> None:
    """Count a connection that could not be made as one lost (SQLAlchemy only counts those it had and lost): its
    error then says `connection_invalidated`, which `errors.store_error` tells a database that did not answer by,
    and the pool starts afresh, whether the server refused or the pool's ping found a connection dead."""
    if context.connection is None and context.sqlalchemy_exception is not None:
        context.is_disconnect = True


def needs_frozen_read(db_file: Path) -> bool:
    """Whether a reader must open the SQLite file at `db_file` as immutable: a WAL database is read through its
    shared-memory file (`-shm`) beside it, which a folder this process cannot write (a read-only share, another
    user's library) does not let it create. Immutable reads take no locks and so would not see a writer; but a
    writer keeps the `-shm` file while it works, and where one is there the ordinary read works (and is used)."""
    return not os.access(db_file.parent, os.W_OK) and untouched_read(db_file)


def untouched_read(db_file: Path) -> bool:
    """Whether a reader that must leave `db_file` as it found it opens it as immutable: while no connection has a
    WAL database open there is no `-shm` file beside it, and even a read-only connection would then make one (and
    a `-wal`) and leave both behind; while one is there, a read-only connection reads through it and makes nothing.
    """
    return not db_file.with_name(db_file.name + "-shm").exists()


def _reading_connections(db_file: Path, untouched: bool) -> dict[str, Any]:
    """The engine options that connect a reader to `db_file`, in a folder it may not write or, `untouched`, that
    it must not change: each connection is opened as `needs_frozen_read` (or `untouched_read`) says at the time,
    and none is pooled (SQLAlchemy opens one per transaction, in well under a millisecond), so that a reader that
    lasts (`serve`) sees what an `index` run adds, and reads as immutable only while no writer has the file (its
    pooled immutable connections never saw another row)."""
    # A URI filename: the path percent-encoded from its bytes, so spaces, `?`, `#` and any name survive.
    path = urllib.parse.quote(os.fsencode(db_file))
    frozen = untouched_read if untouched else needs_frozen_read

    def connect() -> sqlite3.Connection:
        mode = "immutable=1" if frozen(db_file) else "mode=ro"
        return sqlite3.connect(f"file:{path}?{mode}", uri=True, check_same_thread=False)

    return {"creator": connect, "poolclass": NullPool}


def _reader_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level, as `_sqlite_on_connect`; no journal mode to set on a file that is only read.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


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

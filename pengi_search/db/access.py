"""How a database is opened: created only by the command that fills it, read-only for the commands that only read.

`index` creates a library (`create=True`); every other command needs one to exist and says which command makes it
when there is none, before anything is written: no folder, no empty database. A database made by an older
pengi-search is upgraded first (Alembic, one transaction), also for a reader: reading needs the current schema.
Readers then get connections that cannot write (SQLite `query_only`, PostgreSQL read-only transactions).
A database that holds tables but no pengi-search library (another application's) is refused by every command,
`index` too: nothing is read from it or added to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, inspect
from sqlalchemy.exc import SQLAlchemyError

from ..errors import write_block
from ..pathnames import shown
from ..paths import (
    choose_elsewhere,
    file_in_the_way,
    made_folder,
    refuse_blocked_folder,
    refuse_unexpanded_home,
    shown_path,
)
from .engine import create_store_engine
from .errors import (
    DatabaseURLError,
    ForeignDatabaseError,
    MissingDatabaseError,
    ReadOnlyLibraryError,
    StoreError,
    driver_reason,
)
from .migrate import foreign_tables_reason, migrate
from .urls import db_option, library_name, names_default_db, resolve_db_url, sqlite_file

SQLITE_HEADER = b"SQLite format 3\x00"  # how every SQLite database file begins


def open_engine(db: str | os.PathLike[str] | None, *, create: bool, read_only: bool) -> Engine:
    """An engine on the migrated database at `db` (URL, file path, None: the default).

    `create`: make the database (and a SQLite file's folder) when missing; otherwise a missing one raises
    MissingDatabaseError. `read_only`: connections that refuse writes (implies not creating).
    """
    url = resolve_db_url(db)
    name = library_name(db)
    create = create and not read_only
    db_file = sqlite_file(url)
    if db_file is not None:
        _check_place(db_file, db, name)
        if create and not db_file.exists():
            refuse_unexpanded_home(db_file.parent)
            made_folder(db_file.parent, library=True)
        elif not create and (not db_file.is_file() or is_empty_file(db_file)):
            raise _missing(name, db)
        elif not read_only:
            _check_writable(db_file, name)
    engine = reading_engine(url) if read_only else create_store_engine(url)
    try:
        if not _has_schema(engine, name) and not create:  # asked of `index` too: another application's tables refuse it
            raise _missing(name, db)
        migrate(engine, where=name)
        if read_only:
            engine.dispose()  # the pooled connections were writable; new ones get the read-only settings
            return _read_only(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def library_exists(db: str | os.PathLike[str] | None) -> bool:
    """Whether `db` holds a pengi-search library already; creates and changes nothing (`untouched_engine`)."""
    url = resolve_db_url(db)
    db_file = sqlite_file(url)
    if db_file is not None and (not db_file.is_file() or is_empty_file(db_file)):
        return False
    if db_file is not None:
        _check_place(db_file, db, library_name(db))
    engine = untouched_engine(url)
    try:
        return _has_schema(engine, library_name(db))
    finally:
        engine.dispose()


def is_empty_file(db_file: Path) -> bool:
    """Whether `db_file` is a file of 0 bytes: SQLite takes it for an empty database, but the first connection's
    `PRAGMA journal_mode=WAL` would write a database header into it, so a command that only reads must not connect."""
    return db_file.stat().st_size == 0


def unusable_place(db_file: Path, name: str | None = None) -> str | None:
    """Why no SQLite database can be at `db_file` (None when one is there or can be made): a folder or something
    else that is not a file there, a file that is not a SQLite database (an audio file given as --db), or a file
    where one of its folders should be. `name`: how to name `db_file` (`urls.library_name`), else as the user would
    type it (`paths.shown_path`); escaped either way, as every path a message names."""
    place = shown(name) if name else shown_path(db_file)
    if db_file.exists():
        if db_file.is_file():
            return None if _may_be_sqlite(db_file) else f"{place} is not a SQLite database"
        return f"{place} is a folder, not a database file" if db_file.is_dir() else f"{place} is not a file"
    in_the_way = file_in_the_way(db_file.parent)
    if in_the_way is None:
        return None
    return f"{shown_path(in_the_way)} is a file, not a folder: no database can be made at {place}"


def _may_be_sqlite(db_file: Path) -> bool:
    """Whether `db_file` begins with SQLite's header, or is empty (a database not begun). A file that cannot be read
    may be one: SQLite says why it cannot open it."""
    try:
        with open(db_file, "rb") as stream:
            head = stream.read(len(SQLITE_HEADER))
    except OSError:
        return True
    return head in (b"", SQLITE_HEADER)


def reading_engine(url: str) -> Engine:
    """An engine on `url` for reading only: a SQLite file in a folder this process may not write is read as
    `engine.create_store_engine` reads a `read_only_file`, any other database as usual."""
    db_file = sqlite_file(url)
    unwritable = db_file is not None and not os.access(db_file.parent, os.W_OK)
    return create_store_engine(url, read_only_file=db_file if unwritable else None)


def untouched_engine(url: str) -> Engine:
    """An engine on `url` for looking only, which creates and changes nothing, whoever may write there: a SQLite
    file is read as `engine.untouched_read` says (an ordinary connection would switch it to WAL, writing an empty
    file's header or another application's file, and leave `-wal` and `-shm` files beside it)."""
    db_file = sqlite_file(url)
    return create_store_engine(url, read_only_file=db_file, untouched=True)


def _check_place(db_file: Path, db: str | os.PathLike[str] | None, name: str) -> None:
    """Refuse a place where no library can be: not one "yet" either (see `unusable_place`). A `--db` (or
    `$PENGI_SEARCH_DB`) naming it is bad usage; the default place, in the data folder, is the data folder's trouble
    (exit 1), said as `paths.made_folder` says it, whichever command meets it."""
    default = names_default_db(db)
    if default:
        refuse_blocked_folder(db_file.parent, library=True)
    unusable = unusable_place(db_file, name)
    if unusable is None:
        return
    if default:
        raise StoreError(unusable, choose_elsewhere(in_data=True, library=True))
    raise DatabaseURLError(unusable, "point --db or PENGI_SEARCH_DB at a database file (such as index.db)")


def _check_writable(db_file: Path, name: str) -> None:
    """Refuse a writer a library it cannot write: its file read-only, or its folder, where SQLite makes the files
    beside it (`-wal`, `-shm`) and pengi-search its FAISS files and locks. SQLite would only say "unable to open
    database file" or "attempt to write a readonly database", naming neither."""
    for what, path in {"the file": db_file, f"its folder {db_file.parent}": db_file.parent}.items():
        why = write_block(path) if path.exists() else None
        if why is not None:
            raise ReadOnlyLibraryError(
                name, f"the library cannot be written ({what}: {why}); query, stats and export can still read it"
            )


def _missing(name: str, db: str | os.PathLike[str] | None) -> MissingDatabaseError:
    """The error for the library `name`d, which does not exist yet, naming the command that creates it."""
    return MissingDatabaseError(name, f"no index here yet; create it with `pengi-search index PATH...{db_option(db)}`")


def _has_schema(engine: Engine, where: str) -> bool:
    """Whether the database (named `where` in errors) has been set up by pengi-search (Alembic's version table is
    there); False for an empty one. A database with other tables and no library is another application's:
    ForeignDatabaseError."""
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            if inspector.has_table("alembic_version"):
                return True
            tables = inspector.get_table_names()
    except SQLAlchemyError as exc:
        raise StoreError(where, f"cannot open the database: {driver_reason(exc)}") from exc
    if tables:
        raise ForeignDatabaseError(where, foreign_tables_reason(tables))
    return False


def _read_only(engine: Engine) -> Engine:
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_query_only)
        return engine
    if engine.dialect.name == "postgresql":
        return engine.execution_options(postgresql_readonly=True)
    return engine


def _sqlite_query_only(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA query_only = ON")

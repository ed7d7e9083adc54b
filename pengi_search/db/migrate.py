"""The schema upgrade: Alembic, configured in code, run by `Store.open` on every database it opens.

The scripts are the `migrations` package shipped beside `pengi_search`; found as package data, not imported.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from .engine import WRITE_OPTION
from .errors import ForeignDatabaseError, StoreError, driver_reason
from .urls import library_name_of_url

log = logging.getLogger(__name__)

SCHEMA_HEAD = "0008"  # the newest migration; a test keeps it equal to the scripts' head
LIBRARY_TABLE = "audio_files"  # in every revision: a database without it holds no pengi-search library
_MIGRATION_LOCK = 0x70656E6769  # PostgreSQL advisory lock that serialises concurrent upgrades


def migrations_dir() -> Path:
    """The folder of the Alembic scripts (the `migrations` package, installed as plain files)."""
    return Path(str(files("migrations")))


def alembic_config(url: str | None = None) -> Any:
    """The Alembic configuration, built in code (no alembic.ini).

    `migrate` hands its connection over in `config.attributes["connection"]`; `url` serves developer commands
    such as `command.revision(alembic_config(url), autogenerate=True, message=...)`.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolates '%'
    return config


def migrate(engine: Engine, revision: str = "head", *, where: str | None = None) -> None:
    """Upgrade the schema of `engine`'s database to `revision` (no-op when already at head). `where`: how errors
    name the library (`urls.library_name`), else as its URL names it."""
    where = where or library_name_of_url(engine.url)
    if revision == "head" and _at_head(engine):
        return  # the common case, answered without importing alembic (~0.5 s)
    from alembic.script import ScriptDirectory

    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    try:
        current = _checked_revisions(engine, script, where)
    except SQLAlchemyError as exc:
        raise StoreError(where, f"cannot open the database: {driver_reason(exc)}") from exc
    if revision == "head" and current == set(script.get_heads()):
        return
    target = script.get_current_head() if revision == "head" else revision
    try:
        upgraded_from = _upgrade(engine, config, revision)
    except BrokenForeignKeysError as exc:  # a migration's fault, not the reader's: no command would do better
        raise StoreError(where, f"cannot upgrade the library's schema to {target}: {exc}; nothing was changed") from exc
    except SQLAlchemyError as exc:
        raise StoreError(where, _upgrade_failure(current, target, driver_reason(exc))) from exc
    if upgraded_from:  # an existing library, upgraded by this process (not by another one it waited for)
        log.warning(
            "%s: upgraded the library's schema from revision %s to %s (earlier pengi-search versions cannot open it "
            "any more)",
            where,
            upgraded_from,
            target,
        )


def _checked_revisions(engine: Engine, script: Any, where: str) -> set[str]:
    """The database's schema revisions (none for a new database), refusing ones this pengi-search does not know."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    unknown = current - {rev.revision for rev in script.walk_revisions()}
    if unknown and not _has_library_table(engine):
        raise ForeignDatabaseError(where, foreign_revision_reason(unknown))
    if unknown:
        raise StoreError(
            where,
            f"schema revision {', '.join(sorted(unknown))} is newer than this pengi-search knows; upgrade pengi-search",
        )
    return current


def _upgrade(engine: Engine, config: Any, revision: str) -> str:
    """Run the migrations up to `revision` in one transaction (all or nothing, `kill -9` included) and give the
    revision the database was at once this process held the write lock ("" for a new database): a process that
    waited for another's upgrade finds it done."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with migration_connection(engine) as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        before = MigrationContext.configure(connection).get_current_revision() or ""
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        after = MigrationContext.configure(connection).get_current_revision() or ""
    return before if after != before else ""


class BrokenForeignKeysError(SQLAlchemyError):
    """Rows would refer to rows that are not there after a migration (`PRAGMA foreign_key_check`): rolled back."""


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in one write transaction to run migrations in (Alembic's `config.attributes["connection"]`).

    On SQLite, foreign keys are off while it lasts: Alembic's batch mode rebuilds a table by copy and drop, and the
    drop of a table with foreign keys on deletes its children's rows (a downgrade of 0002 deleted every window, text
    and vector). SQLite ignores the pragma inside a transaction, so it is set before the transaction begins, and set
    back once it ends; before the commit, `PRAGMA foreign_key_check` fails the migration if rows lost their parent.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            _set_foreign_keys(connection, on=False)
        try:
            with connection.execution_options(**{WRITE_OPTION: True}).begin():
                yield connection
                if sqlite:
                    _check_foreign_keys(connection)
        finally:
            if sqlite and not connection.invalidated:
                _set_foreign_keys(connection, on=True)  # the connection goes back to the pool as it came


def _set_foreign_keys(connection: Connection, *, on: bool) -> None:
    """Through the driver's connection, which is in autocommit mode (`engine`): SQLAlchemy's own would begin a
    transaction first, in which the pragma does nothing."""
    connection.connection.driver_connection.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def _check_foreign_keys(connection: Connection) -> None:
    """Refuse the migrated database when a row refers to one that is not there, naming how many, where."""
    broken = Counter(
        f"{table} -> {parent}" for table, _row, parent, _key in connection.exec_driver_sql("PRAGMA foreign_key_check")
    )
    if broken:
        refs = ", ".join(f"{count} in {ref}" for ref, count in sorted(broken.items()))
        raise BrokenForeignKeysError(f"after it, rows would refer to rows that are not there ({refs})")


def _upgrade_failure(current: set[str], target: str, reason: str) -> str:
    """Why a database could not be upgraded: a library of an older schema, which this pengi-search cannot read as
    it is, needs a command that may write it (a reader of a read-only share, or a read-only database role, cannot)."""
    if not current:
        return f"cannot create the library's tables: {reason}"
    return (
        f"cannot upgrade the library's schema from revision {', '.join(sorted(current))} to {target} ({reason}); "
        "this pengi-search reads it only once upgraded, which any of its commands does where it may write the library"
    )


def foreign_tables_reason(tables: list[str]) -> str:
    """Why a database with `tables` (none of them a library's) is not used."""
    shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    return (
        f"this database holds another application's tables ({shown}), not a pengi-search library ({LIBRARY_TABLE} "
        "is missing); give pengi-search a database of its own"
    )


def foreign_revision_reason(revisions: set[str]) -> str:
    """Why a database that another application's Alembic set up (`revisions` unknown, no library table) is not used."""
    return (
        f"this database belongs to another application (its schema revision {', '.join(sorted(revisions))} is not "
        f"pengi-search's and it has no {LIBRARY_TABLE} table); give pengi-search a database of its own"
    )


def _has_library_table(engine: Engine) -> bool:
    with engine.connect() as connection:
        return inspect(connection).has_table(LIBRARY_TABLE)


def _at_head(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return False
            return set(connection.scalars(text("SELECT version_num FROM alembic_version"))) == {SCHEMA_HEAD}
    except SQLAlchemyError:
        return False


def current_revision(connection: Connection) -> str | None:
    """The schema revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()

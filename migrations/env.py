"""Alembic environment: migrates the connection that `pengi_search.db.migrate.migrate` hands over.

Without one (developer commands such as `alembic revision --autogenerate` run through `alembic_config(url)`), it
opens the configured URL with the store's own engine settings. Either way the connection is `migration_connection`'s:
on SQLite, with foreign keys off, which batch mode's table rebuilds need.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from pengi_search.db.engine import create_store_engine
from pengi_search.db.migrate import migration_connection
from pengi_search.db.schema import Base, in_schema_of

config = context.config


def _run(connection: Connection) -> None:
    if connection.dialect.name == "sqlite" and connection.exec_driver_sql("PRAGMA foreign_keys").scalar():
        # Batch mode's table rebuilds would delete the rows of the rebuilt table's children.
        raise RuntimeError("SQLite is migrated with foreign keys off: use pengi_search.db.migrate.migration_connection")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters most things by copying the table
        compare_type=True,
        include_object=in_schema_of(connection.dialect.name),  # PostgreSQL's own indexes
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_from_url() -> None:
    engine = create_store_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with migration_connection(engine) as connection:
            _run(connection)
    finally:
        engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    _run_from_url()

"""Column steps that revisions share (imported by its full name, `migrations.columns`: Alembic loads each revision
as a lone file, outside the package)."""

from __future__ import annotations

from alembic import op


def drop_columns(table: str, *columns: str) -> None:
    """Drop `columns` from `table`, in batch mode: SQLite drops a column only by rebuilding its table (copy, drop,
    rename; Alembic's batch mode does so on SQLite alone), and other databases take a plain ALTER TABLE from it."""
    with op.batch_alter_table(table) as batch:
        for column in columns:
            batch.drop_column(column)

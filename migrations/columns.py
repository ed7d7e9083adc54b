"""Column steps that revisions share (imported by its full name, `migrations.columns`: Alembic loads each revision
as a lone file, outside the package)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

Step = Callable[[], None]


def nullable_column_added(table: str, column: str, kind: sa.types.TypeEngine) -> tuple[Step, Step]:
    """The upgrade and downgrade of a revision that only adds one nullable column to `table` (rows written before it
    hold NULL there): `upgrade, downgrade = nullable_column_added(...)`."""

    def upgrade() -> None:
        # a Column joins the table it is added to, so each upgrade makes its own (tests upgrade more than once)
        op.add_column(table, sa.Column(column, kind, nullable=True))

    def downgrade() -> None:
        drop_columns(table, column)

    return upgrade, downgrade


def drop_columns(table: str, *columns: str) -> None:
    """Drop `columns` from `table`, in batch mode: SQLite drops a column only by rebuilding its table (copy, drop,
    rename; Alembic's batch mode does so on SQLite alone), and other databases take a plain ALTER TABLE from it."""
    with op.batch_alter_table(table) as batch:
        for column in columns:
            batch.drop_column(column)

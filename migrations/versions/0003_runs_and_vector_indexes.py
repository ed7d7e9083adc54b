"""Record who runs an indexing run (host and process id) and what each FAISS index is (requested and built type).

`runs.host`/`runs.pid` name the process holding a library's indexing lock, so that a second run can say who it
waits for. `vector_indexes` keeps, per vector kind, the index type asked for, the type built (IVF-PQ falls back to
flat on a small library) and the built parameters: the FAISS file can be damaged or deleted, the choice survives.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.columns import drop_columns

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("runs", sa.Column("host", sa.String(255), nullable=True))
    op.add_column("runs", sa.Column("pid", sa.Integer(), nullable=True))
    op.create_table(
        "vector_indexes",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("requested_type", sa.String(16), nullable=False),
        sa.Column("effective_type", sa.String(16), nullable=True),
        sa.Column("params", sa.Text(), nullable=True),
        sa.Column("vectors", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('text', 'audio')", name=op.f("ck_vector_indexes_kind")),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_vector_indexes")),
    )


def downgrade() -> None:
    op.drop_table("vector_indexes")
    drop_columns("runs", "pid", "host")

"""Record the version of each kind's vectors, so that a FAISS file is trusted without reading every vector id, and
index the texts by mode.

`vector_versions` holds, per kind, a random number that every transaction changing that kind's vectors replaces
(`pengi_search.db.queries.vectors_changed`); a FAISS file records the one it was saved at. A library upgraded from
0005 has FAISS files that record none: the next command checks them against the ids as before and records it.

`ix_generated_texts_mode_window_id` lets `stats` count the captioned windows of each mode from the index alone.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    versions = op.create_table(
        "vector_versions",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('text', 'audio')", name=op.f("ck_vector_versions_kind")),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_vector_versions")),
    )
    op.bulk_insert(versions, [{"kind": kind, "version": secrets.randbits(63)} for kind in ("text", "audio")])
    op.create_index(op.f("ix_generated_texts_mode_window_id"), "generated_texts", ["mode", "window_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_generated_texts_mode_window_id"), table_name="generated_texts")
    op.drop_table("vector_versions")

"""Add audio_files.content_hash (sha256 of the content) with an index, to tell touched or moved files apart."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.columns import drop_columns

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("audio_files", sa.Column("content_hash", sa.String(64), nullable=True))
    op.create_index(op.f("ix_audio_files_content_hash"), "audio_files", ["content_hash"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audio_files_content_hash"), table_name="audio_files")
    drop_columns("audio_files", "content_hash")

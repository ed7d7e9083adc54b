"""Initial schema: runs, audio files, windows, generated texts, window vectors and index metadata."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER makes a SQLite rowid alias
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("files_seen", sa.Integer(), nullable=False),
        sa.Column("files_indexed", sa.Integer(), nullable=False),
        sa.Column("files_failed", sa.Integer(), nullable=False),
        sa.Column("files_pruned", sa.Integer(), nullable=False),
        sa.Column("shard", sa.String(64), nullable=True),
        # Written out, not built from `records`' tuples as the models are: a revision records what it did, and a
        # value added to a tuple later needs a revision of its own (tests/test_migrations.py compares the checks).
        sa.CheckConstraint("status IN ('running', 'finished', 'failed', 'interrupted')", name=op.f("ck_runs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_table(
        "audio_files",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("mtime", sa.Double(), nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("sample_rate", sa.Integer(), nullable=True),
        sa.Column("channels", sa.Integer(), nullable=True),
        sa.Column("format", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("indexed_at", WHEN, nullable=True),
        sa.Column("run_id", ROW_ID, nullable=True),
        sa.CheckConstraint("status IN ('pending', 'indexed', 'error')", name=op.f("ck_audio_files_status")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_audio_files_run_id_runs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audio_files")),
        sa.UniqueConstraint("path", name=op.f("uq_audio_files_path")),
    )
    op.create_index(op.f("ix_audio_files_status"), "audio_files", ["status"])
    op.create_table(
        "windows",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("file_id", ROW_ID, nullable=False),
        sa.Column("window_index", sa.Integer(), nullable=False),
        sa.Column("start_s", sa.Double(), nullable=False),
        sa.Column("end_s", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"], ["audio_files.id"], name=op.f("fk_windows_file_id_audio_files"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_windows")),
        sa.UniqueConstraint("file_id", "window_index", name=op.f("uq_windows_file_id_window_index")),
        sqlite_autoincrement=True,  # never reuse a window id: FAISS files are matched to the database by ids
    )
    op.create_table(
        "generated_texts",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("window_id", ROW_ID, nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),  # the prompt's own words, e.g. "generate audio caption"
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("score", sa.Double(), nullable=True),  # the answer's mean log-probability per token
        sa.ForeignKeyConstraint(
            ["window_id"], ["windows.id"], name=op.f("fk_generated_texts_window_id_windows"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generated_texts")),
    )
    op.create_index(op.f("ix_generated_texts_window_id"), "generated_texts", ["window_id"])
    op.create_table(
        "window_vectors",
        sa.Column("window_id", ROW_ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("kind IN ('text', 'audio')", name=op.f("ck_window_vectors_kind")),
        sa.ForeignKeyConstraint(
            ["window_id"], ["windows.id"], name=op.f("fk_window_vectors_window_id_windows"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("window_id", "kind", name=op.f("pk_window_vectors")),
    )
    op.create_index(op.f("ix_window_vectors_kind_window_id"), "window_vectors", ["kind", "window_id"])
    op.create_table(
        "index_meta",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_fingerprint", sa.String(128), nullable=False),
        sa.Column("embedder_name", sa.Text(), nullable=False),
        sa.Column("embedder_dim", sa.Integer(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_index_meta_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_index_meta")),
    )


def downgrade() -> None:
    for table in ("index_meta", "window_vectors", "generated_texts", "windows", "audio_files", "runs"):
        op.drop_table(table)

"""Index `audio_files.path` byte-wise on PostgreSQL, so that "the files below a folder" reads the index, not the table.

Commands ask for the files below a folder (`remove`, `--path`, pruning, `eval`'s index step: `queries.paths_under`).
On SQLite that is a range of the unique path index, as SQLite compares text byte-wise. PostgreSQL compares text by
the database's collation (en_US.UTF-8 ignores punctuation at first, so '/' need not sort before '0', and a folder's
files need not lie together), so the unique index serves neither a prefix nor a byte-wise range: every such query
read the whole table, on a library of millions of files.

`ix_audio_files_path_pattern` holds the paths in `text_pattern_ops`, the operator class whose order is the bytes'
(`~<~`, `~>=~`), which `paths_under` compares with on PostgreSQL. A plain CREATE INDEX: it holds the table's write
lock while it is built (a time that grows with the number of files), as the upgrade's other steps do; CONCURRENTLY
cannot run in the upgrade's transaction. Nothing to do on SQLite.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"

INDEX = "ix_audio_files_path_pattern"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(INDEX, "audio_files", ["path"], postgresql_ops={"path": "text_pattern_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(INDEX, table_name="audio_files")

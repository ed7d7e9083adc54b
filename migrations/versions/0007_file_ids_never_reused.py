"""Never hand a removed file's id to another file: `audio_files.id` becomes AUTOINCREMENT on SQLite.

A plain INTEGER PRIMARY KEY is SQLite's rowid, and a new row takes one past the highest id there *now*: once the
newest file was removed, the next file indexed took its id, and a page or script holding `/api/files/ID` (or a hit's
`file_id`) named another file without a word. AUTOINCREMENT takes one past the highest id ever given, kept in
`sqlite_sequence`, as `windows` does since 0001.

SQLite adds AUTOINCREMENT only by rebuilding the table (batch mode: copy, drop, rename), which keeps its rows, ids,
indexes and constraints; `migration_connection` turns foreign keys off for it, so dropping the old table deletes no
window, and checks them before the commit. Copying the rows with their ids records the highest in
`sqlite_sequence` (SQLite counts every id inserted), so the sequence starts there; an id removed before the upgrade
above it is unknown to the database, and may be given once more. PostgreSQL's sequences never go back: nothing to do.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    _rebuild_audio_files(autoincrement=True)


def downgrade() -> None:
    _rebuild_audio_files(autoincrement=False)  # dropping the AUTOINCREMENT table drops its sqlite_sequence row


def _rebuild_audio_files(*, autoincrement: bool) -> None:
    """Rebuild `audio_files` with AUTOINCREMENT on or off (on SQLite; the batch would rebuild it on PostgreSQL too)."""
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("audio_files", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass

"""A database that cannot grow (a full disk) mid-index: the run stops with one line and exit code 1, no file is
blamed for it, what was committed stays, and a re-run once there is space carries on where it stopped."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import IntegrityError, OperationalError
from typer.testing import CliRunner

from indexer.pipeline import run_index
from pengi_search.choices import Captions
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_FAILED
from pengi_search.db import DatabaseFailureError
from pengi_search.db.errors import store_error
from pengi_search.library import Library

from .indexing import assert_consistent, count_rows, quick_options, write_tone

DISK_FULL = "database or disk is full"


@contextlib.contextmanager
def disk_full(db: Path) -> Iterator[None]:
    """Every SQLite connection opened meanwhile finds `db` unable to grow by a page, as on a full disk: SQLite's
    own SQLITE_FULL, raised where the writes need room, through the whole stack as a real full disk is."""
    pages = count_rows(db, "PRAGMA page_count")

    def no_room(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(Engine, "connect", no_room)
    try:
        yield
    finally:
        event.remove(Engine, "connect", no_room)


def write_long_clips(root: Path, count: int) -> None:
    """`count` clips of six windows each: more than the pages a small library has room to spare in."""
    for n in range(count):
        write_tone(root / f"long-{n}.wav", 40.0, sr=8_000, freq=150 + 50 * n)


def statuses(db: Path) -> dict[str, str]:
    with Library.open(str(db)) as library:
        return {Path(record.path).name: record.status for record in library.store.files_under(str(db.parent))}


def test_the_database_s_own_trouble_is_told_apart_from_what_a_statement_was_given():
    full = OperationalError("INSERT ...", {}, sqlite3.OperationalError(DISK_FULL))
    duplicate = IntegrityError("INSERT ...", {}, sqlite3.IntegrityError("UNIQUE constraint failed: windows.id"))
    assert isinstance(store_error("lib.db", full), DatabaseFailureError)
    assert str(store_error("lib.db", full)) == f"lib.db: {DISK_FULL}"
    assert not isinstance(store_error("lib.db", duplicate), DatabaseFailureError)


def test_a_full_disk_in_pass_1_stops_the_run_blames_no_file_and_a_rerun_with_space_indexes_them(
    tiny_model_dir, tmp_path
):
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    write_tone(root / "first.wav", 2.0)
    run_index(quick_options([root], db, tiny_model_dir))
    write_long_clips(root, 8)

    with disk_full(db), pytest.raises(DatabaseFailureError, match=DISK_FULL):
        run_index(quick_options([root], db, tiny_model_dir))
    assert "error" not in statuses(db).values()  # the files were not at fault: none waits for --retry-errors

    summary = run_index(quick_options([root], db, tiny_model_dir))
    assert summary.indexed > 0 and summary.unchanged + summary.indexed == 9  # what was committed is kept
    assert (summary.failed, summary.captions_missing) == ([], 0)
    assert set(statuses(db).values()) == {"indexed"} and len(statuses(db)) == 9
    assert_consistent(db)


def test_a_full_disk_in_pass_2_stops_the_run_and_a_rerun_writes_the_waiting_captions(tiny_model_dir, tmp_path):
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    write_long_clips(root, 8)
    run_index(quick_options([root], db, tiny_model_dir, captions=Captions.later))

    with disk_full(db), pytest.raises(DatabaseFailureError, match=DISK_FULL):
        run_index(quick_options([root], db, tiny_model_dir))
    assert set(statuses(db).values()) == {"indexed"}  # no window's file recorded as failed for it

    summary = run_index(quick_options([root], db, tiny_model_dir))
    assert (summary.failed, summary.captions_missing) == ([], 0) and summary.captioned > 0
    assert_consistent(db)


def test_index_on_a_full_disk_says_so_in_one_line_and_exits_1(tiny_model_dir, tmp_path):
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    write_tone(root / "first.wav", 2.0)
    run_index(quick_options([root], db, tiny_model_dir))
    write_long_clips(root, 8)
    quick = ("--workers", "0", "--beam", "2", "--max-len", "3", "--device", "cpu", "--quiet")
    with disk_full(db):
        result = CliRunner().invoke(app, ["index", str(root), "--db", str(db), "--model", str(tiny_model_dir), *quick])
    assert result.exit_code == EXIT_FAILED, result.output
    assert result.stderr.splitlines() == [f"error: sqlite:///{db}: {DISK_FULL}"]

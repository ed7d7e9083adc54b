"""A full disk. A database that cannot grow mid-index: the run stops with one line and exit code 1, no file is
blamed for it, what was committed stays, and a re-run once there is space carries on where it stopped. A file that
cannot be written whole (an export, a model's weights, a training checkpoint): the previous one stays as it was, and
nothing half-written is left to fill the disk."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
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
from pengi_search.db import DatabaseFailureError, RefusedInputError
from pengi_search.db.errors import store_error
from pengi_search.library import Library
from pengi_search.model import Pengi
from pengi_search.testing import make_tiny_model_dir
from pengi_search.written_aside import WriteError

from .indexing import assert_consistent, count_rows, quick_options, write_tone

DISK_FULL = "database or disk is full"


@contextlib.contextmanager
def disk_full(db: Path) -> Iterator[None]:
    """Every SQLite connection opened meanwhile finds `db` unable to grow by a page, as on a full disk: SQLite's
    own SQLITE_FULL, raised where the writes need room, through the whole stack as a real full disk is. The file's
    free pages are given back first (VACUUM): SQLite writes into them without growing (a new library has some, left
    by revision 0007's rebuild of a table), which a full disk would not stop."""
    sqlite3.connect(db).execute("VACUUM").connection.close()
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
    assert isinstance(store_error("lib.db", duplicate), RefusedInputError)


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


def test_index_on_a_full_disk_says_so_in_one_line_naming_the_library_as_typed_and_exits_1(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The line named the library by its SQLAlchemy URL (`sqlite:////tmp/.../lib.db`), which the user never typed."""
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    write_tone(root / "first.wav", 2.0)
    run_index(quick_options([root], db, tiny_model_dir))
    write_long_clips(root, 8)
    monkeypatch.chdir(tmp_path)
    quick = ("--workers", "0", "--beam", "2", "--max-len", "3", "--device", "cpu", "--quiet")
    with disk_full(db):
        result = CliRunner().invoke(
            app, ["index", "sounds", "--db", "./lib.db", "--model", str(tiny_model_dir), *quick]
        )
    assert result.exit_code == EXIT_FAILED, result.output
    assert result.stderr.splitlines() == [f"error: ./lib.db: {DISK_FULL}"]


def no_space(path: str | os.PathLike[str]) -> None:
    """Write some bytes to `path`, then fail as a full disk does."""
    Path(path).write_bytes(b"\0" * 1000)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_export_to_a_full_disk_keeps_the_old_file_and_leaves_no_partial_one(tiny_model_dir, tmp_path, monkeypatch):
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    write_tone(root / "first.wav", 2.0)
    run_index(quick_options([root], db, tiny_model_dir))
    out = tmp_path / "out" / "library.jsonl"
    out.parent.mkdir()
    out.write_text("the last export\n")

    def rows_then_full(_rows: Any, stream: Any) -> None:
        stream.write("{}\n" * 100)
        stream.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("pengi_search.cli.library._write_rows", rows_then_full)
    result = CliRunner().invoke(app, ["export", "--db", str(db), "-o", str(out)])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr.splitlines() == [f"error: {out}: cannot write (no space left on device)"]
    assert [path.name for path in out.parent.iterdir()] == ["library.jsonl"]
    assert out.read_text() == "the last export\n"


def test_a_classify_csv_that_does_not_fit_keeps_the_old_one_and_leaves_no_partial_one(
    tiny_model_dir, tmp_path, monkeypatch
):
    clips, labels = tmp_path / "clips", tmp_path / "labels.txt"
    write_tone(clips / "first.wav", 2.0)
    labels.write_text("dog\nrain\n")
    out = tmp_path / "out" / "predictions.csv"
    out.parent.mkdir()
    out.write_text("the last predictions\n")

    def rows_then_full(_predictions: Any, stream: Any, _top: int) -> None:
        stream.write("file,label,score,top\n" * 100)
        stream.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("pengi_search.classify.write_csv", rows_then_full)
    quick = ["--beam", "2", "--max-len", "3", "--device", "cpu"]
    args = ["classify", str(clips), "-l", str(labels), "-m", str(tiny_model_dir), *quick, "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_FAILED
    assert result.stderr.splitlines() == [f"error: {out}: cannot write (no space left on device)"]
    assert [path.name for path in out.parent.iterdir()] == ["predictions.csv"]
    assert out.read_text() == "the last predictions\n"


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_and_no_partial_file(tmp_path, monkeypatch):
    from trainer.state import save_checkpoint

    folder = tmp_path / "checkpoints"
    save_checkpoint(folder / "step-1.pt", {"step": 1}, keep=None)
    monkeypatch.setattr("trainer.state.torch.save", lambda _payload, path: no_space(path))
    with pytest.raises(WriteError, match="step-2.pt: cannot write \\(no space left on device\\)"):
        save_checkpoint(folder / "step-2.pt", {"step": 2}, keep=1)
    assert [path.name for path in folder.iterdir()] == ["step-1.pt"]


def test_model_weights_that_do_not_fit_leave_the_installed_ones_and_no_partial_file(tmp_path, monkeypatch):
    model_dir = make_tiny_model_dir(tmp_path / "model")
    weights = (model_dir / "model.safetensors").read_bytes()
    monkeypatch.setattr("safetensors.torch.save_model", lambda _model, path: no_space(path))
    with pytest.raises(WriteError, match="cannot write"):
        Pengi.from_pretrained(model_dir).save_pretrained(model_dir)
    assert (model_dir / "model.safetensors").read_bytes() == weights
    assert not [path for path in model_dir.iterdir() if "partial" in path.name]


@pytest.mark.parametrize("command", ["describe", "query"])
def test_a_model_whose_weights_were_cut_short_is_refused_in_one_line(command, tiny_model_dir, tmp_path):
    """A copy or an install that a full disk stopped: the torch loader (`describe`) and the numpy text tower that
    `query` reads alike name the file, instead of a traceback or numpy's `cannot reshape array`."""
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    clip = write_tone(root / "first.wav", 2.0)
    run_index(quick_options([root], db, tiny_model_dir))
    model_dir = tmp_path / "cut-model"
    shutil.copytree(tiny_model_dir, model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    given = {"describe": [str(clip)], "query": ["dog", "--db", str(db)]}[command]
    result = CliRunner().invoke(app, [command, *given, "--model", str(model_dir)])
    assert result.exit_code == EXIT_FAILED
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {weights}: not a readable safetensors file ("), line

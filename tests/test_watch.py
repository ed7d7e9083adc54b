"""`pengi-search index PATH... --watch`: the library follows its folders, a run after each burst of changes."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pengi_search.audio_workers as audio_workers
from indexer.pipeline import run_index
from indexer.run_report import FailedFile, IndexSummary
from indexer.watch import LibraryWatch
from pengi_search.audio import AUDIO_EXTENSIONS
from pengi_search.audio_workers import CHANGED_WHILE_READ
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_INTERRUPTED, EXIT_USAGE
from pengi_search.cli.index import _print_json_summary, _print_run_line
from pengi_search.db import Store
from pengi_search.db.run_lock import indexing_lock
from pengi_search.errors import EXIT_TERMINATED

from .indexing import INDEXED, count_rows, quick_options, write_tone

QUICK = ("--workers", "0", "--beam", "2", "--max-len", "3", "--device", "cpu")
PATIENCE_S = 60.0  # the longest a step may take on a loaded machine (a run of the tiny model takes about a second)


class Lines:
    """The lines a process writes on a pipe, read as they come (a thread blocks on the pipe, not the test)."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()  # None: the stream ended
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self) -> str:
        line = self.queue.get(timeout=PATIENCE_S)
        assert line is not None, "the process ended"
        return line

    def summary(self) -> dict[str, Any]:
        """The next run's summary: `--watch --json` writes one JSON line a run, flushed as it is written."""
        return json.loads(self.next())

    def until(self, text: str) -> None:
        while text not in self.next():
            pass


@dataclass
class Watching:
    process: subprocess.Popen
    root: Path
    db: Path
    out: Lines
    err: Lines


@contextlib.contextmanager
def watching(tmp_path: Path, model_dir: Path, *, json_lines: bool = True, empty: bool = False) -> Iterator[Watching]:
    """`index --watch` (`--json` with `json_lines`) in a process of its own over a folder of one file (none with
    `empty`) and the library itself, once its first run (the run that `index` alone makes) has reported; killed at
    the end."""
    root = tmp_path / "sounds"
    db = root / "lib.db"  # a run's writes to the library must not start the next run
    root.mkdir()
    if not empty:
        write_tone(root / "first.wav", 1.0)
    command = [sys.executable, "-m", "pengi_search", "index", str(root), "--watch", "--debounce", "0.2"]
    command += ["--db", str(db), "--model", str(model_dir), *QUICK, *(["--json"] if json_lines else [])]
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}  # stdout as users get it
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        watch = Watching(process, root, db, Lines(process.stdout), Lines(process.stderr))
        if json_lines:
            assert watch.out.summary()["indexed"] == (0 if empty else 1)
        else:
            assert watch.out.next().startswith("indexed 1 file, 1 window in ")
        yield watch
    finally:
        process.kill()
        process.wait()


def test_watch_indexes_what_is_added_forgets_what_is_deleted_and_ctrl_c_ends_it_idle(tiny_model_dir, tmp_path):
    with watching(tmp_path, tiny_model_dir) as watch:
        # Written elsewhere and moved in whole: written in place, a pause of the loaded machine longer than the
        # debounce could split it into two runs.
        os.replace(write_tone(tmp_path / "second.wav", 2.0, freq=700), watch.root / "second.wav")
        added = watch.out.summary()
        assert (added["indexed"], added["pruned"], added["failed"]) == (1, 0, [])
        assert count_rows(watch.db, INDEXED) == 2
        (watch.root / "notes.txt").write_text("not audio")
        with pytest.raises(queue.Empty):  # no run for it, nor for what the last run wrote to the library
            watch.out.queue.get(timeout=5 * 0.2)

        (watch.root / "first.wav").unlink()
        assert watch.out.summary()["pruned"] == 1
        assert count_rows(watch.db, INDEXED) == 1

        watch.process.send_signal(signal.SIGINT)  # idle: the last run has reported
        assert watch.process.wait(timeout=PATIENCE_S) == EXIT_INTERRUPTED
        watch.err.until("interrupted")
    assert watch.out.queue.get(timeout=PATIENCE_S) is None  # nothing more written
    with Store.open(watch.db) as store:
        assert [run.status for run in store.runs()] == ["finished"] * 3  # no other run, none recorded interrupted


def test_a_watch_of_a_folder_without_audio_makes_the_library_and_waits_for_files(tiny_model_dir, tmp_path):
    """Without --watch, a first run over folders with no audio is refused (a mistyped folder); a watch is made to
    wait for them."""
    with watching(tmp_path, tiny_model_dir, empty=True) as watch:
        assert watch.db.is_file()
        os.replace(write_tone(tmp_path / "first.wav", 1.0), watch.root / "first.wav")
        assert watch.out.summary()["indexed"] == 1


def test_sigterm_ends_the_watch_as_ctrl_c_does_with_its_own_exit_code(tiny_model_dir, tmp_path):
    """`systemctl stop`, `docker stop`: between runs nothing is recorded, and the exit code is SIGTERM's."""
    with watching(tmp_path, tiny_model_dir) as watch:
        watch.process.send_signal(signal.SIGTERM)  # idle: the first run has reported
        assert watch.process.wait(timeout=PATIENCE_S) == EXIT_TERMINATED
        watch.err.until("interrupted")
    assert watch.out.queue.get(timeout=PATIENCE_S) is None  # nothing more written
    with Store.open(watch.db) as store:
        assert [run.status for run in store.runs()] == ["finished"]


def test_watch_waits_for_another_run_holding_the_library_then_says_what_changed_in_a_line(tiny_model_dir, tmp_path):
    with watching(tmp_path, tiny_model_dir, json_lines=False) as watch:
        with Store.open(watch.db) as store, indexing_lock(store):  # another run writes to the library
            os.replace(write_tone(tmp_path / "second.wav", 1.0, freq=700), watch.root / "second.wav")  # whole
            watch.err.until(
                "another command is writing to this library (an index run, or a remove); waiting for it to end"
            )
        line = watch.out.next()  # once it ended
        assert re.fullmatch(r"\d\d:\d\d:\d\d indexed 1 file, removed 0, 0 failed \(\d+\.\d s\)", line), line


def test_a_watched_folder_moved_away_ends_the_watch_saying_so_and_the_library_keeps_its_files(tiny_model_dir, tmp_path):
    with watching(tmp_path, tiny_model_dir) as watch:
        moved = shutil.move(watch.root, tmp_path / "moved")
        assert watch.process.wait(timeout=PATIENCE_S) == EXIT_USAGE
        watch.err.until("watching ")
        assert watch.err.next() == f"error: {watch.root}: the watched folder disappeared (moved away or deleted)"
    assert count_rows(Path(moved) / "lib.db", INDEXED) == 1


def test_a_file_renamed_or_copied_under_watch_is_indexed_from_its_windows_not_captioned_again(tiny_model_dir, tmp_path):
    with watching(tmp_path, tiny_model_dir) as watch:
        os.rename(watch.root / "first.wav", watch.root / "renamed.wav")
        renamed = watch.out.summary()
        assert [renamed[k] for k in ("indexed", "reused", "pruned", "window_count", "captioned")] == [1, 1, 1, 1, 0]
        shutil.copy(watch.root / "renamed.wav", tmp_path / "copy.wav")
        os.replace(tmp_path / "copy.wav", watch.root / "copy.wav")  # moved in whole, as in the test above
        copied = watch.out.summary()
        assert [copied[k] for k in ("indexed", "reused", "pruned", "window_count", "captioned")] == [1, 1, 0, 1, 0]
    with Store.open(watch.db) as store:
        assert sorted(Path(record.path).name for record in store.files_under()) == ["copy.wav", "renamed.wav"]


def test_a_later_run_is_one_line_with_the_time_none_with_quiet_and_failures_always(capsys):
    summary = IndexSummary("sqlite:///lib.db", indexed=2, pruned=1, seconds=1.26)
    summary.failed.append(FailedFile("/sounds/bad.wav", "not a readable audio file"))
    failure = "failed /sounds/bad.wav: not a readable audio file\n"
    _print_run_line(summary, quiet=False, verbose=False, db_option="")
    out, err = capsys.readouterr()
    assert re.fullmatch(r"\d\d:\d\d:\d\d indexed 2 files, removed 1, 1 failed \(1.3 s\)\n", out)
    assert err == failure
    _print_run_line(summary, quiet=True, verbose=False, db_option="")
    assert capsys.readouterr() == ("", failure)
    summary.reused = 1  # a file moved: indexed from its old path's windows
    _print_run_line(summary, quiet=False, verbose=False, db_option="")
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d indexed 2 files \(1 reused\), removed 1, 1 failed \(1.3 s\)\n", capsys.readouterr().out
    )


def test_a_later_run_with_json_is_one_json_line_and_its_failures_still_go_to_stderr(capsys):
    summary = IndexSummary("sqlite:///lib.db", indexed=2, pruned=1, seconds=1.26)
    summary.failed.append(FailedFile("/sounds/bad.wav", "not a readable audio file"))
    _print_json_summary(summary, line=True, verbose=False, db_option="")
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and json.loads(out)["failed"] == [summary.failed[0].to_json()]
    assert err == "failed /sounds/bad.wav: not a readable audio file\n"


def test_a_file_changed_while_a_run_reads_it_is_indexed_by_the_next_run(tiny_model_dir, tmp_path, monkeypatch):
    root, db = tmp_path / "lib", tmp_path / "lib.db"
    take = write_tone(root / "take.wav", 30.0, freq=500)
    real_windows = audio_workers.iter_windows

    def rewritten_after_the_first_window(path, **kwargs):
        for number, window in enumerate(real_windows(path, **kwargs)):
            if number == 1 and path == str(take):
                write_tone(take, 3.0, freq=700)  # the recorder starts a new take over it
            yield window

    options = quick_options([root], db, tiny_model_dir)
    with LibraryWatch([root], AUDIO_EXTENSIONS, str(db), debounce_s=0.2) as watch:
        with monkeypatch.context() as patch:
            patch.setattr(audio_workers, "iter_windows", rewritten_after_the_first_window)
            assert [f.message for f in run_index(options).failed] == [CHANGED_WHILE_READ]
        assert watch.wait(PATIENCE_S) == {str(take)}  # the change made during the run brings the next one
    again = run_index(options)
    assert (again.indexed, again.failed) == (1, [])  # its mtime moved, so the run sees it changed


def test_a_burst_of_changes_is_one_wait_that_ends_once_they_settle(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    written: list[float] = []

    def copy_three_files() -> None:
        for name in ("a.wav", "b.flac", "c.mp3"):
            (root / name).write_bytes(b"\0" * 1000)
            written.append(time.monotonic())
            time.sleep(0.1)

    with LibraryWatch([root], AUDIO_EXTENSIONS, str(tmp_path / "lib.db"), debounce_s=1.0) as watch:
        threading.Thread(target=copy_three_files).start()
        changed = watch.wait(PATIENCE_S)
        settled = time.monotonic()
    assert changed == {str(root / name) for name in ("a.wav", "b.flac", "c.mp3")}
    assert settled - written[-1] >= 1.0


def test_only_changes_a_run_would_act_on_end_a_wait(tiny_model_dir, tmp_path):
    root = tmp_path / "lib"
    db = root / "lib.db"  # the library's own files lie in the watched folder
    write_tone(root / "kept" / "one.wav", 1.0)
    (root / "drafts").mkdir()
    (root / "drafts" / "notes.txt").write_text("no audio here")
    options = quick_options([root], db, tiny_model_dir)
    run_index(options)
    with LibraryWatch([root], AUDIO_EXTENSIONS, str(db), debounce_s=0.2) as watch:
        (root / "readme.txt").write_text("not audio")
        shutil.rmtree(root / "drafts")  # a folder without indexed files
        run_index(options)  # writes the database beside them
        shutil.move(root / "kept", tmp_path / "elsewhere")  # a folder with indexed files, moved away
        assert watch.wait(PATIENCE_S) == {str(root / "kept")}
        shutil.move(tmp_path / "elsewhere", root / "back")  # moved in: its files bring no events of their own
        assert watch.wait(PATIENCE_S) == {str(root / "back")}


def test_a_file_root_is_still_watched_after_a_rename_replaced_it(tmp_path):
    """Recorders, editors and rsync save by renaming a new file over the old one: the file root's next changes
    still count, while other audio files beside it (not in the library) do not."""
    take = tmp_path / "take.wav"
    take.write_bytes(b"\0" * 1000)
    with LibraryWatch([take], AUDIO_EXTENSIONS, str(tmp_path / "lib.db"), debounce_s=0.2) as watch:
        (tmp_path / "beside.wav").write_bytes(b"\0" * 1000)
        (tmp_path / "take.part").write_bytes(b"\1" * 1000)
        os.replace(tmp_path / "take.part", take)
        assert watch.wait(PATIENCE_S) == {str(take)}
        take.write_bytes(b"\2" * 1000)  # the new file, written in place
        assert watch.wait(PATIENCE_S) == {str(take)}


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--reindex"], {}, "--watch: --reindex would index the whole library again at every change"),
        (["--retry-errors"], {}, "--watch: --retry-errors would retry every file that failed at every change"),
        (["--shard", "0/2"], {}, "--watch: one process watches the whole library: leave out --shard and torchrun"),
        ([], {"RANK": "0", "WORLD_SIZE": "2"}, "--watch: one process watches the whole library"),
    ],
)
def test_watch_refuses_options_a_watch_cannot_repeat(tmp_path, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["index", str(tmp_path), "--watch", "--db", str(tmp_path / "lib.db"), *args])
    assert result.exit_code == EXIT_USAGE
    assert result.output.startswith(f"error: {message}") and result.output.count("\n") == 1
    assert not (tmp_path / "lib.db").exists()


def test_debounce_without_watch_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["index", str(tmp_path), "--debounce", "5", "--db", str(tmp_path / "lib.db")])
    assert result.exit_code == EXIT_USAGE
    assert result.output.startswith("error: --debounce: says when --watch starts a run")


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e9"])
def test_a_debounce_that_never_ends_or_is_no_number_is_refused(tmp_path, value):
    """A watch with such a debounce would be accepted and never run: refused as any out-of-range number is."""
    args = ["index", str(tmp_path), "--watch", "--debounce", value, "--db", str(tmp_path / "lib.db")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_USAGE
    assert result.output.startswith("error: Invalid value for '--debounce': ") and result.output.count("\n") == 1
    assert not (tmp_path / "lib.db").exists()

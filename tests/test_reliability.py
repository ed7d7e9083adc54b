"""Bad input and bad luck: every case must let the run finish, record the bad file with its reason, and leave the
FAISS files holding exactly the database's vectors."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pty
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import indexer.pipeline as pipeline
import pengi_search.audio_workers as audio_workers
import pengi_search.hashing as hashing
from indexer.hold_points import FILE_STORED
from indexer.pipeline import run_index
from pengi_search.audio_workers import CHANGED_WHILE_READ, Decoded, Failed, Job, Windows, _worker_main, decode_all
from pengi_search.errors import EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED
from pengi_search.library import EmptyLibraryError, Library

from .indexing import (
    HANG_S,
    INDEXED,
    HeldRun,
    assert_consistent,
    count_rows,
    indexer_command,
    kill_session,
    kill_when,
    quick_options,
    signal_when,
    write_clips,
    write_tone,
)

LONG_SECONDS = 180.0  # a few minutes; the two-hour file is measured in benchmarks/bench_index.py

BAD_FILES = {
    "empty.wav": "empty file (0 bytes)",
    "random bytes.wav": "not a readable audio file",
    "text.mp3": "not a readable audio file",
    "truncated.flac": "corrupt or truncated audio data",
    "nan.wav": "non-finite samples (NaN or Inf)",
    "inf.wav": "non-finite samples (NaN or Inf)",
    "gone.wav": "broken symbolic link",
    "pipe.wav": "not a regular file (FIFO)",
    "loop-a.wav": "broken symbolic link (its target does not exist or is a loop)",
    "loop-b.wav": "broken symbolic link (its target does not exist or is a loop)",
}
GOOD_FILES = {  # name -> windows
    "good.wav": 1,
    "tiny 50 ms.wav": 1,
    "silence.wav": 1,
    "long 8 kHz.flac": 26,
    "ünïcødé 音 ☂.wav": 1,
    "   lots   of   spaces   .wav": 1,
}


def make_bad_tree(root: Path) -> None:
    rng = np.random.default_rng(7)
    write_tone(root / "good.wav", 2.0)
    (root / "empty.wav").write_bytes(b"")
    (root / "random bytes.wav").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "text.mp3").write_text("just a text file with an mp3 name\n" * 20)
    whole = write_tone(root / "truncated.flac", 10.0, sr=22_050).read_bytes()
    (root / "truncated.flac").write_bytes(whole[: len(whole) // 2])
    write_tone(root / "tiny 50 ms.wav", 0.05)
    sf.write(root / "silence.wav", np.zeros(3 * 44_100, np.float32), 44_100)
    write_tone(root / "long 8 kHz.flac", LONG_SECONDS, sr=8_000, freq=300)
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        samples = np.full(22_050, 0.1, np.float32)
        samples[1000] = bad
        sf.write(root / name, samples, 22_050, subtype="FLOAT")
    write_tone(root / "ünïcødé 音 ☂.wav", 1.0, freq=700)
    write_tone(root / "   lots   of   spaces   .wav", 1.0, freq=800)
    (root / "gone.wav").symlink_to(root / "never-existed.wav")
    os.mkfifo(root / "pipe.wav")
    (root / "loop-a.wav").symlink_to(root / "loop-b.wav")
    (root / "loop-b.wav").symlink_to(root / "loop-a.wav")
    (root / "sub").mkdir()
    (root / "sub" / "back to root").symlink_to(root, target_is_directory=True)  # a folder loop


@pytest.fixture(scope="module")
def bad_run(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("reliability")
    root = base / "library"
    make_bad_tree(root)
    db = base / "lib.db"
    summary = run_index(quick_options([root], db, tiny_model_dir, batch_size=8))
    return root, db, summary


def test_the_run_finishes_and_reports_every_bad_file(bad_run):
    root, db, summary = bad_run
    assert summary.partial and summary.indexed == len(GOOD_FILES)
    assert sorted(Path(f.path).name for f in summary.failed) == sorted(BAD_FILES)
    assert summary.window_count == sum(GOOD_FILES.values())
    with Library.open(str(db)) as library:
        assert library.store.runs(1)[0].status == "finished"
    assert_consistent(db)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_recorded_with_its_reason(bad_run, name):
    root, db, _ = bad_run
    with Library.open(str(db)) as library:
        record = library.store.get_file(str(root / name))
        details = library.store.window_details(library.store.vector_ids("text"))
    assert record.status == "error"
    assert BAD_FILES[name] in record.error
    assert all(d.path != record.path for d in details.values())


@pytest.mark.parametrize("name", sorted(GOOD_FILES))
def test_odd_but_valid_files_are_indexed(bad_run, name):
    root, db, _ = bad_run
    with Library.open(str(db)) as library:
        record = library.store.get_file(str(root / name))
        windows = list(library.store.window_details(library.store.vector_ids("audio")).values())
    assert record.status == "indexed" and record.error is None
    mine = sorted((d.index, d.start_s, d.end_s) for d in windows if d.path == record.path)
    assert len(mine) == GOOD_FILES[name]
    if name == "tiny 50 ms.wav":
        assert mine == [(0, 0.0, pytest.approx(0.05))]  # one padded window, its real extent kept
    if name == "long 8 kHz.flac":
        assert mine[-1][2] == pytest.approx(LONG_SECONDS) and record.sample_rate == 8_000


def test_the_folder_loop_is_walked_once(bad_run):
    root, db, summary = bad_run
    with Library.open(str(db)) as library:
        paths = [record.path for record in library.store.files_under(str(root))]
    assert not any("back to root" in path for path in paths)
    assert summary.files_seen == len(BAD_FILES) + len(GOOD_FILES)


def test_a_rerun_retries_nothing_and_stays_consistent(bad_run, tiny_model_dir):
    root, db, _ = bad_run
    again = run_index(quick_options([root], db, tiny_model_dir))
    assert (again.indexed, again.failed, again.unchanged) == (0, [], len(GOOD_FILES))
    assert again.skipped_errors == len(BAD_FILES)
    assert_consistent(db)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway; the broken link and FIFO cover it")
def test_an_unreadable_file_is_recorded(tiny_model_dir, tmp_path):
    locked = write_tone(tmp_path / "lib" / "locked.wav", 1.0)
    locked.chmod(0)
    summary = run_index(quick_options([tmp_path / "lib"], tmp_path / "lib.db", tiny_model_dir))
    failed = [(Path(f.path).name, f.message) for f in summary.failed]
    assert failed == [("locked.wav", "cannot read (permission denied)")]
    assert_consistent(tmp_path / "lib.db")


def test_a_file_deleted_between_scan_and_decoding(tiny_model_dir, tmp_path, monkeypatch):
    root = tmp_path / "lib"
    write_tone(root / "stays.wav", 1.0)
    vanishing = write_tone(root / "vanishes.wav", 1.0, freq=500)
    real_scan = pipeline.scan

    def scan_then_delete(*args, **kwargs):
        result = real_scan(*args, **kwargs)
        vanishing.unlink()
        return result

    monkeypatch.setattr(pipeline, "scan", scan_then_delete)
    db = tmp_path / "lib.db"
    summary = run_index(quick_options([root], db, tiny_model_dir))
    assert summary.indexed == 1
    assert [(Path(f.path).name, f.message) for f in summary.failed] == [("vanishes.wav", "no such file")]
    assert_consistent(db)

    monkeypatch.setattr(pipeline, "scan", real_scan)
    assert run_index(quick_options([root], db, tiny_model_dir)).pruned == 1  # the next run forgets it


def test_a_file_rewritten_while_it_is_decoded_fails_as_changed(tmp_path):
    """Its windows would mix two versions, and its decoder would call the shorter file truncated."""
    growing = write_tone(tmp_path / "take.wav", 60.0)
    messages = decode_all([Job(0, str(growing))], workers=0, chunk=1)
    assert isinstance(next(messages), Windows)
    write_tone(growing, 3.0, freq=500)  # the recorder starts a new take over it
    *_, end = messages
    assert isinstance(end, Failed) and end.reason == CHANGED_WHILE_READ


def test_an_index_run_records_a_changed_file_and_the_next_run_indexes_it(tiny_model_dir, tmp_path, monkeypatch):
    root = tmp_path / "lib"
    write_tone(root / "stays.wav", 1.0)
    take = write_tone(root / "take.wav", 30.0, freq=500)
    real_windows = audio_workers.iter_windows

    def rewritten_after_the_first_window(path, **kwargs):
        for number, window in enumerate(real_windows(path, **kwargs)):
            if number == 1 and path == str(take):
                write_tone(take, 3.0, freq=700)
            yield window

    monkeypatch.setattr(audio_workers, "iter_windows", rewritten_after_the_first_window)
    db = tmp_path / "lib.db"
    summary = run_index(quick_options([root], db, tiny_model_dir))
    assert [(f.path, f.message) for f in summary.failed] == [(str(take), CHANGED_WHILE_READ)]
    with Library.open(str(db)) as library:
        assert library.store.filter_window_ids(under=str(take)).size == 0  # none of the mixed windows were kept

    again = run_index(quick_options([root], db, tiny_model_dir))
    assert (again.indexed, again.failed) == (1, [])
    with Library.open(str(db)) as library:
        assert library.store.get_file(str(take)).duration_s == 3.0
    assert_consistent(db)


def test_a_files_windows_come_while_it_is_hashed_and_the_hash_is_of_its_bytes(tmp_path, monkeypatch):
    """A long recording on a slow disk or a network share takes minutes to read: hashed whole before it was decoded,
    it stood at zero windows all that time. Its windows come while it is hashed, and its hash is still the sha256
    of its bytes (the library's `content_hash`, which eval reports reuse)."""
    path = write_tone(tmp_path / "long.wav", 20.0)
    first_windows = threading.Event()
    read_after_windows: list[bool] = []
    read = hashing.sha256_hasher

    def slow_disk(path, stop=None):  # the hash's read ends only once windows were sent (or after 10 s)
        read_after_windows.append(first_windows.wait(timeout=10))
        return read(path, stop)

    monkeypatch.setattr(hashing, "sha256_hasher", slow_disk)
    messages = []
    for message in decode_all([Job(0, str(path))], workers=0):
        first_windows.set()
        messages.append(message)
    assert read_after_windows == [True]
    *windows, decoded = messages
    assert isinstance(decoded, Decoded) and decoded.count == sum(len(m.windows) for m in windows) == 3
    assert decoded.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_decoding_process_that_dies_fails_only_its_file(tmp_path):
    long = write_tone(tmp_path / "long.wav", 120.0)
    short = write_tone(tmp_path / "short.wav", 1.0, freq=660)
    ends: dict[int, Decoded | Failed] = {}
    killed = False
    for message in decode_all([Job(0, str(long)), Job(1, str(short))], workers=1, chunk=1):
        if isinstance(message, Windows) and not killed:  # the worker is now mid-file, blocked on its next window
            for child in multiprocessing.active_children():
                if child.name == "pengi-decode":
                    os.kill(child.pid, signal.SIGKILL)
            killed = True
        if isinstance(message, (Decoded, Failed)):
            ends[message.seq] = message
    assert (
        isinstance(ends[0], Failed) and ends[0].reason == "the decoding process died on this file (killed by SIGKILL)"
    )
    assert isinstance(ends[1], Decoded) and ends[1].count == 1  # handed to the worker that replaced it


def test_a_decoding_process_that_dies_between_files_fails_only_the_file_it_held(tmp_path):
    """A decoder that crashes as it opens a file (its process gone before the run hands it the next job): sending
    that job raised BrokenPipeError, and the whole index run ended with `error: [Errno 32] Broken pipe`."""
    files = [write_tone(tmp_path / f"{n}.wav", 1.0, freq=300 + 100 * n) for n in range(4)]
    ends: dict[int, Decoded | Failed] = {}
    for message in decode_all([Job(n, str(path)) for n, path in enumerate(files)], workers=1):
        if isinstance(message, Decoded) and message.seq == 0:  # the worker holds file 1 now, and nothing after it
            for child in multiprocessing.active_children():
                if child.name == "pengi-decode":
                    os.kill(child.pid, signal.SIGKILL)
                    child.join()
        if isinstance(message, (Decoded, Failed)):
            ends[message.seq] = message
    assert isinstance(ends[1], Failed) and "decoding process died" in ends[1].reason
    assert [type(ends[n]) for n in (0, 2, 3)] == [Decoded] * 3


def test_a_script_without_a_main_guard_is_told_so_instead_of_every_file_failing(tmp_path):
    """Each decoding process runs the calling script again; multiprocessing stops one whose script starts workers
    at its top level before it decodes anything. The caller is told why (no file is blamed for a decoder crash)."""
    clip = write_tone(tmp_path / "clip.wav", 1.0)
    script = tmp_path / "app.py"
    script.write_text(
        "from pengi_search.audio_workers import Job, decode_all\n"
        f"print([type(message).__name__ for message in decode_all([Job(0, {str(clip)!r})], workers=1)])\n"
    )
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1 and "Failed" not in ran.stdout
    last = ran.stderr.strip().splitlines()[-1]
    assert last.startswith("pengi_search.audio_workers.WorkersNotStarted: a decoding process ended as it started")
    assert 'if __name__ == "__main__":' in last


def test_a_decoding_process_whose_run_was_killed_ends_quietly(tmp_path):
    """`kill -9` of an index run leaves its decoding processes behind: each ends at its next message to the run (or
    its next wait for a job), without a BrokenPipeError traceback on the terminal the run was started from."""
    clip = write_tone(tmp_path / "clip.wav", 1.0)
    for has_job in (True, False):
        jobs_in, jobs_out = multiprocessing.Pipe(duplex=False)
        results_in, results_out = multiprocessing.Pipe(duplex=False)
        if has_job:
            jobs_out.send(Job(0, str(clip)))
        jobs_out.close()  # the run's ends of both pipes went with its process
        results_in.close()
        _worker_main(jobs_in, results_out, chunk=1)  # returns; raised BrokenPipeError (with a job), EOFError (without)


def test_sigkill_mid_run_then_rerun_loses_and_repeats_nothing(tiny_model_dir, tmp_path):
    root = tmp_path / "lib"
    count = 20
    write_clips(root, count)
    db = tmp_path / "lib.db"
    held = HeldRun(FILE_STORED, tmp_path)
    kill_when(indexer_command(root, db, tiny_model_dir, max_len=3), held.reached, held.env)
    committed = count_rows(db, INDEXED)
    assert committed == 1  # one file a batch: killed after the first

    summary = run_index(quick_options([root], db, tiny_model_dir))
    assert (summary.unchanged, summary.indexed, summary.failed) == (committed, count - committed, [])
    with Library.open(str(db)) as library:
        files = library.store.files_under(str(root))
        windows = library.store.window_details(library.store.vector_ids("text"))
        runs = library.store.runs(2)
    # The killed run held the indexing lock, which died with it; the rerun marked it interrupted, end unknown.
    assert [(run.status, run.finished_at is None) for run in runs] == [("finished", False), ("interrupted", True)]
    assert summary.stale_runs == [runs[1].id]
    assert len(files) == count and {f.status for f in files} == {"indexed"}
    assert sorted(d.path for d in windows.values()) == sorted(f.path for f in files)  # one window each, no repeats
    assert_consistent(db)


@pytest.mark.parametrize(
    ("number", "group", "code"),
    [
        (signal.SIGINT, True, EXIT_INTERRUPTED),  # Ctrl-C: the terminal sends it to the run and its decoders
        (signal.SIGTERM, False, EXIT_TERMINATED),  # `kill PID`
        (signal.SIGTERM, True, EXIT_TERMINATED),  # systemd, SLURM: the run and its decoders
        (signal.SIGHUP, True, EXIT_HANGUP),  # the terminal closed: the shell passes it on to the run and its decoders
    ],
    ids=["ctrl-c", "kill", "sigterm-to-all", "hang-up"],
)
def test_ctrl_c_and_sigterm_stop_a_run_that_records_itself_interrupted_and_a_rerun_resumes(
    tiny_model_dir, tmp_path, number, group, code
):
    root = tmp_path / "lib"
    count = 16
    write_clips(root, count)
    db = tmp_path / "lib.db"
    command = indexer_command(root, db, tiny_model_dir, max_len=3, workers=1)
    held = HeldRun(FILE_STORED, tmp_path)
    status, stderr = signal_when(command, held.reached, number, group=group, env=held.env)
    kept = "this run kept 1 file indexed and 0 windows captioned; run the same command again to resume"
    assert status == code and stderr.splitlines()[-1:] == [f"interrupted: {kept}"], stderr
    assert "Traceback" not in stderr  # nor from the decoding process, which its run stops
    committed = count_rows(db, INDEXED)
    assert committed == 1  # stopped after its first file
    with Library.open(str(db)) as library:
        [stopped] = library.store.runs()
    assert (stopped.status, stopped.finished_at is not None) == ("interrupted", True)  # recorded by the run itself

    summary = run_index(quick_options([root], db, tiny_model_dir))
    assert (summary.unchanged, summary.indexed, summary.failed) == (committed, count - committed, [])
    assert (summary.stale_runs, summary.captions_missing) == ([], 0)


def test_a_run_whose_terminal_closed_records_itself_interrupted_with_nowhere_to_say_so(tiny_model_dir, tmp_path):
    """An ssh session dropped: the terminal the run draws its bar on is gone (every write there fails), then the
    shell sends SIGHUP. The run stops as on SIGTERM, its "kept" line going nowhere, and a re-run resumes."""
    root = tmp_path / "lib"
    count = 8
    write_clips(root, count)
    db = tmp_path / "lib.db"
    command = indexer_command(root, db, tiny_model_dir, max_len=3, workers=1)
    command.remove("--quiet")  # a bar on the terminal, as a person watching has
    held = HeldRun(FILE_STORED, tmp_path)
    terminal, side = pty.openpty()
    run = subprocess.Popen(
        command, stdout=side, stderr=side, start_new_session=True, env={**os.environ, **held.env}
    )  # fmt: skip
    os.close(side)
    try:
        while not held.reached():
            assert run.poll() is None, "the run ended before it stored a file"
            os.read(terminal, 65536) if select.select([terminal], [], [], 0.05)[0] else None
        os.close(terminal)  # the terminal window closed
        os.killpg(run.pid, signal.SIGHUP)
        assert run.wait(timeout=HANG_S) == EXIT_HANGUP
    finally:
        kill_session(run)
    assert count_rows(db, INDEXED) == 1
    with Library.open(str(db)) as library:
        [stopped] = library.store.runs()
    assert stopped.status == "interrupted"
    summary = run_index(quick_options([root], db, tiny_model_dir))
    assert (summary.unchanged, summary.indexed, summary.failed, summary.stale_runs) == (1, count - 1, [], [])


def test_queries_while_the_indexer_writes(tiny_model_dir, tmp_path):
    root = tmp_path / "lib"
    for n in range(8):
        write_tone(root / f"clip-{n}.wav", 1.0 + n, freq=200 + 90 * n)
    db = tmp_path / "lib.db"
    outcome: dict[str, object] = {}

    def indexing() -> None:
        try:
            outcome["summary"] = run_index(quick_options([root], db, tiny_model_dir, batch_size=1))
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    writer = threading.Thread(target=indexing)
    writer.start()
    rng = np.random.default_rng(0)
    sizes: list[int] = []
    while writer.is_alive():
        with Library.open(str(db)) as library:
            try:
                index = library.vector_index("audio")
            except EmptyLibraryError:
                continue
            scores, ids = index.search(rng.standard_normal(index.dim).astype(np.float32), 5)
            found = ids[ids >= 0]
            details = library.store.window_details(found)
        assert set(details) == set(found.tolist())  # every hit leads to its window and file
        assert np.all(np.diff(scores[0][ids[0] >= 0]) <= 1e-6)
        sizes.append(len(index))
    writer.join()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"].indexed == 8
    assert sizes and min(sizes) < outcome["summary"].window_count  # some queries ran against a library still growing
    assert_consistent(db)

"""`index` under torchrun when one rank fails or is stopped: the others stop at once, each saying what happened to
it, and the library stays whole for the run that resumes it."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from indexer.hold_points import FILE_STORED
from indexer.pipeline import run_index
from indexer.shard import Shard
from pengi_search.db import Store
from pengi_search.db.run_lock import alone_in_library, indexing_lock
from pengi_search.testing import make_tiny_model_dir

from .indexing import HeldRun, kill_session, quick_options, signal_when, write_tone
from .torchrun_runs import TORCHRUN_ENV, TORCHRUN_S, torchrun, torchrun_command, torchrun_worker

STOPPED_BY_TORCHRUN = "stopped by torchrun, as another process of the run had ended (torchrun's report names it)"

# `python -m indexer` where rank 0 touches $AT_BARRIER as it reaches the ranks' meeting at the end of its run, and
# rank 1, once rank 0 is there, fails before its pass 1 with one line (as an out-of-memory error or a broken database
# would end it): torchrun then stops rank 0 (SIGTERM) as it waits for rank 1. With $LEAVE, rank 1 instead ends well at
# once, saying nothing, as a rank does that leaves a failure to the machine's first rank to say.
FAILING_RANK_1 = """
import os, pathlib, time
import indexer.pipeline, indexer.shard
from indexer.__main__ import main
from pengi_search.errors import PengiSearchError

marker = pathlib.Path(os.environ["AT_BARRIER"])
if os.environ["RANK"] == "0":
    meet = indexer.shard.Rank.barrier
    def barrier(self):
        marker.touch()
        meet(self)
    indexer.shard.Rank.barrier = barrier
elif os.environ.get("LEAVE"):
    raise SystemExit(0)
else:
    def fail(self, plan):
        while not marker.exists():
            time.sleep(0.05)
        raise PengiSearchError("rank 1", "failed on purpose")
    indexer.pipeline._Run._settle = fail
main()
"""


def _run_statuses(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT shard, status FROM runs"))


@pytest.fixture()
def sounds(tmp_path) -> Path:
    for number in range(6):
        write_tone(tmp_path / "sounds" / f"tone{number}.wav", 1.0, freq=300 + 50 * number)
    return tmp_path / "sounds"


def test_a_rank_waiting_for_one_that_failed_stops_at_once_when_torchrun_stops_it(sounds, tmp_path, tiny_model_dir):
    """Rank 0, done with its files, waits at the end for rank 1, which fails. gloo waited in C++, deaf to torchrun's
    SIGTERM: rank 0 was killed (SIGKILL) 30 s later, saying nothing, its run left marked running. Now it stops on
    the signal (exit code 143) and records its run interrupted; a plain run then indexes only rank 1's files."""
    script, db = tmp_path / "failing_rank_1.py", tmp_path / "lib.db"
    script.write_text(FAILING_RANK_1)
    options = ["--db", str(db), "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "0", "--max-len", "3"]
    launched = torchrun(str(sounds), *options, entry=(str(script),), env={"AT_BARRIER": str(tmp_path / "at-barrier")})
    assert launched.stderr.count("error: rank 1: failed on purpose") == 1, launched.stderr[-3000:]
    assert re.search(r"rank\s*: 0 .*\n\s*exitcode\s*: 143 ", launched.stderr), launched.stderr[-3000:]
    assert "forcefully" not in launched.stderr, launched.stderr[-3000:]  # torchrun's SIGKILL
    assert _run_statuses(db) == {"0/2": "interrupted", "1/2": "failed"}
    resumed = run_index(quick_options([sounds], db, tiny_model_dir))
    rank_1_files = [path for path in sounds.iterdir() if Shard(1, 2).owns(str(path))]
    assert (resumed.indexed, resumed.unchanged) == (len(rank_1_files), 6 - len(rank_1_files))


@pytest.mark.parametrize(
    ("whom", "number", "said"),
    [
        # rank 1 alone: it says it was interrupted; torchrun then stops rank 0, which says so
        ("rank 1", signal.SIGTERM, {"0/2": STOPPED_BY_TORCHRUN, "1/2": "interrupted"}),
        ("group", signal.SIGINT, {"0/2": "interrupted", "1/2": "interrupted"}),  # a terminal's Ctrl-C: each was
    ],
    ids=["rank-1", "ctrl-c"],
)
def test_under_torchrun_each_rank_says_what_stopped_it_and_what_its_shard_kept(
    sounds, tmp_path, tiny_model_dir, whom: str, number: int, said: dict[str, str]
):
    """Every rank said "interrupted", the one a signal reached and the one torchrun stopped after it ended alike,
    in lines that did not say which rank's shard kept what. Now a rank that torchrun stopped as another had ended
    says so, and each line names its shard; each shard's run is recorded interrupted."""
    held = HeldRun(FILE_STORED, tmp_path)
    db = tmp_path / "lib.db"
    options = ["--db", str(db), "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "0", "--max-len", "3"]
    _, stderr = signal_when(
        torchrun_command(str(sounds), *options, entry=("-m", "indexer")),
        held.reached,
        number,
        group=whom == "group",
        env={**TORCHRUN_ENV, **held.env},
        target=functools.partial(torchrun_worker, rank=1) if whom == "rank 1" else None,
        ends_within=TORCHRUN_S,
    )
    lines = [line for line in stderr.splitlines() if "this run (shard" in line]
    by_shard = {re.search(r"\(shard (\d/2)\)", line)[1]: line.partition(": this run")[0] for line in lines}
    assert by_shard == said and len(lines) == 2, stderr[-3000:]
    assert _run_statuses(db) == {"0/2": "interrupted", "1/2": "interrupted"}


def test_a_rank_that_ended_without_meeting_the_others_does_not_leave_them_waiting(sounds, tmp_path, tiny_model_dir):
    """Rank 1 ends well at once, as a rank that leaves a failure every rank meets to the machine's first (a busy
    library, when the run that held it ends just as rank 0 tries). Rank 0 waited for it at the end for days; now
    it sees that it ended and says so in one line (exit 1)."""
    script, db = tmp_path / "leaving_rank_1.py", tmp_path / "lib.db"
    script.write_text(FAILING_RANK_1)
    options = ["--db", str(db), "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "0", "--max-len", "3"]
    env = {"AT_BARRIER": str(tmp_path / "at-barrier"), "LEAVE": "1"}
    launched = torchrun(str(sounds), *options, entry=(str(script),), env=env)
    said = "error: shard 0/2: another rank of the run ended before the ranks met"
    assert [line for line in launched.stderr.splitlines() if line.startswith("error:")] == [said], launched.stderr
    assert re.search(r"rank\s*: 0 .*\n\s*exitcode\s*: 1 ", launched.stderr), launched.stderr[-3000:]
    assert _run_statuses(db) == {"0/2": "failed"}


def test_under_torchrun_a_library_another_run_holds_is_said_once_per_machine(sounds, tmp_path, tiny_model_dir):
    """An unsharded run holds the library: every rank found it busy and each said so, in as many lines as ranks.
    The machine's first rank says it once, with exit code 1 (which torchrun reports); the others end well."""
    db = tmp_path / "lib.db"
    run_index(quick_options([sounds / "tone0.wav"], db, tiny_model_dir))
    options = ["--db", str(db), "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "0"]
    with Store.open(db) as store, indexing_lock(store):
        launched = torchrun(str(sounds), *options, entry=("-m", "indexer"))
    errors = [line for line in launched.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another command is writing to this library" in errors[0], launched.stderr
    assert re.search(r"rank\s*: 0 .*\n\s*exitcode\s*: 1 ", launched.stderr), launched.stderr[-3000:]
    assert not re.search(r"rank\s*: 1 .*\n\s*exitcode", launched.stderr), launched.stderr[-3000:]


def test_under_torchrun_ranks_waiting_for_a_library_another_run_holds_say_it_once(sounds, tmp_path, tiny_model_dir):
    """With --wait, every rank waiting for the unsharded run that holds the library said so, once per rank; the
    machine's first says it, and once the library is free every rank indexes its shard."""
    db, said = tmp_path / "lib.db", tmp_path / "stderr.txt"
    run_index(quick_options([sounds / "tone0.wav"], db, tiny_model_dir))
    options = ["--db", str(db), "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "0", "--wait"]
    waiting = "another command is writing to this library (an index run, or a remove); waiting for it to end"
    launch = torchrun_command(str(sounds), *options, "--max-len", "3", entry=("-m", "indexer"))
    with said.open("w") as stderr, contextlib.ExitStack() as held:
        held.enter_context(indexing_lock(held.enter_context(Store.open(db))))
        process = subprocess.Popen(launch, env={**os.environ, **TORCHRUN_ENV}, stderr=stderr, start_new_session=True)
        try:
            deadline = time.monotonic() + TORCHRUN_S
            while waiting not in said.read_text() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3)  # the other rank, had it said so too, would have by now
            held.close()  # the library free: the ranks go on
            assert process.wait(timeout=TORCHRUN_S) == 0, said.read_text()[-3000:]
        finally:
            kill_session(process)
    assert said.read_text().count(waiting) == 1, said.read_text()[-3000:]
    assert _run_statuses(db) == {None: "finished", "0/2": "finished", "1/2": "finished"}


def test_under_torchrun_a_reindex_with_another_model_is_refused_while_another_jobs_shard_writes(
    sounds, tmp_path, tiny_model_dir
):
    """The job's ranks hold the library shared, as another job's `--shard 0/4` run (another machine's) does: rank 0
    started the whole library over under that run, whose vectors of the old model then joined the new library. Now
    rank 0 refuses, naming that run, and the library is as it was, with no run of the job's recorded."""
    db = tmp_path / "lib.db"
    run_index(quick_options([sounds], db, tiny_model_dir))
    with Store.open(db) as store:
        before = (store.stats()["window_count"], store.index_meta())
    other_model = make_tiny_model_dir(tmp_path / "tiny-other", seed=1)
    options = ["--db", str(db), "--model", str(other_model), "--device", "cpu", "--workers", "0", "--reindex"]
    with Store.open(db) as store, indexing_lock(store, "0/4"):
        writing = store.start_run("0/4")
        launched = torchrun(str(sounds), *options, "--max-len", "3", entry=("-m", "indexer"))
    errors = [line for line in launched.stderr.splitlines() if line.startswith("error:")]
    refused = f"cannot re-index this library with another model while run {writing} (shard 0/4), started "
    assert launched.returncode != 0 and errors and refused in errors[0], launched.stderr[-3000:]
    with Store.open(db) as store:
        assert (store.stats()["window_count"], store.index_meta()) == before
    # Refused before any rank recorded its run: neither rank 0's (failed) nor rank 1's, which had recorded its own
    # and met rank 0 after, and was left `interrupted` when torchrun stopped it, a run that never ran.
    assert set(_run_statuses(db)) == {None, "0/4"}, _run_statuses(db)


@pytest.mark.parametrize("model", ["another model", "the library's model"])
def test_under_torchrun_a_reindex_passes_every_ranks_check_for_restarts(model, sounds, tmp_path, tiny_model_dir):
    """Every rank checks for another job's restart of the library before it writes: rank 0 of a re-index with the
    library's model before it forgets its files' windows, the other ranks once rank 0 has restarted the library, if
    it does (until then, its own hold on the library and its old model would refuse them). Both ranks finish."""
    db = tmp_path / "lib.db"
    run_index(quick_options([sounds], db, tiny_model_dir))
    with Store.open(db) as store:
        before = (store.stats()["window_count"], store.index_meta().model)
    asked = make_tiny_model_dir(tmp_path / "tiny-other", seed=1) if model == "another model" else tiny_model_dir
    options = ["--db", str(db), "--model", str(asked), "--device", "cpu", "--workers", "0", "--reindex"]
    launched = torchrun(str(sounds), *options, "--max-len", "3", entry=("-m", "indexer"))
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert _run_statuses(db) == {None: "finished", "0/2": "finished", "1/2": "finished"}
    with Store.open(db) as store:
        after = (store.stats()["window_count"], store.index_meta().model)
    assert after[0] == before[0] and (after[1] != before[1]) == (model == "another model")


def test_under_torchrun_a_restart_under_way_is_said_once_per_machine(sounds, tmp_path, tiny_model_dir):
    """Another job restarting the library refused every rank of this one, once recorded, and each rank said it. The
    machine's first says it (exit code 1, which torchrun reports), once its run was refused; the other ends well."""
    db = tmp_path / "lib.db"
    run_index(quick_options([sounds / "tone0.wav"], db, tiny_model_dir))
    options = ["--db", str(db), "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "0"]
    with Store.open(db) as other, alone_in_library(other, {"0/3", "1/3", "2/3"}, doing="re-index"):
        launched = torchrun(str(sounds), *options, entry=("-m", "indexer"))
    errors = [line for line in launched.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "re-indexing this library with another model" in errors[0], launched.stderr[-3000:]
    assert re.search(r"rank\s*: 0 .*\n\s*exitcode\s*: 1 ", launched.stderr), launched.stderr[-3000:]
    assert not re.search(r"rank\s*: 1 .*\n\s*exitcode", launched.stderr), launched.stderr[-3000:]
    assert _run_statuses(db) == {None: "finished", "0/2": "failed", "1/2": "failed"}


def test_under_torchrun_shards_another_job_holds_are_said_once_per_machine(sounds, tmp_path, tiny_model_dir):
    """Another job of two ranks holds both shards: each rank found its own held and said so, one line a rank. The
    machine's first says it (exit code 1, which torchrun reports); the other ends well."""
    db = tmp_path / "lib.db"
    run_index(quick_options([sounds / "tone0.wav"], db, tiny_model_dir))
    options = ["--db", str(db), "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "0"]
    with contextlib.ExitStack() as held:
        for shard in ("0/2", "1/2"):
            holder = held.enter_context(Store.open(db))
            held.enter_context(indexing_lock(holder, shard))
            holder.start_run(shard)
        launched = torchrun(str(sounds), *options, entry=("-m", "indexer"))
    errors = [line for line in launched.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "(shard 0/2)" in errors[0], launched.stderr[-3000:]
    assert re.search(r"rank\s*: 0 .*\n\s*exitcode\s*: 1 ", launched.stderr), launched.stderr[-3000:]
    assert not re.search(r"rank\s*: 1 .*\n\s*exitcode", launched.stderr), launched.stderr[-3000:]

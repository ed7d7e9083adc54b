"""`index` under torchrun when one rank fails or is stopped: the others stop at once, each saying what happened to
it, and the library stays whole for the run that resumes it."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from indexer.pipeline import run_index
from indexer.shard import Shard

from .indexing import quick_options, write_tone
from .torchrun_runs import torchrun

# `python -m indexer` where rank 0 touches $AT_BARRIER as it reaches the ranks' meeting at the end of its run, and
# rank 1, once rank 0 is there, fails before its pass 1 with one line (as an out-of-memory error or a broken database
# would end it). torchrun then stops rank 0 (SIGTERM) as it waits for rank 1.
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

"""Commands that change a library while an `index` run writes to it. `remove` beside a run was undone in part (the
run stored the files it decoded afterwards) and took files the run had stored, which its summary still counted
indexed: it now waits for the run (`--wait`) or is refused naming it. A torchrun job re-indexing with another model
restarted the library under another job's shards writing to it, whose vectors of the old model then joined the new
library: it is refused while one of them runs."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from indexer import audio_pass
from indexer.captions import captions_missing
from indexer.hold_points import FILE_STORED
from indexer.pipeline import _Run, run_index
from indexer.roots import Roots
from indexer.shard import Shard
from pengi_search.choices import Captions
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_FAILED
from pengi_search.db import BuiltWithOtherError, IndexBusyError, ModelInfo, Store, run_lock
from pengi_search.db.run_lock import RESTART_UNDER_WAY, RESTARTING, alone_in_library, indexing_lock
from pengi_search.library import Library
from pengi_search.scan import scan
from pengi_search.testing import make_tiny_model_dir
from pengi_search.torchrun_env import SaidByTheMachinesFirstProcess

from .indexing import (
    HANG_S,
    HeldRun,
    assert_consistent,
    indexer_command,
    kill_session,
    quick_options,
    write_clips,
    write_tone,
)
from .test_store import db_url  # noqa: F401 (fixture: SQLite, and PostgreSQL when a server is given)
from .torchrun_runs import torchrun_rank

runner = CliRunner()
WAITING = "warning: an indexing run is writing to this library: run 1, started"  # `remove` is none: not "another"


@pytest.fixture()
def library(db_url, tmp_path, tiny_model_dir) -> str:  # noqa: F811
    """A library of two clips under tmp_path/sounds, indexed with the tiny model."""
    write_clips(tmp_path / "sounds", 2)
    run_index(quick_options([tmp_path / "sounds"], db_url, tiny_model_dir))
    return db_url


def indexed_paths(db: str) -> list[str]:
    with Store.open(db) as store:
        return [record.path for record in store.files_under()]


def test_remove_is_refused_while_an_index_run_holds_the_library(library, tmp_path):
    sounds = str(tmp_path / "sounds")
    with Store.open(library) as store, indexing_lock(store):
        holder = store.start_run()
        refused = runner.invoke(app, ["remove", sounds, "--db", library])
        assert refused.exit_code == EXIT_FAILED, refused.output
        [said] = refused.output.splitlines()
        assert said.startswith("error: ") and "pass --wait" in said
        assert f": an indexing run is writing to this library: run {holder}, started " in said  # not "another"
        assert len(indexed_paths(library)) == 2  # nothing removed
    removed = runner.invoke(app, ["remove", sounds, "--db", library])
    assert removed.exit_code == 0, removed.output
    assert indexed_paths(library) == []


def test_remove_with_wait_waits_for_the_index_run_writing_to_the_library(tiny_model_dir, tmp_path):
    """Two processes: an `index` run that stored its first file and holds there, and `remove --wait` of its folder,
    which says that it waits and removes nothing until the run has ended; then it removes what the run stored."""
    sounds, db, said = tmp_path / "sounds", tmp_path / "lib.db", tmp_path / "remove.err"
    write_clips(sounds, 3)
    held = HeldRun(FILE_STORED, tmp_path)
    env = {**os.environ, **held.env}
    command = indexer_command(sounds, db, tiny_model_dir, max_len=3)
    index = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    remove = None
    try:
        deadline = time.monotonic() + HANG_S
        while not held.reached() and index.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.reached(), "the index run did not store a file"
        removing = [sys.executable, "-m", "pengi_search", "remove", str(sounds), "--db", str(db), "--wait"]
        with said.open("w") as stderr:
            remove = subprocess.Popen(removing, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
        while "waiting for it to end" not in said.read_text() and remove.poll() is None:
            assert time.monotonic() < deadline, said.read_text()
            time.sleep(0.05)
        assert remove.poll() is None, said.read_text()  # waiting, not done beside the run
        assert WAITING in said.read_text() and len(indexed_paths(str(db))) == 1
        os.killpg(index.pid, signal.SIGTERM)  # the run ends (interrupted), and the library is free
        assert index.wait(timeout=HANG_S) == 128 + signal.SIGTERM
        output, _ = remove.communicate(timeout=HANG_S)
        assert remove.returncode == 0, said.read_text()
    finally:
        kill_session(index)
        if remove is not None:
            kill_session(remove)
    assert " ".join(output.decode().split()) == f"removed 1 file at or under {sounds}"  # as wrapped to 80 columns
    assert indexed_paths(str(db)) == []
    assert_consistent(db)


def test_a_torchrun_job_reindexing_with_another_model_is_refused_beside_another_jobs_shard(
    library,
    tmp_path,
    tiny_model_dir,
):
    """A torchrun job's ranks hold the library shared, as another job's shards do (`--shard 0/4` from another
    machine): its reset waits for no one. It is refused naming the other job's run, before its own run is recorded
    (it left a failed run behind); a run recorded as running whose process died does not hold it back."""
    other_model = make_tiny_model_dir(tmp_path / "tiny-other", seed=1)
    options = quick_options([tmp_path / "sounds"], library, other_model, reindex=True)
    scanned = scan(options.roots, options.extensions)
    job = SimpleNamespace(world_size=2, leads=True, barrier=lambda: None)  # rank 0 of 2, on its own
    with Library.open(library) as opened:
        built_with = opened.store.index_meta().model
        with Store.open(library) as other_job, indexing_lock(other_job, "0/4"):
            writing = other_job.start_run("0/4")
            runs_before = opened.store.runs()
            with pytest.raises(IndexBusyError) as refused:
                _Run(opened, options, None, job, None, 0.0).execute(scanned)  # type: ignore[arg-type]
            assert f"cannot re-index this library with another model while run {writing} (shard 0/4)" in str(
                refused.value
            )
            assert "try again when it ends, or pass --wait" in str(refused.value)
            assert opened.store.stats()["window_count"] == 2  # nothing was reset
            assert opened.store.runs() == runs_before  # and no run recorded
        # Its process gone (the lock released with it), the run's record alone holds nothing back.
        summary = _Run(opened, options, None, job, None, 0.0).execute(scanned)  # type: ignore[arg-type]
        assert opened.store.runs()[0].id == summary.run_id and opened.store.runs()[0].status == "finished"
        assert opened.store.stats()["window_count"] == 2 and summary.indexed == 2  # indexed anew
        assert opened.store.index_meta().model != built_with


def test_a_shards_run_that_records_itself_after_a_restart_looked_is_refused_before_it_writes(
    library, tmp_path, tiny_model_dir, monkeypatch
):
    """A job restarting the library with another model asks after the runs recorded running; a shard's run holds
    its lock before it records itself, so one starting meanwhile went unseen, and its files went on being stored
    with the old model's vectors into the library started over. Now such a run is refused once recorded, before
    it writes, while that job holds the library."""
    new_sounds = tmp_path / "new"
    for number in range(3):  # pitches of their own: not copied from the library's files, but decoded
        write_tone(new_sounds / f"new-{number}.wav", 2.0, freq=523 + 41 * number)
    restarted_with = ModelInfo("another-model", "another-fingerprint")
    with Store.open(library) as job, alone_in_library(job, {"0/2", "1/2"}, doing="re-index"):  # it looked: none
        embedder = job.index_meta().embedder

        def restart_after_the_first_file(point: str) -> None:  # as the job's reset lands mid-way through pass 1
            if point == FILE_STORED and job.index_meta().model != restarted_with:
                job.reset_index(restarted_with, embedder)

        monkeypatch.setattr(audio_pass, "hold_at", restart_after_the_first_file)
        options = quick_options([new_sounds], library, tiny_model_dir, shard=Shard(0, 1))
        with pytest.raises(IndexBusyError) as refused:
            run_index(options)
        assert RESTART_UNDER_WAY in str(refused.value)
    with Store.open(library) as store:
        assert store.index_meta().model != restarted_with  # the job did not restart under it: nothing stored
        assert [run.status for run in store.runs() if run.shard == "0/1"] == ["failed"]
        assert len(store.files_under(str(new_sounds))) == 0


def test_a_run_recorded_while_a_restart_takes_the_library_is_asked_after_as_the_others(db_url, monkeypatch):  # noqa: F811
    """A run that records itself between the restarting job's look and its hold on the library is seen by a second
    look, then refused as the runs seen at first are (it holds its shard's lock)."""
    taking = run_lock._held_restart
    with contextlib.ExitStack() as other_job, Store.open(db_url) as job:
        other = other_job.enter_context(Store.open(db_url))
        other_job.enter_context(indexing_lock(other, "0/4"))
        recorded: list[int] = []

        def recorded_meanwhile(store: Store, **how):
            if not recorded:
                recorded.append(other.start_run("0/4"))
            return taking(store, **how)

        monkeypatch.setattr(run_lock, "_held_restart", recorded_meanwhile)
        with pytest.raises(IndexBusyError) as refused, alone_in_library(job, {"0/2", "1/2"}, doing="re-index it"):
            pass
        assert f"cannot re-index it while run {recorded[0]} (shard 0/4)" in str(refused.value)
        run_lock.no_restart_under_way(other)  # the restart's hold let go with the refusal


ANOTHER_JOB = {"0/3", "1/3", "2/3"}  # the shards of a torchrun job of three ranks, beside one of two


def test_a_restart_beside_another_jobs_restart_is_refused_naming_it(db_url):  # noqa: F811
    """A torchrun job restarting the library waited, without a word, for another job restarting it to end. Now it
    is refused without --wait, as it is beside a run, saying why."""
    refused: list[IndexBusyError] = []

    def second_job() -> None:  # in a thread of its own: one that waits fails the test rather than hang it
        with Store.open(db_url) as second:
            try:
                with alone_in_library(second, ANOTHER_JOB, doing="re-index it"):
                    pass
            except IndexBusyError as busy:
                refused.append(busy)

    with Store.open(db_url) as first, alone_in_library(first, {"0/2", "1/2"}, doing="re-index"):
        refusing = threading.Thread(target=second_job, daemon=True)
        refusing.start()
        refusing.join(HANG_S)
        assert not refusing.is_alive(), "it waited"
    assert refused, "it was not refused"
    assert f"cannot re-index it while {RESTARTING}; try again when it ends, or pass --wait" in str(refused[0])


def test_a_restart_waiting_for_another_jobs_restart_says_so_and_goes_on_once_it_ends(db_url):  # noqa: F811
    """With --wait, the job waiting for another one's restart says who it waits for, then takes the library."""
    said, inside = threading.Event(), threading.Event()
    warnings: list[str] = []

    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())
            said.set()

    def second_job() -> None:
        with Store.open(db_url) as second, alone_in_library(second, ANOTHER_JOB, doing="re-index", wait=True):
            inside.set()

    handler = Said(logging.WARNING)
    run_lock.log.addHandler(handler)
    try:
        with Store.open(db_url) as first:
            with alone_in_library(first, {"0/2", "1/2"}, doing="re-index"):
                waiting = threading.Thread(target=second_job, daemon=True)
                waiting.start()
                assert said.wait(HANG_S)
                assert not inside.is_set()
            waiting.join(HANG_S)
    finally:
        run_lock.log.removeHandler(handler)
    assert inside.is_set() and warnings == [f"{RESTARTING}; waiting for it to end"]


def test_a_restart_waits_unsaid_for_a_run_passing_the_restart_lock_even_without_wait(db_url, monkeypatch, caplog):  # noqa: F811
    """Each shard's run holds the RESTART lock for a moment as it passes it (`no_restart_under_way`): a job about to
    restart the library is neither refused for it nor says it, only another job's restart is."""
    with Store.open(db_url) as job, Store.open(db_url) as other:
        passing = run_lock._locks_for(other)
        assert passing is not None and passing.take(run_lock.RESTART, shared=True, wait=False)
        made = run_lock._locks_for

        def passed_as_the_job_waits(store: Store):  # the run lets it go as the job waits for it
            locks = made(store)
            take = locks.take

            def taking(name: str, *, shared: bool, wait: bool) -> bool:
                if name == run_lock.RESTART and wait:
                    passing.release()
                return take(name, shared=shared, wait=wait)

            locks.take = taking
            return locks

        monkeypatch.setattr(run_lock, "_locks_for", passed_as_the_job_waits)
        with caplog.at_level(logging.WARNING), alone_in_library(job, ANOTHER_JOB, doing="re-index"):
            pass
    assert caplog.records == []


def test_a_rank_refused_by_a_restart_leaves_it_to_its_machines_first_only_once_that_one_was_refused(
    db_url,  # noqa: F811
    monkeypatch,
):
    """Every rank of a torchrun job that another job's restart refused said it. Now a rank other than its machine's
    first ends well, saying nothing, once the first's run has ended (refused too); while the first runs on (it
    passed before the restart took the library), the rank says it."""
    torchrun_rank(monkeypatch, 1, 2)  # rank 1 of 2, on one machine
    monkeypatch.setattr(run_lock.MachineSiblings, "now", classmethod(lambda cls: cls([os.getpid()])))
    monkeypatch.setattr(run_lock, "SIBLINGS_WAIT_S", 0.0)  # it looks once
    with Store.open(db_url) as job, Store.open(db_url) as other:
        firsts = job.start_run("0/2")  # by the machine's first process, as this test's process lists it
        with alone_in_library(other, ANOTHER_JOB, doing="re-index"):
            with pytest.raises(IndexBusyError, match=RESTART_UNDER_WAY):
                run_lock.no_restart_under_way(job)
            job.finish_run(firsts, status="failed")
            with pytest.raises(SaidByTheMachinesFirstProcess):
                run_lock.no_restart_under_way(job)


def test_a_torchrun_reindex_with_the_librarys_model_forgets_nothing_while_another_job_restarts_it(
    library, tmp_path, tiny_model_dir
):
    """Rank 0 of a torchrun --reindex with the library's own model forgot its files' windows, then checked for
    another job's restart: once that job was done, it deleted the windows that job wrote anew. Now it checks first,
    and is refused with the windows as they were."""
    options = quick_options([tmp_path / "sounds"], library, tiny_model_dir, reindex=True)
    scanned = scan(options.roots, options.extensions)
    job = SimpleNamespace(world_size=2, leads=True, barrier=lambda: None)  # rank 0 of 2, on its own
    with Library.open(library) as opened, Store.open(library) as other:
        restarting = alone_in_library(other, ANOTHER_JOB, doing="re-index")  # it looked before rank 0 recorded
        with restarting, pytest.raises(IndexBusyError) as refused:
            _Run(opened, options, Shard(0, 2), job, None, 0.0).execute(scanned)  # type: ignore[arg-type]
        assert RESTART_UNDER_WAY in str(refused.value)
        assert opened.store.stats()["window_count"] == 2  # nothing forgotten


def test_a_shards_run_whose_model_was_chosen_before_a_restart_is_refused_before_it_captions(
    db_url,  # noqa: F811
    tmp_path,
    tiny_model_dir,
    monkeypatch,
):
    """A shard's run checks its model against the library's as it starts, before it records itself; a torchrun job
    that restarted the library with another model meanwhile left windows waiting for captions, which the run then
    captioned with the old model. Now the run, recorded, checks its model again and is refused."""
    write_clips(tmp_path / "sounds", 2)
    run_index(quick_options([tmp_path / "sounds"], db_url, tiny_model_dir))
    other_model = make_tiny_model_dir(tmp_path / "tiny-other", seed=1)
    later = quick_options([tmp_path / "sounds"], db_url, other_model, reindex=True, captions=Captions.later)
    job = SimpleNamespace(world_size=2, leads=True, barrier=lambda: None)  # rank 0 of 2, on its own
    recording = Store.start_run

    def restarted_first(store: Store, shard: str | None = None) -> int:  # the run has chosen its model by now
        if shard == "0/1":
            with Library.open(db_url) as restarting:
                _Run(restarting, later, None, job, None, 0.0).execute(scan(later.roots, later.extensions))  # type: ignore[arg-type]
        return recording(store, shard)

    monkeypatch.setattr(Store, "start_run", restarted_first)
    with pytest.raises(BuiltWithOtherError):
        run_index(quick_options([tmp_path / "sounds"], db_url, tiny_model_dir, shard=Shard(0, 1)))
    with Store.open(db_url) as store:
        assert captions_missing(store, Roots([str(tmp_path / "sounds")])) == 2  # left for the new model's Pengi
        assert [run.status for run in store.runs() if run.shard == "0/1"] == ["failed"]

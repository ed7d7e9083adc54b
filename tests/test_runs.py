"""Indexing runs and what a library records about itself: one run at a time, dead runs marked, stats that read
plainly, read-only commands that create nothing, and the index type (asked for and built) kept in the database."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, make_url, text
from typer.testing import CliRunner

from indexer.pipeline import run_index
from indexer.shard import Shard
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_FAILED, EXIT_USAGE
from pengi_search.db import DatabaseUnreachableError, IndexBusyError, MissingDatabaseError, Store, StoreError, run_lock
from pengi_search.db.errors import ReadOnlyLibraryError
from pengi_search.db.run_lock import indexing_lock
from pengi_search.library import Library
from pengi_search.library_stats import index_info
from pengi_search.torchrun_env import SaidByTheMachinesFirstProcess
from pengi_search.vectors import VectorIndex

from .indexing import assert_consistent, quick_options, write_tone
from .test_store import db_url, pg_url  # noqa: F401 (fixtures: SQLite, and PostgreSQL when a server is given)
from .torchrun_runs import torchrun_rank

runner = CliRunner()
QUICK = ("--workers", "0", "--beam", "2", "--max-len", "3", "--device", "cpu", "--quiet")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def sounds(tmp_path) -> Path:
    root = tmp_path / "sounds"
    write_tone(root / "a.wav", 1.0, freq=500)
    write_tone(root / "b.wav", 2.0, freq=700)
    return root


# -- one run at a time ------------------------------------------------------------------------------------------


def refused(store: Store, shard: str | None = None, *, wait: bool = False) -> IndexBusyError | None:
    """The error when the indexing lock (of `shard`) cannot be taken now; None when it could (`wait`: once it
    could)."""
    try:
        with indexing_lock(store, shard, wait=wait):
            return None
    except IndexBusyError as busy:
        return busy


def test_a_second_run_is_refused_while_one_holds_the_library(db_url):  # noqa: F811
    with Store.open(db_url) as store, indexing_lock(store), Store.open(db_url) as other:
        holder = store.start_run()
        busy = refused(other)
        assert busy is not None and busy.exit_code == EXIT_FAILED
        assert f"run {holder}, started " in str(busy) and "--wait" in str(busy)
    with Store.open(db_url) as store:
        assert refused(store) is None  # released with the block


def test_shards_of_one_job_run_together_but_not_beside_a_whole_run(db_url):  # noqa: F811
    with Store.open(db_url) as one, Store.open(db_url) as two, Store.open(db_url) as three:
        with indexing_lock(one, "0/2"), indexing_lock(two, "1/2"):
            assert refused(three) and refused(three, "1/2")
        with indexing_lock(one):
            assert refused(two, "0/2")
        assert refused(three) is None


def as_rank(monkeypatch, rank: int, *, job_pids: tuple[int, ...] = ()) -> None:
    """This process as rank `rank` of a two-rank torchrun job on one machine, whose other processes here are
    `job_pids` (none of the runs recorded running is this job's, by default)."""
    torchrun_rank(monkeypatch, rank, 2)
    monkeypatch.setattr(run_lock.MachineSiblings, "now", classmethod(lambda cls: cls(list(job_pids), 1)))


def test_under_torchrun_shards_another_job_holds_are_said_by_the_machines_first_rank(db_url, monkeypatch):  # noqa: F811
    """Another job of two ranks holds both shards: each rank found its own held and said so, one line a rank. The
    machine's first says it; the other ends well, saying nothing (`SaidByTheMachinesFirstProcess`)."""
    with contextlib.ExitStack() as holders, Store.open(db_url) as ours:
        for shard in ("0/2", "1/2"):
            holder = holders.enter_context(Store.open(db_url))
            holders.enter_context(indexing_lock(holder, shard))
            holder.start_run(shard)
        as_rank(monkeypatch, 1)
        with pytest.raises(SaidByTheMachinesFirstProcess):
            refused(ours, "1/2")
        as_rank(monkeypatch, 0)
        assert "(shard 0/2)" in str(refused(ours, "0/2"))


@pytest.mark.parametrize("first_holds", ["nothing", "its own run"])
def test_under_torchrun_a_shard_held_alone_is_said_by_its_rank(db_url, monkeypatch, first_holds: str):  # noqa: F811
    """Shard 1/2 held by a run of `--shard 1/2` by hand: the first rank, free, goes on, so rank 1 says it, whether
    or not the first has recorded its own run by then."""
    with Store.open(db_url) as one, Store.open(db_url) as ours, indexing_lock(one, "1/2"):
        one.start_run("1/2")
        if first_holds == "its own run":
            ours.start_run("0/2")
        as_rank(monkeypatch, 1, job_pids=(os.getpid(),) if first_holds == "its own run" else ())
        busy = refused(ours, "1/2")
        assert isinstance(busy, IndexBusyError) and "(shard 1/2)" in str(busy)


@pytest.mark.parametrize(("held", "waiting_lines"), [(("0/2", "1/2"), 0), (("1/2",), 1)], ids=["both", "alone"])
def test_under_torchrun_a_rank_waiting_for_its_shard_says_it_unless_the_first_waits_too(
    tmp_path, monkeypatch, caplog, held: tuple[str, ...], waiting_lines: int
):
    """With --wait, rank 1 says that it waits for its shard only where the machine's first rank does not wait too
    (SQLite's file locks: the test sees the moment rank 1 starts to wait)."""
    library = str(tmp_path / "lib.db")
    as_rank(monkeypatch, 1)
    blocked = threading.Event()
    take = run_lock._FileLocks.take

    def noted_take(self, name: str, *, shared: bool, wait: bool) -> bool:
        if wait:
            blocked.set()  # past the warning, about to wait
        return take(self, name, shared=shared, wait=wait)

    monkeypatch.setattr(run_lock._FileLocks, "take", noted_take)
    with contextlib.ExitStack() as holders:
        for shard in held:
            holder = holders.enter_context(Store.open(library))
            holders.enter_context(indexing_lock(holder, shard))
            holder.start_run(shard)
        with Store.open(library) as ours:
            waiter = threading.Thread(target=lambda: refused(ours, "1/2", wait=True))
            waiter.start()
            assert blocked.wait(30)
            holders.close()
            waiter.join(30)
    said = [record for record in caplog.records if "waiting for it to end" in record.getMessage()]
    assert len(said) == waiting_lines, said


class SetWhenLogged(logging.Handler):
    """Sets `event` when a record says `text`: the moment the code under test reaches a step, whatever the load."""

    def __init__(self, event: threading.Event, text: str) -> None:
        super().__init__()
        self.event, self.text = event, text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def cut_lock_connection(store: Store) -> None:
    """End, from the server's side, the session that holds this library's indexing lock (as a server restart or a
    network cut would), and wait until it is gone."""
    with store.engine.connect() as connection:
        schema = connection.scalar(text("SELECT current_database() || '.' || current_schema()"))
        key = zlib.crc32(f"{schema}\0{run_lock.LIBRARY}".encode())
        holders = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = :cls AND objid = :key"
        params = {"cls": run_lock._PG_CLASS, "key": key}
        [pid] = connection.scalars(text(holders), params).all()
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        deadline = time.monotonic() + 60
        while backend_alive(connection, pid):
            assert time.monotonic() < deadline, f"backend {pid} still there a minute after pg_terminate_backend"
            time.sleep(0.05)


def backend_alive(connection: Connection, pid: int) -> bool:
    """Whether the server still lists backend `pid`. The statistics views are a snapshot kept for the whole
    transaction: cleared before each look, or a backend still exiting at the first look (a loaded machine) would be
    seen alive for ever."""
    connection.execute(text("SELECT pg_stat_clear_snapshot()"))
    return bool(connection.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}))


def test_a_run_that_lost_its_server_ends_with_its_own_error_and_leaves_the_library_free(pg_url):  # noqa: F811
    """The lock's session died with the connection, and the server dropped the lock: releasing it must not fail in
    turn, which hid the run's one-line error behind a traceback."""
    with Store.open(pg_url) as store:
        with pytest.raises(DatabaseUnreachableError, match="the server went away"), indexing_lock(store):
            cut_lock_connection(store)
            raise DatabaseUnreachableError(store.name, "the server went away")
        assert refused(store) is None


def test_a_run_that_lost_its_lock_with_the_server_writes_nothing_more(pg_url):  # noqa: F811
    """A server restarted between two writes ends the lock's session, and with it the lock, while the run's other
    connections reconnect unawares: the run must stop at its next write rather than write beside the next run."""
    with Store.open(pg_url) as store:
        resume = "run the same command again to resume"
        with pytest.raises(DatabaseUnreachableError, match=resume), indexing_lock(store):
            cut_lock_connection(store)
            store.start_run()
        assert store.runs() == []  # the write was rolled back
        assert refused(store) is None


def test_a_role_that_may_only_read_is_told_so_by_commands_that_write(pg_url, tmp_path):  # noqa: F811
    """PostgreSQL's "permission denied" is the role's rights, not what a statement was given: said as such, and an
    `index` run stops rather than fail its files one by one."""
    role, options = f"pengi_reader_{uuid.uuid4().hex[:8]}", make_url(pg_url).query["options"]
    schema = options.removeprefix("-csearch_path=")
    with Store.open(pg_url) as owner, owner.engine.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{role}"'))
        connection.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        connection.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
    # Connected as the server's user, acting as the role (as `SET ROLE` does): no password to set up.
    as_reader = make_url(pg_url).update_query_dict({"options": f"{options} -crole={role}"})
    try:
        with Store.open(as_reader.render_as_string(hide_password=False)) as reader:
            assert reader.stats()["files"]["total"] == 0  # reading works
            with pytest.raises(ReadOnlyLibraryError, match="this database role may only read the library"):
                reader.start_run()
        result = run("rebuild-index", "--index-type", "flat", "--db", as_reader.render_as_string(hide_password=False))
        assert result.exit_code == EXIT_FAILED and "this database role may only read" in result.stderr
        assert len(result.stderr.splitlines()) == 1
    finally:
        with Store.open(pg_url) as owner, owner.engine.begin() as connection:
            connection.execute(text(f'DROP OWNED BY "{role}"'))
            connection.execute(text(f'DROP ROLE "{role}"'))


def test_index_refuses_or_waits_for_the_run_holding_the_library(tiny_model_dir, sounds, tmp_path, caplog):
    db = tmp_path / "lib.db"
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with Store.open(db) as store, indexing_lock(store):
            run_id = store.start_run()
            held.set()
            release.wait(30)
            store.finish_run(run_id)

    lock_log = logging.getLogger("pengi_search.db.run_lock")
    waiting = SetWhenLogged(release, "waiting for it to end")  # the holder ends once the run waits for it
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        refused = run("index", sounds, "--db", db, "--model", tiny_model_dir, *QUICK)
        assert refused.exit_code == EXIT_FAILED
        assert "another indexing run is writing to this library: run 1, started" in refused.output
        assert "pass --wait" in refused.output
        lock_log.addHandler(waiting)
        with caplog.at_level(logging.WARNING, logger=lock_log.name):
            waited = run("index", sounds, "--db", db, "--model", tiny_model_dir, *QUICK, "--wait", "--json")
    finally:
        lock_log.removeHandler(waiting)
        release.set()
        holder.join()
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.stdout)["indexed"] == 2 and "waiting for it to end" in caplog.text
    with Store.open(db) as store:
        assert [(r.id, r.status) for r in store.runs()] == [(2, "finished"), (1, "finished")]  # refused: no trace


def test_runs_left_running_by_a_dead_process_are_marked_interrupted(tiny_model_dir, sounds, tmp_path):
    db = tmp_path / "lib.db"
    with Store.open(db) as store:
        dead_whole, dead_shard, dead_other_shard = store.start_run(), store.start_run("0/2"), store.start_run("1/2")
    summary = run_index(quick_options([sounds], db, tiny_model_dir, shard=Shard(0, 2)))
    assert summary.stale_runs == [dead_shard]  # a shard vouches only for its own shard
    summary = run_index(quick_options([sounds], db, tiny_model_dir))
    assert summary.stale_runs == [dead_whole, dead_other_shard]  # a whole run holds the library alone
    with Store.open(db) as store:
        statuses = {run.id: (run.status, run.finished_at) for run in store.runs()}
    assert {statuses[i] for i in (dead_whole, dead_shard, dead_other_shard)} == {("interrupted", None)}


def test_stats_prints_start_end_and_status_of_each_run(tiny_model_dir, sounds, tmp_path):
    db = tmp_path / "lib.db"
    with Store.open(db) as store:
        store.start_run()  # a process that died
    indexed = run("index", sounds, "--db", db, "--model", tiny_model_dir, *QUICK)
    assert indexed.exit_code == 0 and "run 1 was still marked running" in indexed.output
    lines = [line for line in run("stats", "--db", db).stdout.splitlines() if line.startswith("run ")]
    assert lines[0].startswith("run 2: finished; started 20") and " UTC, ended 20" in lines[0]
    assert lines[0].endswith("; 2 seen, 2 indexed, 0 failed, 0 pruned")
    assert lines[1].startswith("run 1: interrupted; started 20") and "end unknown (its process died)" in lines[1]
    runs = json.loads(run("stats", "--db", db, "--json").stdout)["runs"]
    assert runs[0]["status"] == "finished" and runs[0]["finished_at"] > runs[0]["started_at"]
    assert runs[0]["pid"] and runs[0]["host"]


# -- read-only commands -----------------------------------------------------------------------------------------


def test_commands_that_read_create_nothing_and_name_the_command_that_does(tiny_model_dir, tmp_path):
    typo = tmp_path / "typo" / "dir" / "x.db"
    clip = write_tone(tmp_path / "clip.wav", 1.0)
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\ncat\n")
    model = ("--model", tiny_model_dir)
    for args in (
        ("query", "rain", *model),
        ("similar", clip, *model),
        ("stats",),
        ("export",),
        ("classify", clip, "--labels", labels, *model),
        ("remove", clip),
        ("rebuild-index",),
        ("tune",),
        ("serve", "--port", "0"),
    ):
        result = run(*args, "--db", typo)
        assert result.exit_code == EXIT_FAILED, (args, result.output)
        assert "no index here yet; create it with `pengi-search index PATH... --db" in result.output, args
        assert not (tmp_path / "typo").exists(), args
    # Without --db, the default library: classify works without one, the others refuse.
    assert run("stats").exit_code == EXIT_FAILED and not list(tmp_path.glob("pengi-home/*.db"))


def test_the_command_named_for_a_missing_library_can_be_pasted_as_it_is(tmp_path):
    """A library path with a space or a quote is quoted for the shell in the `pengi-search index` hint."""
    db = tmp_path / "my sounds" / "Bob's library.db"
    result = run("stats", "--db", db)
    hint = re.search(r"create it with `([^`]*)`", result.output)
    assert result.exit_code == EXIT_FAILED and hint, result.output
    assert shlex.split(hint[1]) == ["pengi-search", "index", "PATH...", "--db", str(db)]


def test_a_missing_model_fails_index_before_it_creates_the_library(sounds, tmp_path):
    result = run("index", sounds, "--db", tmp_path / "new" / "lib.db", "--model", tmp_path / "no-model", *QUICK)
    assert result.exit_code == EXIT_USAGE and "no-model: no such folder" in result.output  # a path, mistyped
    assert not (tmp_path / "new").exists()
    assert run("stats").exit_code == EXIT_FAILED  # the default library was not made either


def test_a_database_without_the_schema_is_missing_and_readers_cannot_write(tmp_path, db_url):  # noqa: F811
    (tmp_path / "empty.db").touch()
    with pytest.raises(MissingDatabaseError, match="pengi-search index PATH"):
        Store.open(tmp_path / "empty.db", read_only=True)
    with pytest.raises(MissingDatabaseError):
        Store.open(db_url, create=False)  # a fresh schema (PostgreSQL) or file (SQLite) holds no library yet
    Store.open(db_url).close()
    with Store.open(db_url, read_only=True) as reader:
        assert reader.read_only and reader.stats()["files"]["total"] == 0
        with pytest.raises(StoreError, match="readonly|read-only|query_only") as refused:
            reader.upsert_file("/lib/a.wav", size=1, mtime=1.0)
    # What the database said, on one line: not the driver's class, the statement or SQLAlchemy's link.
    assert "\n" not in refused.value.reason and "Error)" not in refused.value.reason
    assert "sqlalche.me" not in refused.value.reason and "[SQL" not in refused.value.reason


def test_a_reader_upgrades_an_older_library_first(tmp_path):
    from pengi_search.db.engine import create_store_engine
    from pengi_search.db.migrate import SCHEMA_HEAD, migrate

    engine = create_store_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0002")
    engine.dispose()
    with Store.open(tmp_path / "old.db", read_only=True) as reader:
        assert reader.stats()["schema_revision"] == SCHEMA_HEAD


@pytest.fixture(scope="module")
def bound_by_file_modes() -> list[str]:
    """The prefix that runs a command as a user whom file modes bind: none for a user other than root; for root,
    whom they do not bind, a user namespace in which root's files are this (unprivileged) user's own."""
    if os.geteuid() != 0:
        return []
    prefix = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("root, and no user namespace to run as a user that file modes bind")
    return prefix


def test_a_library_in_a_folder_the_user_may_not_write_is_read_as_it_is(
    tiny_model_dir, sounds, tmp_path, bound_by_file_modes
):
    """A library on a read-only share, or another user's: SQLite reads a WAL database through a shared-memory file
    beside it, which such a folder does not let a reader make, so the readers (doctor too) read the file as it
    is rather than fail; and doctor does not call it damaged. A command that writes says it cannot."""
    shelf = tmp_path / "read only [shelf] #1?"  # a name the SQLite URI that reads it must spell out
    db = shelf / "lib.db"
    assert run("index", sounds, "--db", db, "--model", tiny_model_dir, *QUICK).exit_code == 0
    before = sorted(path.name for path in shelf.iterdir())
    assert "lib.db-shm" not in before  # the last connection removed it
    for path in shelf.iterdir():
        path.chmod(0o444)
    shelf.chmod(0o555)

    def as_reader(*args: object) -> subprocess.CompletedProcess[str]:
        command = [*bound_by_file_modes, sys.executable, "-m", "pengi_search", *map(str, args), "--db", str(db)]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    try:
        stats = as_reader("stats", "--json")
        found = as_reader("query", "a tone", "--model", tiny_model_dir, "--json")
        doctor = as_reader("doctor", "--json")
        removed = as_reader("remove", sounds / "a.wav")
    finally:
        shelf.chmod(0o755)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["files"]["indexed"] == 2
    assert found.returncode == 0, found.stderr
    assert sorted(Path(hit["path"]).name for hit in json.loads(found.stdout)) == ["a.wav", "b.wav"]
    report = json.loads(doctor.stdout)
    assert report["database"]["integrity"] == "ok" and report["database"]["files"]["indexed"] == 2
    assert [problem for problem in report["problems"] if problem["where"] == "database"] == []
    assert removed.returncode == EXIT_FAILED
    assert removed.stderr == f"error: {db}: the library cannot be written (the file: permission denied); " + (
        "query, stats and export can still read it\n"
    )
    assert sorted(path.name for path in shelf.iterdir()) == before  # nothing was made beside it


# A reader that stays open (as `serve` does), asked for the library's file count once per line of its input.
COUNTING_READER = """
import sys
from pengi_search.db import Store
with Store.open(sys.argv[1], read_only=True) as store:
    for _ in sys.stdin:
        print(store.stats()["files"]["total"], flush=True)
"""


def test_a_lasting_reader_of_a_library_it_may_not_write_sees_what_its_owner_adds(
    tiny_model_dir, sounds, tmp_path, bound_by_file_modes
):
    """A server on another user's library reads it as a file that does not change only while nobody writes it: the
    files its owner indexes later are there for it, as for a reader of its own library, and so while the owner's
    writer holds the library open (read through the shared-memory file that writer made)."""
    shelf = tmp_path / "shelf"
    db = shelf / "lib.db"
    assert run("index", sounds, "--db", db, "--model", tiny_model_dir, *QUICK).exit_code == 0
    shelf.chmod(0o555)
    command = [*bound_by_file_modes, sys.executable, "-c", COUNTING_READER, str(db)]
    reader = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def files_seen() -> int:
        reader.stdin.write("\n")
        reader.stdin.flush()
        return int(reader.stdout.readline() or -1)

    more = tmp_path / "more"
    write_tone(more / "c.wav", 1.0, freq=900)
    try:
        assert files_seen() == 2
        if bound_by_file_modes == []:  # a user whom modes bind writes as the library's owner, in a folder they may
            shelf.chmod(0o755)
        assert run("index", more, "--db", db, "--model", tiny_model_dir, *QUICK).exit_code == 0
        shelf.chmod(0o555)
        assert files_seen() == 3
        if bound_by_file_modes == []:
            shelf.chmod(0o755)
        with Store.open(db) as writer, writer.session(write=True):  # the owner's writer, holding it open
            shelf.chmod(0o555)
            assert (shelf / "lib.db-shm").exists()
            assert files_seen() == 3
    finally:
        reader.stdin.close()
        reader.wait(timeout=60)
        shelf.chmod(0o755)
    assert reader.returncode == 0


# -- the index type lives in the database -----------------------------------------------------------------------


def test_an_ivfpq_request_on_a_small_library_is_reported_as_the_flat_index_it_is(tiny_model_dir, sounds, tmp_path):
    db = tmp_path / "lib.db"
    assert run("index", sounds, "--db", db, "--model", tiny_model_dir, *QUICK).exit_code == 0
    rebuilt = run("rebuild-index", "--db", db, "--index-type", "ivfpq", "--json")
    assert rebuilt.exit_code == 0, rebuilt.output
    text_index = json.loads(rebuilt.stdout)["vector_indexes"]["text"]
    assert (text_index["requested_type"], text_index["index_type"], text_index["vectors"]) == ("ivfpq", "flat", 2)
    stats = json.loads(run("stats", "--db", db, "--json").stdout)["vector_indexes"]
    assert {kind: (i["requested_type"], i["index_type"]) for kind, i in stats.items()} == {
        "text": ("ivfpq", "flat"),
        "audio": ("ivfpq", "flat"),
    }
    assert "text index: 2 vectors, flat; ivfpq was asked for, built once there are 10,000 vectors" in (
        run("stats", "--db", db).stdout
    )


def test_stats_and_rebuild_index_count_one_vector_in_the_singular(tiny_model_dir, sounds, tmp_path):
    """A library of one window reads `1 vector`, not `1 vectors`."""
    db = tmp_path / "lib.db"
    assert run("index", sounds / "a.wav", "--db", db, "--model", tiny_model_dir, *QUICK).exit_code == 0
    assert "text index: 1 vector, flat" in run("stats", "--db", db).stdout
    assert "audio: 1 vector (flat)" in run("rebuild-index", "--db", db).stdout


def test_index_warns_of_an_ivfpq_fallback_once_for_each_index_naming_it(tiny_model_dir, sounds, tmp_path, caplog):
    """`index` has no summary line per index to say it in: each index warns once, and says which it is (the two
    warnings read the same, word for word, as if one thing were said twice)."""
    with caplog.at_level(logging.WARNING):
        result = run(
            "index", sounds, "--db", tmp_path / "lib.db", "--model", tiny_model_dir, *QUICK, "--index-type", "ivfpq"
        )
    assert result.exit_code == 0, result.output
    said = sorted(record.getMessage() for record in caplog.records if "IVF-PQ" in record.getMessage())
    assert said == [
        f"{kind} index: IVF-PQ needs at least 10000 vectors to train (have 2); using the exact flat index"
        for kind in ("audio", "text")
    ]


def test_rebuild_index_says_an_ivfpq_fallback_once_in_its_summary(tiny_model_dir, sounds, tmp_path, caplog):
    """One line per index, whole, saying what was built and when IVF-PQ will be; not also the log's warning."""
    db = tmp_path / "lib.db"
    assert run("index", sounds, "--db", db, "--model", tiny_model_dir, *QUICK).exit_code == 0
    with caplog.at_level(logging.WARNING):
        rebuilt = run("rebuild-index", "--db", db, "--index-type", "ivfpq")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert rebuilt.stdout.splitlines()[:2] == [
        f"{kind}: 2 vectors (flat; ivfpq was asked for, built once there are 10,000 vectors)"
        for kind in ("text", "audio")
    ]
    assert "IVF-PQ" not in caplog.text and rebuilt.stderr == ""


@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_a_damaged_hnsw_file_is_rebuilt_as_hnsw(tiny_model_dir, sounds, tmp_path, damage):
    db = tmp_path / "lib.db"
    assert run("index", sounds, "--db", db, "--model", tiny_model_dir, *QUICK).exit_code == 0
    assert run("rebuild-index", "--db", db, "--index-type", "hnsw").exit_code == 0
    with Library.open(db) as library:
        path = library.index_path("text")
        params = index_info(library.store)["text"].params
    if damage == "corrupt":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.unlink()
    found = run("query", "a tone", "--db", db, "--model", tiny_model_dir, "--json")  # a reader rebuilds it
    assert found.exit_code == 0, found.output
    rebuilt, _ = VectorIndex.load(path)
    assert rebuilt.type == "hnsw" and len(rebuilt) == 2
    with Library.open(db, read_only=True) as library:
        info = index_info(library.store)["text"]
        assert (info.requested_type, info.effective_type, info.params) == ("hnsw", "hnsw", params)
        assert np.array_equal(library.vector_index("text").ids(), library.store.vector_ids("text"))
    assert_consistent(db)


def test_the_record_follows_the_index_as_it_grows_and_empties(tiny_model_dir, sounds, tmp_path):
    db = tmp_path / "lib.db"
    run_index(quick_options([sounds], db, tiny_model_dir, index_type="hnsw"))
    write_tone(sounds / "c.wav", 1.0, freq=900)
    run_index(quick_options([sounds], db, tiny_model_dir))
    with Library.open(db) as library:
        info = index_info(library.store)["audio"]
        assert (info.requested_type, info.effective_type, info.vectors) == ("hnsw", "hnsw", 3)
        updated = info.updated_at
    time.sleep(0.01)
    assert run("remove", sounds, "--db", db).exit_code == 0
    with Library.open(db) as library:
        info = index_info(library.store)["audio"]
        assert (info.requested_type, info.effective_type, info.vectors) == ("hnsw", None, 0)
        assert info.updated_at > updated

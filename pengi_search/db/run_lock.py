"""One indexing run per library at a time: a second `pengi-search index` refuses (or waits, with `--wait`).

The lock is held by the process for as long as the run lasts and is released by the operating system or the
database server when the process ends in any way, kill -9 included, so a dead run never blocks the next one:
- SQLite: `flock` on files beside the database (`index.db.indexing.lock`, and one per shard);
- PostgreSQL: session advisory locks on a connection of the run's own, keyed by the database schema.

Shards of one job index together: each holds the library's lock shared and its shard's lock exclusively, so shards
run side by side while an unsharded run (which holds the library's lock exclusively) waits for all of them. A torchrun
job that restarts the library with another model holds the RESTART lock as well (`alone_in_library`), which every
shard's run, once recorded, must find free (`no_restart_under_way`), and RESTARTER, by which a second such job knows
that it waits for one, not for a run passing RESTART.
In-memory SQLite and other backends take no lock.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..torchrun_env import SIBLINGS_WAIT_S, MachineSiblings, first_on_machine, place, said_once_per_machine
from .errors import DatabaseUnreachableError, IndexBusyError, LibraryBusyError
from .runs import this_host
from .urls import sqlite_file

if TYPE_CHECKING:
    from .records import RunRecord
    from .store import Store

log = logging.getLogger(__name__)

LIBRARY = "library"
RESTART = "restart"  # held by a job that restarts the library with another model (`alone_in_library`)
# Held with RESTART by such a job and by none other: RESTART is also held for a moment by each run passing it
# (`no_restart_under_way`), so only this one tells a job that another one restarts the library.
RESTARTER = "restarter"
RESTARTING = "another torchrun job is re-indexing this library with another model"
RESTART_UNDER_WAY = f"{RESTARTING}, which started it over after this run began; try again when it ends"
RESUME_HINT = "what was committed is kept: run the same command again to resume"
LOCK_LOST = (
    "lost the connection that holds this run's indexing lock (the database server restarted, or the network"
    f" dropped it); {RESUME_HINT}"
)
_FIRSTS_LOOK_S = 0.05  # how often a refused rank looks whether its machine's first was refused too
_PG_CLASS = 0x70656E67  # "peng": the first key of pengi-search's two-key advisory locks


class _Locks(Protocol):
    def take(self, name: str, *, shared: bool, wait: bool) -> bool: ...

    def check(self) -> None: ...

    def release(self) -> None: ...


@contextlib.contextmanager
def indexing_lock(
    store: Store, shard: str | None = None, *, wait: bool = False, index_run: bool = True
) -> Iterator[None]:
    """Hold the library's indexing lock (for shard 'i/n' of a sharded job, when given) inside the block: for an
    index run, or (`index_run` False) for a command beside which none may write (`remove`).

    Raises IndexBusyError when another run holds it (LibraryBusyError: a shard's run finding an unsharded run), or
    waits for it with `wait`.
    """
    locks = _locks_for(store)
    if locks is None:
        yield
        return
    wanted = [(LIBRARY, shard is not None)] + ([] if shard is None else [(f"shard {shard}", False)])
    try:
        for name, shared in wanted:
            holder = functools.partial(_run_holding, store, shard, index_run, shared=shared)
            _take_or_wait(locks, name, shared=shared, wait=wait, holder=holder)
        store.write_guard = locks.check
        yield
    finally:
        store.write_guard = None
        locks.release()


@contextlib.contextmanager
def alone_in_library(store: Store, job_shards: Collection[str], *, doing: str, wait: bool = False) -> Iterator[None]:
    """Within: no run outside this job (whose shards are `job_shards`) indexes the library, for `doing` what every
    run writing to it would have to see (a re-index with another model restarts the whole library under them).

    The shards of a job hold the library's lock shared, as the shards of another job beside it do, so that lock
    cannot tell them apart: each run recorded 'running' under a shard that is not the job's is asked after by its
    shard's lock, which a live run holds (a run whose process died left only its record), and that lock is kept for
    the block. Raises IndexBusyError naming a live one, or waits for it to end with `wait`.

    A run holds its shard's lock before it records itself, so one may be live and not recorded yet: the block also
    holds the RESTART lock, which a shard's run, once recorded, finds free or is refused (`no_restart_under_way`).
    The runs are read again once that lock is held, and one recorded meanwhile is asked after as the others were.
    """
    locks = _locks_for(store)
    if locks is None:
        yield
        return
    held: set[str] = set()  # the shards of other jobs' runs whose locks the block holds
    with contextlib.ExitStack() as holding:
        holding.callback(locks.release)
        while True:
            for run in _outside_job(store, job_shards, held):
                holder = functools.partial(_run_writing, store, run, doing)
                _take_or_wait(locks, f"shard {run.shard}", shared=False, wait=wait, holder=holder)
                held.add(run.shard)
            # never while waiting for a run above: that run may be passing it
            restart = _held_restart(store, doing=doing, wait=wait)
            try:
                recorded_meanwhile = _outside_job(store, job_shards, held)
            except BaseException:
                restart.release()
                raise
            if not recorded_meanwhile:
                break
            restart.release()  # such a run is asked after as the others were, this lock let go meanwhile
        holding.callback(restart.release)
        yield


def no_restart_under_way(store: Store) -> None:
    """For a shard's run once recorded, before it writes: raise IndexBusyError while another job restarts the
    library (`alone_in_library`), which may have looked before this run was recorded. Never waits, even with --wait:
    that job may be waiting for this run's shard."""
    locks = _locks_for(store)
    if locks is None:
        return
    try:
        free = locks.take(RESTART, shared=True, wait=False)
    finally:
        locks.release()
    if not free:
        with said_once_per_machine() if _first_refused_too(store) else contextlib.nullcontext():
            raise IndexBusyError(store.name, RESTART_UNDER_WAY)


def _first_refused_too(store: Store) -> bool:
    """Whether the first process of this machine (torchrun's LOCAL_RANK 0) is refused by the restart too, so that
    it says it for both: every rank of a job checking while another job restarts the library is refused, each at
    its own moment, and the first may have passed before that job took the library (or pass after it ended).

    Told by its run, recorded under its shard by a process of this job on this machine: once that run has ended
    (refused, or failed otherwise, which it says), this one ends saying nothing. Waited for at most
    `SIBLINGS_WAIT_S`: a first still running then passed the check, or has yet to meet it, and this one says it."""
    firsts = _machines_first_shard()
    if firsts is None:
        return True  # the first process, or a run's only one: it speaks
    this_job, host = MachineSiblings.now().pids, this_host()
    deadline = time.monotonic() + SIBLINGS_WAIT_S
    while True:
        if any(run.status != "running" for run in store.shard_runs_by(firsts, host, this_job)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_FIRSTS_LOOK_S)


def _outside_job(store: Store, job_shards: Collection[str], held: Collection[str]) -> list[RunRecord]:
    """The runs recorded running under a shard neither of this job nor held already, one a shard. An unsharded run
    holds the library alone: a job's shards could not have started beside it."""
    runs: dict[str, RunRecord] = {}
    for run in store.running_runs():
        if run.shard is not None and run.shard not in job_shards and run.shard not in held:
            runs.setdefault(run.shard, run)
    return list(runs.values())


def _held_restart(store: Store, *, doing: str, wait: bool) -> _Locks:
    """The RESTART lock, held alone, on locks of its own so that it can be let go apart from the shards'. Another
    job restarting the library holds it for as long as it does so: `doing` is refused beside it, or with `wait`
    says so and waits, as beside a run (told by RESTARTER, which that job holds too). A run holds RESTART for a
    moment only as it passes it (`no_restart_under_way`): waited for, unsaid, even without `wait`."""
    restart = _locks_for(store)
    assert restart is not None  # as for the shards' locks, of the same store
    try:
        holder = functools.partial(_job_restarting, store, doing)
        _take_or_wait(restart, RESTARTER, shared=False, wait=wait, holder=holder)
        restart.take(RESTART, shared=False, wait=True)
    except BaseException:  # a stop while waiting: its connection (PostgreSQL) closed, not left to the pool
        restart.release()
        raise
    return restart


@dataclass(frozen=True)
class _Holder:
    """Another process's hold on a lock that this one wants, as this one says it."""

    busy: str  # who holds it, said on waiting for it: "another indexing run is writing to this library: run 3, ..."
    refusal: IndexBusyError  # raised when this process does not wait for it
    # under torchrun, every process of this machine meets it (another job holds their locks): the first says it
    said_once_per_machine: bool = False


def _take_or_wait(locks: _Locks, name: str, *, shared: bool, wait: bool, holder: Callable[[], _Holder]) -> None:
    """Take lock `name`; when another process holds it, raise `holder()`'s refusal, or with `wait` say who holds it
    and wait for it. `holder` is asked only then: it reads the runs recorded, which a free lock need not."""
    if locks.take(name, shared=shared, wait=False):
        return
    held = holder()
    if not wait:
        with said_once_per_machine() if held.said_once_per_machine else contextlib.nullcontext():
            raise held.refusal
    if not held.said_once_per_machine or first_on_machine():
        log.warning("%s; waiting for it to end", held.busy)
    locks.take(name, shared=shared, wait=True)


def _run_holding(store: Store, shard: str | None, index_run: bool, *, shared: bool) -> _Holder:
    """Who holds the library's lock (`shared`: as this shard's run wants it) or this shard's, for `indexing_lock`."""
    busy = _busy_message(store, shard, index_run)
    refusal = (LibraryBusyError if shared else IndexBusyError)(
        store.name, f"{busy}; wait for it to end, or pass --wait to start when it has"
    )
    # a shard's run only: an unsharded one is no torchrun job's (every rank has its shard)
    by_the_machine = shard is not None and (shared or _firsts_shard_held_too(store, shard))
    return _Holder(busy, refusal, said_once_per_machine=by_the_machine)


def _run_writing(store: Store, run: RunRecord, doing: str) -> _Holder:
    """Another job's `run`, live, holds its shard's lock: for `alone_in_library`, `doing` is refused beside it."""
    busy = f"{_describe(run)}, is indexing this library"
    return _Holder(
        busy, IndexBusyError(store.name, f"cannot {doing} while {busy}; try again when it ends, or pass --wait")
    )


def _job_restarting(store: Store, doing: str) -> _Holder:
    """Another job restarts the library (it holds RESTARTER): for `alone_in_library`, `doing` is refused beside it.
    Only a torchrun job's first rank restarts the library, so one process of the job meets it."""
    refusal = IndexBusyError(store.name, f"cannot {doing} while {RESTARTING}; try again when it ends, or pass --wait")
    return _Holder(RESTARTING, refusal)


def _machines_first_shard() -> str | None:
    """The shard by rank of this machine's first process (torchrun's LOCAL_RANK 0), or None when this process is it,
    or a run's only one. torchrun numbers a machine's processes in a row: its first has this rank less the local
    rank."""
    here = place()
    if here.world_size < 2 or here.local_rank == 0:
        return None
    return f"{here.rank - here.local_rank}/{here.world_size}"


def _firsts_shard_held_too(store: Store, shard: str) -> bool:
    """Whether this shard's lock, held by another run, is one that the first process of this machine (torchrun's
    LOCAL_RANK 0) finds held too, so that it says it for both: another torchrun job of as many ranks holds every
    shard of this one, each rank finding its own held. A shard held alone (`--shard i/n` run by hand) is said by
    the rank that meets it, the first one being free to go on. Read from the runs recorded running, less those of
    this job's processes on this machine (the first may have recorded its own run by now)."""
    firsts = _machines_first_shard()
    if firsts is None:
        return True  # the first process, or a run's only one: it speaks
    here = place()
    if shard != f"{here.rank}/{here.world_size}":  # a --shard given to every rank is the same shard for all of them
        firsts = shard
    this_job, host = set(MachineSiblings.now().pids), this_host()
    return any(not (run.host == host and run.pid in this_job) for run in store.running_runs(firsts))


def _busy_message(store: Store, shard: str | None, index_run: bool) -> str:
    runs = [run for run in store.running_runs() if shard is None or run.shard in (None, shard)]
    if not runs:  # no run recorded yet, or a `remove` holds the library (`cli.library`)
        return "another command is writing to this library (an index run, or a remove)"
    holder = "another indexing run" if index_run else "an indexing run"  # `remove` is none
    return f"{holder} is writing to this library: " + "; ".join(_describe(run) for run in runs)


def _describe(run: RunRecord) -> str:
    shard = f" (shard {run.shard})" if run.shard else ""
    who = f" by process {run.pid} on {run.host}" if run.pid is not None else ""
    return f"run {run.id}{shard}, started {run.started_at:%Y-%m-%d %H:%M:%S} UTC{who}"


def _locks_for(store: Store) -> _Locks | None:
    dialect = store.engine.dialect.name
    if dialect == "postgresql":
        return _AdvisoryLocks(store)
    db_file = sqlite_file(store.engine.url) if dialect == "sqlite" else None
    if db_file is None:
        return None
    try:
        import fcntl  # noqa: F401 (POSIX only)
    except ImportError:
        log.info("no file locks on this system: concurrent indexing runs are not prevented")
        return None
    return _FileLocks(db_file)


class _FileLocks:
    """flock'ed files beside a SQLite database; the kernel drops the locks when the process ends."""

    def __init__(self, db_file: Path) -> None:
        self.db_file = db_file
        self.handles: list[Any] = []

    def take(self, name: str, *, shared: bool, wait: bool) -> bool:
        import fcntl

        suffix = "" if name == LIBRARY else "-" + name.replace("shard ", "shard-").replace("/", "-of-")
        handle = open(self.db_file.with_name(f"{self.db_file.name}.indexing{suffix}.lock"), "a+b")  # noqa: SIM115
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle, mode)
        except BlockingIOError:
            handle.close()
            return False
        except BaseException:
            handle.close()
            raise
        self.handles.append(handle)
        return True

    def check(self) -> None:
        """Nothing to check: the kernel keeps a flock for as long as its file is open."""

    def release(self) -> None:
        for handle in self.handles:
            handle.close()  # closing the file releases its lock
        self.handles.clear()


class _AdvisoryLocks:
    """PostgreSQL session advisory locks on a dedicated connection; the server drops them when it closes."""

    def __init__(self, store: Store) -> None:
        self.where = store.name
        self.connection = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.schema = self.connection.scalar(text("SELECT current_database() || '.' || current_schema()"))
        self.guard = threading.Lock()  # the run's threads commit side by side; a connection serves one at a time

    def take(self, name: str, *, shared: bool, wait: bool) -> bool:
        function = f"pg{'' if wait else '_try'}_advisory_lock{'_shared' if shared else ''}"
        key = zlib.crc32(f"{self.schema}\0{name}".encode())
        key = key - (1 << 32) if key >= 1 << 31 else key  # the second key is a signed 32-bit int
        taken = self.connection.scalar(text(f"SELECT {function}(:cls, :key)"), {"cls": _PG_CLASS, "key": key})
        return wait or bool(taken)

    def check(self) -> None:
        """Raise DatabaseUnreachableError once the locks' session has ended (a server restart, a network cut): the
        server dropped the locks with it, while the run's other connections reconnect unawares."""
        with self.guard:
            try:
                self.connection.execute(text("SELECT 1"))
            except SQLAlchemyError as exc:
                raise DatabaseUnreachableError(self.where, LOCK_LOST) from exc

    def release(self) -> None:
        try:
            self.connection.execute(text("SELECT pg_advisory_unlock_all()"))
        except SQLAlchemyError:
            # The connection was lost (a server restarted, a network cut): its session ended, and its locks with it.
            # Failing here would hide the error that ended the run behind a traceback; the connection is dropped,
            # never put back in the pool.
            self.connection.invalidate()
        finally:
            self.connection.close()

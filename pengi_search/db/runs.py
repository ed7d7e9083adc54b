"""The store's journal of indexing runs: when each started and ended, how, what it did, and which process ran it.

A run is 'running' until it records its end ('finished', 'failed' or 'interrupted' by Ctrl-C or SIGTERM). A process
killed outright (kill -9, power loss) cannot record anything: the next run of the same library, once it holds the
indexing lock (`pengi_search.db.run_lock`), knows that no other process is writing and marks such runs
'interrupted' (`interrupt_stale_runs`), leaving their end time unknown.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from datetime import datetime, timezone

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from .errors import StoreError
from .queries import NO_SYNC
from .records import RUN_STATUSES, RunRecord
from .schema import AudioFileRow, RunRow


def this_host() -> str:
    """This machine's name as its runs record it (`runs.host` holds 255 characters): how a process finds its own."""
    return socket.gethostname()[:255]


class RunJournal:
    """The run methods of `Store` (mixed in; each is one short transaction of the store's `session`)."""

    session: Callable[..., AbstractContextManager[Session]]

    def start_run(self, shard: str | None = None) -> int:
        """Record the start of an indexing run by this process (shard e.g. '2/8'); returns its id."""
        with self.session(write=True) as session:
            run = RunRow(
                started_at=datetime.now(timezone.utc),
                status="running",
                shard=shard,
                host=this_host(),
                pid=os.getpid(),
            )
            session.add(run)
            session.flush()
            return run.id

    def finish_run(
        self,
        run_id: int,
        *,
        status: str = "finished",
        files_seen: int = 0,
        files_indexed: int = 0,
        files_failed: int = 0,
        files_pruned: int = 0,
    ) -> None:
        """Record the end of a run: its status ('finished', 'failed' or 'interrupted') and counts."""
        if status not in RUN_STATUSES[1:]:
            raise StoreError(f"run {run_id}", f"unknown final status {status!r}; use one of {RUN_STATUSES[1:]}")
        with self.session(write=True) as session:
            run = session.get(RunRow, run_id)
            if run is None:
                raise StoreError(f"run {run_id}", "no such indexing run")
            run.finished_at, run.status = datetime.now(timezone.utc), status
            run.files_seen, run.files_indexed = files_seen, files_indexed
            run.files_failed, run.files_pruned = files_failed, files_pruned

    def note_files_seen(self, run_id: int, files_seen: int) -> None:
        """Record, as soon as the run knows it, how many files it found: a run killed outright keeps the count."""
        with self.session(write=True) as session:
            session.execute(
                update(RunRow).where(RunRow.id == run_id).values(files_seen=files_seen), execution_options=NO_SYNC
            )

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """The latest runs, newest first."""
        with self.session() as session:
            rows = session.scalars(select(RunRow).order_by(RunRow.id.desc()).limit(limit))
            return [row.to_record() for row in rows]

    def running_runs(self, shard: str | None = None) -> list[RunRecord]:
        """The runs marked 'running', oldest first: every one, or only those of `shard`."""
        query = select(RunRow).where(RunRow.status == "running")
        if shard is not None:
            query = query.where(RunRow.shard == shard)
        with self.session() as session:
            return [row.to_record() for row in session.scalars(query.order_by(RunRow.id))]

    def shard_runs_by(self, shard: str, host: str, pids: Collection[int]) -> list[RunRecord]:
        """The runs of `shard` recorded by the processes `pids` of `host`, whatever their status, oldest first."""
        query = select(RunRow).where(RunRow.shard == shard, RunRow.host == host, RunRow.pid.in_(list(pids)))
        with self.session() as session:
            return [row.to_record() for row in session.scalars(query.order_by(RunRow.id))]

    def interrupt_stale_runs(self, shard: str | None = None) -> list[int]:
        """Mark as 'interrupted' the 'running' runs whose process is gone; returns their ids.

        Call it holding the indexing lock: an unsharded run holds it alone, so every other 'running' run is dead;
        a shard holds its shard's lock, so the other runs of that shard are. Their end time stays unknown (None);
        each one's counts of files indexed and failed are those of the files it wrote last (their rows name it).
        """
        query = select(RunRow.id).where(RunRow.status == "running")
        if shard is not None:
            query = query.where(RunRow.shard == shard)
        with self.session(write=True) as session:
            ids = list(session.scalars(query.order_by(RunRow.id)))
            if ids:
                interrupted = update(RunRow).where(RunRow.id.in_(ids)).values(status="interrupted")
                session.execute(interrupted, execution_options=NO_SYNC)
                for run_id, indexed, failed in session.execute(_file_counts(ids)):
                    counts = {"files_indexed": indexed, "files_failed": failed}
                    session.execute(
                        update(RunRow).where(RunRow.id == run_id).values(**counts), execution_options=NO_SYNC
                    )
            return ids


def _file_counts(run_ids: list[int]) -> Select:
    """(run id, files indexed, files failed) of the files whose rows these runs wrote last."""
    indexed = func.count().filter(AudioFileRow.status == "indexed")
    failed = func.count().filter(AudioFileRow.status == "error")
    where = AudioFileRow.run_id.in_(run_ids)
    return select(AudioFileRow.run_id, indexed, failed).where(where).group_by(AudioFileRow.run_id)

"""Runs under torchrun for the tests: two processes on this machine's CPUs (gloo), bounded against a hang; and
the environment torchrun gives a process, for a test in this one (`torchrun_rank`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .indexing import kill_session

TORCHRUN_ENV = {"OMP_NUM_THREADS": "1"}
# Bounds of a torchrun run, against a hang: a test fails then instead of holding CI (gloo waits 30 minutes for a
# collective a process never enters). A run of a few steps takes half a minute, two on a loaded machine.
TORCHRUN_S = 240
TRAINER = ("-m", "trainer")


def torchrun_command(*arguments: str, entry: tuple[str, ...] = TRAINER) -> list[str]:
    """`torchrun --standalone --nproc-per-node 2 -m trainer ARGUMENTS` on this machine's CPUs (or another `entry`:
    `("-m", "indexer")`, a script)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return [*command, *entry, *arguments]


def torchrun(
    *arguments: str, cwd: Path | None = None, entry: tuple[str, ...] = TRAINER, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `torchrun_command(ARGUMENTS, entry=entry)` to its end, within `TORCHRUN_S`, with `env` added to the
    environment; its workers too are killed after it."""
    launch, env = torchrun_command(*arguments, entry=entry), {**os.environ, **TORCHRUN_ENV, **(env or {})}
    pipe = subprocess.PIPE
    process = subprocess.Popen(launch, env=env, stdout=pipe, stderr=pipe, text=True, cwd=cwd, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TORCHRUN_S)
    finally:
        kill_session(process)  # torchrun starts each worker in a session of its own: killing it leaves them
    return subprocess.CompletedProcess(launch, process.returncode, stdout, stderr)


def torchrun_worker(torchrun_pid: int, rank: int) -> int:
    """The process id of the worker of `rank` that torchrun (`torchrun_pid`) started."""
    children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split()
    for child in children:
        if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            return int(child)
    raise AssertionError(f"torchrun {torchrun_pid} has no worker of rank {rank} among {children}")


def torchrun_rank(monkeypatch, local_rank: int, on_machine: int | None) -> None:
    """The environment torchrun gives a process of a one-machine run (`on_machine` None: a launcher that does not
    say how many processes it started there)."""
    world = on_machine or local_rank + 1
    for name, value in {"RANK": local_rank, "WORLD_SIZE": world, "LOCAL_RANK": local_rank}.items():
        monkeypatch.setenv(name, str(value))
    if on_machine is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(on_machine))

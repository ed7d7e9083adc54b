"""What torchrun tells each process of a run in its environment, read without torch: the command line reads it
before the training or indexing code loads (seconds), to check the run and say what is wrong with it.

`place()` is the one reader of RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (the indexer's shards and GPUs,
the trainer's process group and GPUs, who speaks before the processes connect). torchrun sets all four; set by
hand, they are read so:
- WORLD_SIZE says the run has several processes: without it this process is the run's only one, whatever RANK or
  LOCAL_RANK say (a stray RANK in a shell makes no process a silent rank 3 of 1);
- RANK without LOCAL_RANK, or LOCAL_RANK without RANK, is a run on one machine, where a process's place on the
  machine is its place in the run; with neither, only a run of one process knows its place (0);
- LOCAL_WORLD_SIZE unset leaves unknown how many processes share the machine.
A value that cannot be torchrun's (not a whole number, a rank past the count) is refused in one line (UsageError).

Before the processes connect, every process of a machine checks the same configuration, options and files, and
meets the same problems: its first process (LOCAL_RANK 0) alone says them (`said_once_per_machine`). Once connected,
`trainer.distributed.ends_here` decides who says a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .choices import device_unavailable
from .errors import UsageError

_VARIABLES = "torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE"


class SaidByTheMachinesFirstProcess(Exception):
    """A failure this process met before the processes connected, which the first process of its machine meets and
    says too: this one ends well, saying nothing (the command line exits 0)."""


@dataclass(frozen=True)
class Place:
    """This process's place in its run; the defaults are a run's only process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int | None = None  # the processes torchrun started on this machine, when it says
    launched: bool = False  # a launcher said how many processes the run has (WORLD_SIZE)


class PlacedProcess:
    """A process that holds its `place` (a dataclass field of the subclass): its rank, world size and local rank are
    read from it, never copied beside it."""

    place: Place

    @property
    def rank(self) -> int:
        return self.place.rank

    @property
    def world_size(self) -> int:
        return self.place.world_size

    @property
    def local_rank(self) -> int:
        return self.place.local_rank


def place(env: Mapping[str, str] = os.environ) -> Place:
    """Where this process is, as torchrun (or a hand-set environment) says; see the module docstring."""
    if "WORLD_SIZE" not in env:
        return Place()
    world = _count(env, "WORLD_SIZE")
    rank, local_rank = _number(env, "RANK"), _number(env, "LOCAL_RANK")
    if rank is None and local_rank is None and world > 1:
        raise UsageError(f"WORLD_SIZE={world}", f"each process needs its RANK or LOCAL_RANK ({_VARIABLES})")
    rank = _first_known(rank, local_rank)
    local_rank = _first_known(local_rank, rank)
    on_machine = _count(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else None
    _below("RANK", rank, "WORLD_SIZE", world)
    if on_machine is not None:
        _below("LOCAL_RANK", local_rank, "LOCAL_WORLD_SIZE", on_machine)
        if on_machine > world:
            raise UsageError(f"LOCAL_WORLD_SIZE={on_machine}", f"more than WORLD_SIZE={world} ({_VARIABLES})")
    return Place(rank, world, local_rank, on_machine, launched=True)


def _number(env: Mapping[str, str], name: str) -> int | None:
    """The whole number >= 0 that `name` holds; None when it is not set."""
    if name not in env:
        return None
    value = env[name]
    if not value.strip().isdigit():
        raise UsageError(f"{name}={value}", f"not a whole number 0, 1, 2, ... ({_VARIABLES})")
    return int(value)


def _count(env: Mapping[str, str], name: str) -> int:
    """The count of processes that `name` holds (set): at least one."""
    count = _number(env, name)
    if not count:
        raise UsageError(f"{name}={env[name]}", f"a count of processes is at least 1 ({_VARIABLES})")
    return count


def _first_known(first: int | None, second: int | None) -> int:
    return first if first is not None else second or 0


def _below(name: str, value: int, limit_name: str, limit: int) -> None:
    if value >= limit:
        raise UsageError(f"{name}={value}", f"not below {limit_name}={limit} ({_VARIABLES})")


def process_count() -> int:
    """How many processes the run has (known before the group is started)."""
    return place().world_size


def first_on_machine() -> bool:
    """Whether this process is the first of its machine (torchrun's LOCAL_RANK 0), or the run's only one."""
    return place().local_rank == 0


@contextlib.contextmanager
def said_once_per_machine() -> Iterator[None]:
    """Within, before the processes connect: a failure is raised as it is by the machine's first process, and as
    `SaidByTheMachinesFirstProcess` by the others, which end well.

    Not with the failure's exit code on every process: torchrun stops the processes still running (SIGTERM) as
    soon as one ends with a code other than 0, so the first process, stopped before it had said anything, would
    say "interrupted" (exit code 143) or nothing at all. The others end well, it ends after them
    (`ends_after_the_machines_others`), and its code is the one torchrun reports, as for a failure found once
    connected. An environment that cannot be torchrun's is said at once, by every process (`place`)."""
    first = first_on_machine()
    try:
        yield
    except Exception as failure:
        if first:
            ends_after_the_machines_others()
            raise
        raise SaidByTheMachinesFirstProcess(str(failure)) from failure


SIBLINGS_WAIT_S = 30.0  # how long the first process of a machine waits at most for the others to end


@functools.cache  # once: the process ends once
def ends_after_the_machines_others() -> None:
    """This process, the first of its machine, says a failure that the machine's other processes meet too and leave
    to it (they end well): it ends after them, at exit. Ended first, it made torchrun stop them (SIGTERM) as they
    were still setting up, and report each as a failure of its own (`exitcode: -15`). Bounded by
    `SIBLINGS_WAIT_S`: one that does not end (it met no failure) is stopped by torchrun then."""
    if others := _machines_other_processes():
        atexit.register(wait_until_ended, others, SIBLINGS_WAIT_S)


def _machines_other_processes() -> list[int] | None:
    """The process ids of this run's other processes on this machine, before they connect: torchrun's other
    workers, its children as this process is; None without torchrun (whose TORCHELASTIC_RUN_ID its workers have)
    or without Linux's /proc, where they cannot be known."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    children: list[int] = []
    try:
        for task in Path(f"/proc/{os.getppid()}/task").iterdir():
            children += map(int, (task / "children").read_text().split())
    except OSError:
        return None
    return [pid for pid in children if pid != os.getpid()]


@dataclass
class MachineSiblings:
    """The run's other processes on this machine (`_machines_other_processes`: none outside torchrun), listed as a
    command starts and again at each look, to tell whether one of them has ended: torchrun, which reaps a process
    as it ends, no longer lists it then.

    torchrun starts a machine's processes one after another, so the first ones may list the others before the last
    have been started: each look lists them again, and one never listed counts as ended only when it is missing
    from a listing made then (`one_ended`)."""

    pids: list[int]  # every one listed so far, ended ones included
    expected: int = 0  # how many there are to be: one that ended (and was reaped) before any listing is missing

    @classmethod
    def now(cls) -> MachineSiblings:
        pids = _machines_other_processes()
        if pids is None:
            return cls([])
        return cls(pids, (place().local_world_size or 1) - 1)

    def one_ended(self) -> bool:
        """Whether one of them has ended: one listed before that no longer runs, or one still missing now."""
        self.pids += [pid for pid in _machines_other_processes() or [] if pid not in self.pids]
        return len(self.pids) < self.expected or not all(map(_running, self.pids))


def wait_until_ended(pids: list[int], timeout_s: float) -> None:
    """Return once every process of `pids` has ended (exited, or exited and not yet reaped), or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now: ours has ended
        return False
    try:  # a process that exited but that its parent (torchrun) has not reaped yet is a zombie: ended
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return True  # no /proc (not Linux): running until its parent reaps it


def gpu_of_process(local_rank: int, on_machine: int | None, instead: str) -> str:
    """`cuda:LOCAL_RANK`, this process's own GPU, for a run that puts one process on each GPU of a machine where
    PyTorch sees one; `instead` names the way to run without them (`--device cpu`).

    Refused (UsageError) where the machine has fewer GPUs than processes: two processes sharing a GPU, NCCL fails
    only at its first collective and the engine only once the model moves, after minutes of set-up. Every process
    of the machine knows how many torchrun started there (`on_machine`, LOCAL_WORLD_SIZE), so each meets the
    refusal and the first says it, once (`said_once_per_machine`): the processes past the GPUs alone would each
    say it, while the first, which has its GPU, went on to wait for them. A launcher that does not say how many
    (`on_machine` None) leaves each process to check its own GPU and say it."""
    needed = local_rank + 1 if on_machine is None else on_machine
    speaker = contextlib.nullcontext() if on_machine is None else said_once_per_machine()
    with speaker:
        if reason := device_unavailable(f"cuda:{needed - 1}"):
            raise UsageError(_processes_named(local_rank, on_machine), f"{reason}: {_fewer_processes(instead)}")
    return f"cuda:{local_rank}"


def _processes_named(local_rank: int, on_machine: int | None) -> str:
    if on_machine is None:
        return f"process {local_rank} of this machine (torchrun's LOCAL_RANK)"
    return f"{on_machine} processes on this machine (torchrun's LOCAL_WORLD_SIZE)"


def _fewer_processes(instead: str) -> str:
    import torch  # imported by `device_unavailable` already

    gpus = torch.cuda.device_count()
    return f"start at most {gpus} per machine, one per GPU (--nproc-per-node {gpus}), or {instead}"

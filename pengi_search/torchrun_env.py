"""What torchrun tells each process of a run in its environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE),
read without torch: the command line reads it before the training or indexing code loads (seconds), to check the run and
say what is wrong with it.

Before the processes connect, every process of a machine checks the same configuration, options and files, and
meets the same problems: its first process (LOCAL_RANK 0) alone says them (`said_once_per_machine`). Once connected,
`trainer.distributed.ends_here` decides who says a failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from .choices import device_unavailable
from .errors import UsageError


class SaidByTheMachinesFirstProcess(Exception):
    """A failure this process met before the processes connected, which the first process of its machine meets and
    says too: this one ends well, saying nothing (the command line exits 0)."""


def process_count() -> int:
    """How many processes the run has: torchrun's WORLD_SIZE, else one (known before the group is started)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's place in the run: torchrun's RANK, else 0 (the run's only process)."""
    return int(env.get("RANK", "0"))


def local_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's place among its machine's: torchrun's LOCAL_RANK. A launcher that sets RANK alone runs one
    machine, where it is the RANK; else 0 (the machine's only process)."""
    return int(env.get("LOCAL_RANK", process_rank(env)))


def local_process_count() -> int | None:
    """How many processes torchrun started on this machine (LOCAL_WORLD_SIZE); None when no launcher said."""
    count = os.environ.get("LOCAL_WORLD_SIZE")
    return None if count is None else int(count)


def first_on_machine() -> bool:
    """Whether this process is the first of its machine (torchrun's LOCAL_RANK 0), or the run's only one."""
    return local_rank() == 0


@contextlib.contextmanager
def said_once_per_machine() -> Iterator[None]:
    """Within, before the processes connect: a failure is raised as it is by the machine's first process, and as
    `SaidByTheMachinesFirstProcess` by the others, which end well.

    Not with the failure's exit code on every process: torchrun stops the processes still running (SIGTERM) as
    soon as one ends with a code other than 0, so the first process, stopped before it had said anything, would
    say "interrupted" (exit code 143) or nothing at all. The others ending well, it ends last and its code is the
    one torchrun reports, as for a failure found once connected."""
    try:
        yield
    except Exception as failure:
        if first_on_machine():
            raise
        raise SaidByTheMachinesFirstProcess(str(failure)) from failure


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

"""Processes of a run: one, or several started by `torchrun` (NCCL on GPUs, gloo on CPUs).

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK (read by `pengi_search.torchrun_env.place`); with WORLD_SIZE > 1 the
process group is initialised from them.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pengi_search.errors import PengiSearchError
from pengi_search.torchrun_env import SIBLINGS_WAIT_S, Place, PlacedProcess, gpu_of_process, place, wait_until_ended


class ProcessLost(PengiSearchError):
    """Another process of the run ended (a failure of its own, which it says; a stop) while this one waited for it
    in a collective."""


@dataclass(frozen=True)
class Processes(PlacedProcess):
    """This process's place in the run (as `place` read it: the one source of its rank) and its device."""

    place: Place
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0 logs, evaluates samples and writes checkpoints."""
        return self.rank == 0


def resolve_device(choice: str, local_rank: int, on_machine: int | None = None) -> torch.device:
    """This process's GPU ("auto" or "cuda", when PyTorch sees one), else the CPU. A machine with more processes
    (`on_machine`, torchrun's LOCAL_WORLD_SIZE) than GPUs is refused now, said once (`gpu_of_process`)."""
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(gpu_of_process(local_rank, on_machine, "set runtime.device to cpu"))


def start_processes(device_choice: str, threads: int | None = None) -> Processes:
    """This process's place in the run, on its device (and in the process group of a run under torchrun), computing
    with `threads` CPU threads (None: PyTorch's default)."""
    use_threads(threads)
    here = place()
    device = resolve_device(device_choice, here.local_rank, here.local_world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if here.world_size > 1 and not dist.is_initialized():
        # The rank as `place` reads it: a hand-set LOCAL_RANK stands for a RANK left out (one machine).
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=here.rank, world_size=here.world_size)
    return Processes(here, device)


def use_threads(threads: int | None) -> None:
    """`runtime.threads`: the CPU threads PyTorch computes with in this process; None keeps its default."""
    if threads is not None:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def process_lost_said(processes: Processes) -> Iterator[None]:
    """Within: a collective that fails because another process of the run ended is said in one line (ProcessLost),
    not as gloo's or NCCL's traceback: torchrun's report, and that process's own line, say why it ended."""
    try:
        yield
    except Exception as failure:
        if not (processes.distributed and _lost_a_process(failure)):
            raise
        reason = "another process of the run ended while this one waited for it (its message or torchrun's says why)"
        raise ProcessLost(f"rank {processes.rank}", reason) from failure


def _lost_a_process(failure: Exception) -> bool:
    """Whether `failure` is a collective's that lost a process: PyTorch's distributed errors (NCCL's), or gloo's
    RuntimeError, which names its transport's source file ("gloo/transport/tcp/pair.cc: Connection closed by
    peer")."""
    return isinstance(failure, dist.DistError) or "gloo/" in str(failure)


def part_processes(processes: Processes) -> list[int]:
    """The processes' last collectives, where every process ends alike (at an end they agreed on): each finishes
    its pending collectives, then the group closes. Returns, on rank 0, the process ids of the run's other processes
    on this machine, which `end_last` waits for (none elsewhere).

    Not for a process that stops alone (a failure of its own, a stop signal during the set-up): the others are at
    another collective then, and would wait on this one's for ever (gloo's timeout is 30 minutes). Such a process
    leaves the group as it is: as it exits its connections close, which ends the others' waits with an error within
    a second or so, and torchrun stops them (SIGTERM, then SIGKILL after its shutdown timeout)."""
    if not (processes.distributed and dist.is_initialized()):
        return []
    gc.collect()  # free whatever still holds the group (a DDP reducer) before the group goes
    siblings = _other_local_pids(processes)
    dist.barrier()  # and let every process finish its pending collectives
    dist.destroy_process_group()
    return siblings if processes.main else []


def end_last(pids: list[int]) -> None:
    """Rank 0 ends last on its machine: torchrun stops the processes still running (SIGTERM) as soon as one ends
    with a code other than 0, and rank 0 does so when some clips could not be used (exit code 3) or the run was
    interrupted (130, 143), the others with 0. Had it ended first, a process that had finished its work would be
    reported as stopped. Bounded: a process kept busy after the run (or one whose end cannot be seen) does not hold
    rank 0 for longer than `SIBLINGS_WAIT_S`."""
    wait_until_ended(pids, SIBLINGS_WAIT_S)


def _other_local_pids(processes: Processes) -> list[int]:
    """The process ids of the run's other processes on this machine (one collective)."""
    here = (socket.gethostname(), os.getpid())
    everyone: list[Any] = [None] * processes.world_size
    dist.all_gather_object(everyone, here)
    return [pid for host, pid in everyone if host == here[0] and pid != here[1]]


def wait_for_all(processes: Processes) -> None:
    """A barrier (no-op for a single process)."""
    if processes.distributed:
        dist.barrier()


def sum_across(processes: Processes, values: list[float]) -> list[float]:
    """Element-wise sum of `values` over every process (one collective)."""
    if not processes.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=processes.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(processes: Processes, value: Any) -> list[Any]:
    """Every process's `value`, in rank order."""
    if not processes.distributed:
        return [value]
    gathered: list[Any] = [None] * processes.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def ends_here(processes: Processes, failure: Exception | None) -> bool:
    """Whether the run ends at this point, where every process calls this with what failed on it (None: nothing);
    raises `failure` where it is to be said (one collective).

    A failure every process met alike (the same configuration and data fail the same way on each) is raised by
    rank 0 alone, and the others end well (True): under torchrun a process ending with a code other than 0 makes
    it stop the rest (SIGTERM), rank 0 too before it says why. A failure that some processes met, or met in other
    words, is raised where it happened, and the processes that met none end well too: the run cannot go on
    without them."""
    if not processes.distributed:
        if failure is not None:
            raise failure
        return False
    said = gather_objects(processes, None if failure is None else (type(failure).__name__, str(failure)))
    if failure is not None and (processes.main or len(set(said)) > 1):
        raise failure
    return any(outcome is not None for outcome in said)


def parameter_digest(parameters: list[torch.nn.Parameter]) -> str:
    """SHA-256 of the trained weights' bytes: equal digests across processes mean bit-identical weights."""
    digest = hashlib.sha256()
    for parameter in parameters:
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()

"""Processes of a run: one, or several started by `torchrun` (NCCL on GPUs, gloo on CPUs).

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 the process group is initialised from them.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0 logs, evaluates samples and writes checkpoints."""
        return self.rank == 0


def resolve_device(choice: str, local_rank: int) -> torch.device:
    """This process's GPU ("auto" or "cuda", when PyTorch sees one), else the CPU."""
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def start_processes(device_choice: str) -> Processes:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return Processes(rank, world_size, local_rank, device)


def stop_processes(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        gc.collect()  # free whatever still holds the group (a DDP reducer) before the group goes
        dist.barrier()  # and let every process finish its pending collectives
        dist.destroy_process_group()


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

"""Splitting one indexing job across processes, GPUs or machines that share a database.

A file belongs to shard i of n when a stable hash of its path is i modulo n, so every process agrees on the split
without talking to the others. Under `torchrun` the shard comes from RANK / WORLD_SIZE and each rank uses the GPU
LOCAL_RANK, as `pengi_search.torchrun_env` reads them (a machine with fewer GPUs than ranks is refused at the start);
the ranks meet once at the end so that rank 0 brings the FAISS files in line with everything written.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from pengi_search import torchrun_env
from pengi_search.choices import Device
from pengi_search.errors import PengiSearchError
from pengi_search.torchrun_env import MachineSiblings, Place, PlacedProcess, gpu_of_process

BARRIER_TIMEOUT = timedelta(days=7)  # ranks wait at the end for the slowest one, however long its share takes
_SIGNAL_CHECK_S = 0.2  # how often a rank waiting for the others looks at its stop signals and its helper thread
_GRACE_S = 5.0  # how long the ranks' meeting may still take once another rank has ended (it met them and left)


class RanksNotMet(PengiSearchError):
    """The ranks' meeting failed: another rank ended (it failed or was stopped) while this one waited for it."""

    def __init__(self, shard: Shard) -> None:
        super().__init__(f"shard {shard}", "another rank of the run ended before the ranks met")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"bad shard {self.index}/{self.count}: need 0 <= i < n")

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """'i/n' (0-based: '0/4' .. '3/4')."""
        index, sep, count = spec.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"bad shard {spec!r}: write it as i/n, e.g. 0/4")
        return cls(int(index), int(count))

    def owns(self, path: str) -> bool:
        digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class Rank(PlacedProcess):
    """This process's place in a `torchrun` job."""

    place: Place
    _group: bool = field(default=False, init=False, repr=False, compare=False)  # we started the process group
    # The run's other processes on this machine, as it starts: in a run, none ends before the ranks meet at its end
    _siblings: MachineSiblings = field(default_factory=MachineSiblings.now, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Rank | None:
        """The rank that torchrun set in the environment (`torchrun_env.place`); None outside torchrun."""
        here = torchrun_env.place(env)
        return cls(here) if here.launched else None

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world_size)

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """Each rank on its own GPU when the device is `auto` or `cuda` (as the trainer places its processes: a
        bare `cuda` is GPU 0, where every rank would meet) and PyTorch sees one; refused (UsageError, said once per
        machine) where the machine has fewer GPUs than ranks (`gpu_of_process`). A GPU named (`cuda:1`) is taken."""
        if requested not in (Device.auto, Device.cuda):
            return requested
        import torch

        if not torch.cuda.is_available():  # `cuda` without a GPU: refused as it is elsewhere (`device_unavailable`)
            return Device.cpu.value if requested == Device.auto else requested
        return gpu_of_process(self.local_rank, self.place.local_world_size, "give --device cpu")

    def barrier(self) -> None:
        """Wait until every rank got here (a CPU 'gloo' group, so it works with or without GPUs).

        gloo waits in C++, where Python runs no signal handler, and a rank that ended early (a failure of its own,
        a stop) leaves the others waiting for it for days (`BARRIER_TIMEOUT`): torchrun's SIGTERM to them went
        unanswered until its SIGKILL 30 s later, their runs left marked `running`, and nothing said. So the wait
        runs in a helper thread while this one waits on it, and a stop signal stops the run here as anywhere."""
        if self.world_size < 2:
            return
        self._group = False  # while the barrier is in flight, the group cannot be closed (`close` would wait on it)
        failed: list[Exception] = []
        waiting = threading.Thread(target=self._meet, args=(failed,), name="pengi-ranks-meet", daemon=True)
        waiting.start()
        while waiting.is_alive():  # the signal's KeyboardInterrupt is raised here, between waits
            waiting.join(_SIGNAL_CHECK_S)
            if waiting.is_alive() and self._sibling_left(waiting):
                raise RanksNotMet(self.shard)
        if failed:
            raise RanksNotMet(self.shard) from failed[0]  # gloo's message: a line of advice on crashed workers

    def _sibling_left(self, waiting: threading.Thread) -> bool:
        """Whether another rank of this machine ended without meeting the others (one that left a failure to the
        machine's first rank, which found none: the library's lock freed meanwhile): it will never come.

        One that ended on meeting them let `waiting` end too, within `_GRACE_S`. The processes are listed again
        after it: one that torchrun had not started yet at the first look is running by then."""
        if not self._siblings.one_ended():
            return False
        waiting.join(_GRACE_S)
        return waiting.is_alive() and self._siblings.one_ended()

    def _meet(self, failed: list[Exception]) -> None:
        """In `barrier`'s helper thread: connect the ranks the first time, then wait for them all. A rank stopped
        meanwhile leaves this thread blocked behind it (a daemon: it does not hold the exit)."""
        import torch.distributed as dist

        try:
            if not dist.is_initialized():
                dist.init_process_group(
                    "gloo", rank=self.place.rank, world_size=self.world_size, timeout=BARRIER_TIMEOUT
                )
            dist.barrier()
        except Exception as exc:  # gloo lost a rank (it ended meanwhile): said by the run, not as a thread's traceback
            failed.append(exc)
        else:
            self._group = True

    def close(self) -> None:
        if self._group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._group = False

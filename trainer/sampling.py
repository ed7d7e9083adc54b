"""Which examples each process reads, in which order: a seeded shuffle per epoch that can start mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (a seeded permutation per epoch, split across processes) that skips the first
    `start` indices of this process's share: resuming mid-epoch reads exactly what the interrupted run would
    have read next, without loading the audio it skips. A single process is `num_replicas=1, rank=0`."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)

"""What torchrun tells each process of a run in its environment (WORLD_SIZE, LOCAL_RANK), read without torch: the
command line reads it before the training code loads (seconds), to check the run and say what is wrong with it.

Before the processes connect, every process of a machine checks the same configuration, options and files, and
meets the same problems: its first process (LOCAL_RANK 0) alone says them (`said_once_per_machine`). Once connected,
`trainer.distributed.ends_here` decides who says a failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


class SaidByTheMachinesFirstProcess(Exception):
    """A failure this process met before the processes connected, which the first process of its machine meets and
    says too: this one ends well, saying nothing (the command line exits 0)."""


def process_count() -> int:
    """How many processes the run has: torchrun's WORLD_SIZE, else one (known before the group is started)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def first_on_machine() -> bool:
    """Whether this process is the first of its machine (torchrun's LOCAL_RANK 0), or the run's only one."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


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

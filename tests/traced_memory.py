"""What Python allocates while a piece of work runs (tracemalloc): how the tests bound a command's memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable


def python_peak(work: Callable[[], object]) -> int:
    """The most memory Python and numpy held at once, beyond what they held before, while `work` ran."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()

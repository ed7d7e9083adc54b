"""The peak resident memory of a stretch of this process, above what it held before (Linux: /proc/self).

The process-wide maximum (`ru_maxrss`) also counts what came before, such as building a model, which can hide what
the measured part takes; the kernel's high-water mark (`VmHWM`) can be reset to the present RSS instead.

glibc keeps freed memory of a size below its (self-raising) mmap threshold for reuse, so the RSS before a stretch may
hold memory the stretch then reuses without growing it: run with `MALLOC_MMAP_THRESHOLD_=65536` in the environment
for tensors to be mapped and unmapped, and the peak to be what the stretch holds at once (in `bench_train.py`,
two runs of the same steps 8-13% apart without it, equal to the MiB with it).
"""

from __future__ import annotations

from pathlib import Path


def status_kib(field: str) -> int:
    """A memory figure of this process (`VmRSS`, `VmHWM`) from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def start_peak() -> int:
    """Reset the high-water mark to the present RSS; returns that RSS (KiB) for `peak_above_mib`."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def peak_above_mib(start: int) -> float:
    """The highest RSS since `start_peak` above the RSS then, in MiB."""
    return (status_kib("VmHWM") - start) / 1024

"""The peak resident memory of a stretch of this process, above what it held before (Linux: /proc/self).

The process-wide maximum (`ru_maxrss`) also counts what came before, such as building a model, which can hide what
the measured part takes; the kernel's high-water mark (`VmHWM`) can be reset to the present RSS instead.
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

"""How amounts are shown to people: a duration or a size in the unit that reads best, a window's time in a file, a
point in time, a count with its noun, and a few items named with how many more.

The library page, `stats`, `doctor` and the trainer's dry run all say how long something is; one rule keeps them
alike (a short library is not "0.00 h", a small set's epoch not "0.0 min"). `describe`, `query`, `similar` and the
web pages all say where a window is in its file; one rule keeps a very short clip's window from reading "0.0-0.0".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta


def duration_text(seconds: float) -> str:
    """1.3 s, 42 s, 9.8 min, 3.2 h: tenths below 10 s, whole seconds below a minute, then minutes, then hours."""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def elapsed_text(seconds: float) -> str:
    """How long something took, as a clock would say it: 7.5 s, 20 min 5 s, 3 h 12 min (an index run of hours is
    not "14523.7 s")."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def size_text(size: int) -> str:
    """512.0 B, 2.0 KiB, 9.8 MiB, 2.2 GiB: the unit that reads best, so a small file is not "0.00 GiB". Binary
    units named as such, as the server's upload limit (`--max-upload-mb`, in MiB) and `model info` say theirs."""
    value, unit = float(size), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def count_text(count: int, noun: str, plural: str | None = None) -> str:
    """`1 process`, `2 processes`, `0 columns`: the count with its noun in the number it takes (`plural` where the
    noun does not take a plain -s), not `2 process(es)` or `1 processes`."""
    return f"{count} {for_count(count, noun, plural or noun + 's')}"


def for_count(count: int, one: str, other: str) -> str:
    """The word that agrees with `count` where the count is written apart from it or not at all: a verb (`1 file
    is`, `2 files are`) or a noun (`the prompt: a`, `the prompts: a, b`)."""
    return one if count == 1 else other


_NAMED = 5  # items a message names before it says how many more


def named(items: Sequence[str]) -> str:
    """The first few items, quoted, and how many more: `'a', 'b' and 3 more`."""
    more = f" and {len(items) - _NAMED} more" if len(items) > _NAMED else ""
    return ", ".join(map(repr, items[:_NAMED])) + more


_SPAN_DECIMALS = 6  # a microsecond: finer than one sample at any rate a file is decoded at


def span_ends(start: float, end: float) -> tuple[str, str]:
    """A window's start and end in seconds, both with the same decimals: one, or as many more as it takes for a
    window that is not empty to read as not empty (a 0.01 s clip's window is 0.00-0.01, not 0.0-0.0)."""
    decimals = 1
    while decimals < _SPAN_DECIMALS and start < end and f"{start:.{decimals}f}" == f"{end:.{decimals}f}":
        decimals += 1
    return f"{start:.{decimals}f}", f"{end:.{decimals}f}"


def span_text(start: float, end: float) -> str:
    """A window as a terminal shows it: `2.5-9.5s`, `0.00-0.01s` (`span_ends`' decimals)."""
    first, last = span_ends(start, end)
    return f"{first}-{last}s"


def moment_text(moment: datetime) -> str:
    """A point in time to the second, with its zone: `2026-01-31 14:05:09 UTC` (the database's times), or
    `2026-01-31 14:05:09 +0200` for another offset, as `stats` and the library page show a run's start and end."""
    zone = "UTC" if moment.utcoffset() == timedelta(0) else moment.strftime("%z")
    return f"{moment:%Y-%m-%d %H:%M:%S} {zone}".rstrip()


def seconds_text(seconds: float) -> str:
    """A file's length as its last window's end reads: `9.5 s`, and a 0.01 s clip `0.01 s`, not `0.0 s`."""
    return f"{span_ends(0.0, seconds)[1]} s"

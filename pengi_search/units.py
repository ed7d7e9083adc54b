"""How amounts are shown to people: a duration in the unit that reads best.

The library page, `stats`, `doctor` and the trainer's dry run all say how long something is; one rule keeps them
alike (a short library is not "0.00 h", a small set's epoch not "0.0 min").
"""

from __future__ import annotations


def duration_text(seconds: float) -> str:
    """1.3 s, 42 s, 9.8 min, 3.2 h: tenths below 10 s, whole seconds below a minute, then minutes, then hours."""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

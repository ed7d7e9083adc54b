"""How every progress bar says how far it is and how fast it goes: a count and a rate in one unit, named.

A bar names what it counts, and its rate is of the same thing, so that no count reads as another's: `120/400
windows  2.6 windows/s`, `7 clips  4.1 clips/s` (no total known yet), `120/1000 steps  1.6 steps/s`. `CountColumn`
draws that column from a task's `unit` and `rate` fields, `Rate` keeps the mean rate over a pass, and
`count_and_rate` writes the text. The commands (`cli.progress_bars`) and the trainer, which does not import the
command line, draw their bars with it.
"""

from __future__ import annotations

import time

from rich.progress import ProgressColumn, Task
from rich.table import Column
from rich.text import Text


def unwrapped() -> Column:
    """A bar's text column that stays on its line: cut with an ellipsis where the terminal is too narrow, never
    folded below itself (which turns each bar into a column of words)."""
    return Column(no_wrap=True, overflow="ellipsis")


class CountColumn(ProgressColumn):
    """A task's count and rate, in the unit its `unit` field names: `120/400 windows  2.6 windows/s`. The rate is
    the task's `rate` field (per second; None: none yet), kept by whoever advances the task, since each bar
    measures its own (since its pass began, or over the trainer's last steps). It never wraps (`unwrapped`)."""

    def __init__(self) -> None:
        super().__init__(table_column=unwrapped())

    def render(self, task: Task) -> Text:
        return Text(count_and_rate(task.completed, task.total, task.fields["unit"], task.fields.get("rate")))


def count_and_rate(done: float, total: float | None, unit: str, rate: float | None) -> str:
    """`7/36 files  0.45 files/s`; `7 clips` while the total is not known, and without a rate until there is one."""
    count = f"{done:.0f}" if total is None else f"{done:.0f}/{total:.0f}"
    return f"{count} {unit}" if rate is None else f"{count} {unit}  {per_second(rate)} {unit}/s"


def per_second(rate: float) -> str:
    """A rate as bars show it: one decimal, two below 1 (a slow rate reads 0.45, not 0.5 or 0.0)."""
    return f"{rate:.1f}" if rate >= 1 else f"{rate:.2f}"


class Rate:
    """Things done per second since the clock started (`restart`): the mean over a pass, as a bar shows it."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def restart(self) -> None:
        self.started = time.monotonic()

    def of(self, done: float) -> float | None:
        """`done` things per second since the start; None before any is done (no rate to show yet)."""
        return done / max(time.monotonic() - self.started, 1e-9) if done else None

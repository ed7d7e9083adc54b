"""When a run stops early: Ctrl-C or SIGTERM (after the current step, with a checkpoint and a model) and early
stopping on the validation metric (the best evaluation so far is kept, `evaluation.patience` bounds the wait for a
better one).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

from pengi_search.stop_signals import STOP_SIGNALS, note_stop_signal, on_stop_signals

LOWER_IS_BETTER = frozenset({"val_loss"})


class RunInterrupted(KeyboardInterrupt):
    """The processes stopped the run after a step on a stop signal, its checkpoint and model written: `kept` says
    what the run keeps and how to go on, as an interrupted `index` run does (the command exits with 130 or 143)."""

    def __init__(self, kept: str) -> None:
        super().__init__(kept)
        self.kept = kept


class InterruptRequest:
    """Within `with`: the first stop signal (Ctrl-C's SIGINT, or the SIGTERM of `kill`, a scheduler's preemption or
    torchrun) sets `requested`, so the loop stops after the step it is in; a second one interrupts at once, unless
    `once` (a process of several under torchrun, see `__init__`). Made with `held=False`, it interrupts at once
    until `hold` (a run's set-up, which no loop watches). The signal is noted (`pengi_search.stop_signals`): the
    command's exit code says which it was. Outside the main thread (where signals cannot be caught) it does
    nothing.

    Under torchrun the processes stop together: `votes` and `agree` share, through one collective, whether any was
    asked to stop and by which signal, and every process decides from what they shared alone."""

    def __init__(self, *, once: bool = False, held: bool = True) -> None:
        # `once`: a repeated signal is the same request. A terminal's Ctrl-C reaches each process of a torchrun run
        # twice, from the terminal and forwarded by torchrun, and a process interrupted at once would leave the others
        # waiting in a collective, the checkpoint unwritten; torchrun itself ends processes that outstay its shutdown
        # timeout (SIGKILL).
        self.requested = False
        self.signal: int | None = None  # the first stop signal, sent to this process or to another of the run
        self.held = held
        self._once = once
        self._handlers = contextlib.ExitStack()

    def __enter__(self) -> InterruptRequest:
        self._handlers.enter_context(on_stop_signals(self._handle))
        return self

    def __exit__(self, *exc: object) -> None:
        self._handlers.close()

    def hold(self) -> None:
        """From now on a stop signal is a request (the loop's), no longer an interrupt."""
        self.held = True

    def _handle(self, number: int) -> None:
        if not self.held or (self.requested and not self._once):
            raise KeyboardInterrupt
        self.requested = True
        if self.signal is None:
            self.signal = number

    def votes(self) -> list[float]:
        """What this process says to the others: whether it was asked to stop, then by which of `STOP_SIGNALS`."""
        return [float(self.requested), *(float(self.signal == number) for number in STOP_SIGNALS)]

    def agree(self, summed: list[float]) -> bool:
        """Whether the run stops, from every process's `votes` summed: when any was asked to. A process that no
        signal reached takes the one another got (SIGINT first, when they got both), so that the process that says
        the run was interrupted exits with that signal's code.

        From the sum alone, the same on every process: a signal that came after this process voted (as it waited
        in the collective for the others, where its handler runs only once the collective returns) is not in the
        others' sum, and stopping on it here alone would send this process to the wrap-up's collectives while the
        others go on to the next step's. It is in this process's next vote."""
        requested, *by_signal = summed
        sent = [number for number, count in zip(STOP_SIGNALS, by_signal, strict=True) if count]
        if sent and self.signal is None:
            self.signal = sent[0]
            note_stop_signal(sent[0])
        return requested > 0


@dataclass
class BestTracker:
    """The best value of one metric over the evaluations, and how many evaluations have passed since."""

    metric: str
    patience: int | None = None
    best: float | None = None
    best_step: int | None = None
    since_best: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.metric in LOWER_IS_BETTER else value > self.best

    def update(self, step: int, value: float | None) -> bool:
        """Record an evaluation; True when it is the new best."""
        if value is None or math.isnan(value):
            return False
        self.history.append((step, value))
        if self.better(value):
            self.best, self.best_step, self.since_best = value, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def state(self) -> dict[str, float | int | None]:
        return {"best": self.best, "best_step": self.best_step, "since_best": self.since_best}

    def restore(self, state: dict[str, float | int | None]) -> None:
        self.best = state.get("best")
        best_step = state.get("best_step")
        self.best_step = int(best_step) if best_step is not None else None
        self.since_best = int(state.get("since_best") or 0)

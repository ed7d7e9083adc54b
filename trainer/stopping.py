"""When a run stops early: Ctrl-C or SIGTERM (after the current step, with a checkpoint and a model) and early
stopping on the validation metric (the best evaluation so far is kept, ties broken by the validation loss;
`evaluation.patience` bounds the wait for a better one).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

from pengi_search.stop_signals import STOP_SIGNALS, note_stop_signal, on_stop_signals
from pengi_search.ties import TIE_TOLERANCE
from pengi_search.units import for_count

LOWER_IS_BETTER = frozenset({"val_loss"})


class RunInterrupted(KeyboardInterrupt):
    """A stop signal stopped the run where it keeps its work: after a step (the processes agree on it), its
    checkpoint and model written, or while it encoded its clips, the encodings made written (`trainer.features`).
    `kept` says what the run keeps and how to go on, as an interrupted `index` run does (the command exits with
    130 or 143)."""

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
    """The best evaluation so far and how many evaluations have passed since. Best is the better `metric`; on a
    tie (within `TIE_TOLERANCE`: a flat accuracy, 0.0 at every evaluation of a run that has not yet learnt its
    labels) the lower validation loss, which still tells a model that learns from one that does not; on a tie in
    both, the earlier evaluation, so that an evaluation that is no better in any way does not reset the patience.
    `rule` says which of these chose the best one."""

    metric: str
    patience: int | None = None
    best: float | None = None
    best_step: int | None = None
    best_loss: float | None = None  # the best evaluation's validation loss
    tied: list[tuple[int, float | None]] = field(default_factory=list)  # (step, val loss) of evaluations whose
    # metric ties the best one's, which the loss or the step ranked below it
    since_best: int = 0

    def update(self, step: int, value: float | None, loss: float | None = None) -> bool:
        """Record an evaluation of `metric` `value` and validation `loss` at `step`; True when it is the new best."""
        if value is None or math.isnan(value):
            return False
        if self.best is None or self._better(value):
            self.best, self.best_step, self.best_loss, self.tied, self.since_best = value, step, loss, [], 0
            return True
        if not _tied(value, self.best):
            self.since_best += 1
            return False
        if _lower(loss, self.best_loss):  # the metric ties: the model that fits the validation set better wins
            assert self.best_step is not None  # set with `best`
            self.tied = [*self.tied, (self.best_step, self.best_loss)]
            self.best, self.best_step, self.best_loss, self.since_best = value, step, loss, 0
            return True
        self.tied = [*self.tied, (step, loss)]
        self.since_best += 1
        return False

    def _better(self, value: float) -> bool:
        assert self.best is not None
        if self.metric in LOWER_IS_BETTER:  # the validation loss itself: no tie to break
            return value < self.best
        return value > self.best and not _tied(value, self.best)

    @property
    def rule(self) -> str | None:
        """What chose the best evaluation, as the run's log says it: the metric, else (its value tied with other
        evaluations') the lower validation loss, else (that tied too) the earlier step. None before any."""
        if self.best_step is None:
            return None
        if not self.tied:
            return self.metric
        steps = for_count(len(self.tied), "step ", "steps ") + ", ".join(str(step) for step, _ in self._tied_in_order)
        if all(_lower(self.best_loss, loss) for _, loss in self.tied):
            return f"lower val_loss ({self.metric} tied with {steps})"
        return f"earlier step ({self.metric} and val_loss tied with {steps})"

    @property
    def _tied_in_order(self) -> list[tuple[int, float | None]]:
        return sorted(self.tied, key=lambda pair: pair[0])

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def state(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "best_val_loss": self.best_loss,
            "tied": [list(pair) for pair in self._tied_in_order],
            "rule": self.rule,
            "since_best": self.since_best,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """The state a checkpoint kept (`state`); one written before ties were broken by the loss has no loss and
        no ties, and breaks later ties as if its best evaluation's loss were unknown (it then keeps its best)."""
        self.best = state.get("best")
        best_step = state.get("best_step")
        self.best_step = int(best_step) if best_step is not None else None
        self.best_loss = state.get("best_val_loss")
        self.tied = [(int(step), loss) for step, loss in state.get("tied") or ()]
        self.since_best = int(state.get("since_best") or 0)


def _tied(a: float, b: float) -> bool:
    return abs(a - b) <= TIE_TOLERANCE


def _lower(loss: float | None, than: float | None) -> bool:
    """Whether `loss` is lower than `than` beyond a tie; an unknown loss is lower than none and none is lower than
    it (the metric's tie then stands, and the earlier evaluation is kept)."""
    return loss is not None and than is not None and loss < than - TIE_TOLERANCE

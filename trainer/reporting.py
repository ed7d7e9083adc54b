"""What a run reports (rank 0 only): metrics as JSON lines, a PNG of their curves, a Rich progress bar of steps
with steps/s, samples/s and loss, and the clips it goes on without; and what each process adds up between two
logs."""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pengi_search.consoles import is_watched, make_console
from pengi_search.messages import print_skipped
from pengi_search.paths import as_typed
from pengi_search.progress import CountColumn, per_second

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
RATE_WINDOW_STEPS = 50
SHOWN = ("val_loss", "accuracy", "loglik_accuracy", "loglik_top_k")  # what an evaluation prints of its record


class Interval:
    """What the steps since the last log add up to on this process."""

    def __init__(self) -> None:
        self.nll = self.tokens = self.samples = self.skipped = 0.0
        self.grad_norm = math.nan
        self.rates: dict[str, float] = {"lr": math.nan}  # `logged_rates`


class RateWindow:
    """Samples per second of wall-clock time over the last `RATE_WINDOW_STEPS` steps, data loading included.

    The clock runs from the end of one step to the end of the next; `pause` (evaluation, checkpoints) stops it,
    and the DataLoader's read-ahead during a pause is spread over the window rather than making one step look fast.
    """

    def __init__(self, steps: int = RATE_WINDOW_STEPS) -> None:
        self._window: deque[tuple[int, float]] = deque(maxlen=steps)
        self._last = time.perf_counter()

    def step(self, samples: int) -> None:
        now = time.perf_counter()
        self._window.append((samples, now - self._last))
        self._last = now

    def restart_clock(self) -> None:
        """After a pause: the time since the last step was not spent training."""
        self._last = time.perf_counter()

    @property
    def rate(self) -> float | None:
        seconds = sum(duration for _, duration in self._window)
        return sum(samples for samples, _ in self._window) / seconds if seconds > 0 else None

    @property
    def steps_rate(self) -> float | None:
        """Steps per second over the same window, for the progress bar, which counts steps."""
        seconds = sum(duration for _, duration in self._window)
        return len(self._window) / seconds if seconds > 0 else None


class MetricsLog:
    """Append-only JSONL: one record per event ("train", "eval", "samples", "checkpoint", "end")."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"event": event, **fields}, ensure_ascii=False) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume: forget what the interrupted run logged after its checkpoint, so no step appears twice."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if _step(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def report_evaluation(
    metrics: MetricsLog,
    progress: TrainingProgress,
    step: int,
    record: dict[str, Any] | None,
    samples: list[dict[str, Any]] | None,
) -> None:
    """What an evaluation logs and prints: its sample generations (None: none made here), then its `record` (None:
    the run has no validation set, so nothing to record)."""
    if samples is not None:
        metrics.write("samples", step=step, samples=samples)
        for sample in samples:
            shown = f"{sample['prompt']!r} -> {sample['generated']!r}"
            progress.print(f"  {shown} (reference {sample['answer']!r})")
    if record is not None:
        metrics.write("eval", step=step, **record)
        shown = ", ".join(f"{key.replace('_', ' ')} {record[key]:.4f}" for key in SHOWN if key in record)
        progress.print(f"step {step}: {shown}")


def write_plot(metrics: Path, out: Path) -> Path | None:
    """Training loss and the validation curves (loss, accuracies) against steps, as a PNG; None without
    matplotlib (the run warns and goes on: the numbers are in the JSONL)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # headless: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [r for r in read_metrics(metrics, "train") if r.get("loss") is not None]
    evals = read_metrics(metrics, "eval")
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(11, 4))
    losses.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss")
    losses.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation loss")
    losses.set_xlabel("step")
    losses.set_ylabel("loss per answer token")
    losses.legend()
    for key in ("accuracy", "loglik_accuracy", "loglik_top_k"):
        points = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
        if points:
            scores.plot(*zip(*points, strict=True), "o-", label=key.replace("_", " "))
    scores.set_xlabel("step")
    scores.set_ylabel("validation")
    scores.set_ylim(0, 1)
    if scores.get_legend_handles_labels()[0]:
        scores.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def read_metrics(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [record for record in records if event is None or record["event"] == event]


def _step(line: str) -> float:
    try:
        return json.loads(line).get("step", -1)
    except json.JSONDecodeError:  # a line cut short by the crash
        return math.inf


class TrainingProgress:
    """A progress bar over optimizer steps (`120/1000 steps  1.6 steps/s`, then samples/s and the loss); a no-op when
    quiet or not on rank 0. The bar is drawn only where a person watches (`consoles.is_watched`): a log that
    FORCE_COLOR colours would get its frames. The lines printed above it (`print`) go out wherever stderr goes."""

    def __init__(self, total: int, done: int, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        console = console or make_console(stderr=True)
        self._progress = Progress(
            TextColumn("training"),
            BarColumn(),
            CountColumn(),
            TextColumn(" {task.fields[samples]}  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not (enabled and is_watched(console)),
        )
        fields = {"unit": "steps", "rate": None, "samples": "- samples/s", "loss": "-"}
        self._task = self._progress.add_task("training", total=total, completed=done, **fields)
        self._total = total
        self._losses: list[tuple[int, float]] = []  # (step, loss) of each log: the first and last are summed up

    def __enter__(self) -> TrainingProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, step: int, rate: RateWindow | None = None, loss: float | None = None) -> None:
        fields: dict[str, object] = {}
        if rate is not None and rate.rate is not None:
            fields["rate"] = rate.steps_rate
            fields["samples"] = f"{per_second(rate.rate)} samples/s"
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        self._progress.update(self._task, completed=step, **fields)

    def logged(self, step: int, rate: RateWindow, loss: float | None) -> None:
        """A step that logs its `loss` (None: every clip of its interval failed to load): shown on the bar, or in a
        log (no bar drawn) on a line of its own; kept for the `summary`."""
        self.advance(step, rate, loss)
        if loss is not None:
            self._losses.append((step, loss))
        if self._progress.disable:
            self._log_line(step, rate, loss)

    def _log_line(self, step: int, rate: RateWindow, loss: float | None) -> None:
        """What the bar shows, as a line of a log: `step 20/60: loss 4.3394, 5.2 samples/s`."""
        shown = [f"loss {loss:.4f}"] if loss is not None else []  # None: every clip of the steps failed to load
        if rate.rate is not None:
            shown.append(f"{per_second(rate.rate)} samples/s")
        self.print(f"step {step}/{self._total}: {', '.join(shown)}")

    def summary(self) -> None:
        """At the run's end: how its training loss went, from the first log to the last (of this session)."""
        if not self._losses:
            return
        (first, start), (last, end) = self._losses[0], self._losses[-1]
        if first == last:  # one log (a short run, a resume's last steps): its loss once, not as a pair of itself
            self.print(f"training loss {end:.4f} at step {last}")
        else:
            self.print(f"training loss {start:.4f} at step {first}, {end:.4f} at step {last}")

    def print(self, message: str) -> None:
        """A line above the bar, as written: a generated answer may hold brackets (no markup), and a log read
        later keeps each message on one line (no wrapping at the 80 columns Rich assumes off a terminal)."""
        if self.enabled:
            self._progress.console.print(message, highlight=False, markup=False, soft_wrap=True)


class SkippedClips:
    """The clips whose audio a run could not use, each said once as every command says it (`skipped PATH:
    reason`, the path as typed here), however many rows, views, epochs and evaluations meet it.

    Clips fail where their audio is read: in DataLoader workers and on every process of a distributed run, so
    each process `note`s what its batches skipped and `say` (called by every process at the same points) gathers
    the notes to rank 0, which alone prints. Every process learns what was said, so all agree on `any`.
    """

    def __init__(self, console: Console | None) -> None:
        self.console = console  # None: another process prints (a rank other than 0)
        self.pending: list[tuple[str, str]] = []  # noted here since the last `say`
        self.said: set[tuple[str, str]] = set()

    def note(self, clips: Iterable[tuple[Path, str]]) -> None:
        self.pending += [(str(path), reason) for path, reason in clips]

    def take(self) -> list[tuple[str, str]]:
        """This process's notes since the last call, for `say` to gather."""
        pending, self.pending = self.pending, []
        return pending

    def say(self, gathered: Iterable[list[tuple[str, str]]]) -> None:
        """Print the gathered notes of every process (`take`'s, in rank order) not said before."""
        for notes in gathered:
            for path, reason in notes:
                if (path, reason) in self.said:
                    continue
                self.said.add((path, reason))
                if self.console is not None:
                    print_skipped(self.console, str(as_typed(path)), reason)

    @property
    def any(self) -> bool:
        return bool(self.said)

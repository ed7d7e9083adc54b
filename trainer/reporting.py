"""What a run reports (rank 0 only): metrics as JSON lines, and a Rich progress bar with samples/s and loss."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

METRICS_FILE = "metrics.jsonl"


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


def read_metrics(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [record for record in records if event is None or record["event"] == event]


def _step(line: str) -> float:
    try:
        return json.loads(line).get("step", -1)
    except json.JSONDecodeError:  # a line cut short by the crash
        return math.inf


class TrainingProgress:
    """A progress bar over optimizer steps; a no-op when quiet or not on rank 0."""

    def __init__(self, total: int, done: int, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} samples/s  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task("training", total=total, completed=done, rate="-", loss="-")

    def __enter__(self) -> TrainingProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, step: int, samples_per_s: float | None = None, loss: float | None = None) -> None:
        fields: dict[str, str] = {}
        if samples_per_s is not None:
            fields["rate"] = f"{samples_per_s:.1f}"
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        self._progress.update(self._task, completed=step, **fields)

    def print(self, message: str) -> None:
        if self.enabled:
            self._progress.console.print(message, highlight=False)

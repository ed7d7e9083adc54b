"""What a resumed run continues: the run its checkpoint recorded, not whatever the configuration says today.

Every checkpoint keeps the resolved configuration of its run (the file with the run's `--set` overrides applied,
`TrainConfig.to_dict`). A resume is given a configuration again, and one edited since, or given without the
overrides the run was started with, would quietly make another run of it: a recipe's `epochs: 1000` in place of
the `--set optimization.max_steps=6` the run was started with trains on for hours, its learning-rate decay planned
over another length. So the settings that define a run (`RUN_SETTINGS`) are the run's: a resume given others is
refused (exit code 2, before any set-up), naming them and the `--set` that resumes the run as it was. The one
change accepted is a new length given on the command line (`--set optimization.max_steps=N`, or `epochs`): that is
how a run is trained on, and it is said. Everything else (logging, evaluation, checkpoints, workers, the time
budget, patience) may change freely.

A run given in epochs has a length in steps that the data decides: an epoch is the training manifest's rows split
across the processes. A resume with more or fewer rows, or processes, would plan the learning-rate decay over
another number of steps while every setting reads the same; so a length in steps other than the run's is refused
like a changed length, with the `--set` that keeps the run's steps and the one that trains its epochs anew.

`train` and its dry run both ask here, so that they plan the same resume in the same words.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pengi_search.paths import as_typed
from trainer.config import ConfigError, OptimizationSection, TrainConfig
from trainer.data import read_manifest
from trainer.state import Position, load_checkpoint

LENGTH = ("optimization.max_steps", "optimization.epochs")
# The run's length, its learning-rate schedule (the optimizer keeps the rates and decay it began with), and what
# each step reads, in which order: a checkpoint resumes exactly only under these.
RUN_SETTINGS = (
    *LENGTH,
    "optimization.warmup_steps",
    "optimization.lr",
    "optimization.part_lr",
    "optimization.weight_decay",
    "optimization.grad_accumulation",
    "data.batch_size",
    "seed",
    # Mixed precision: its gradient scaler's state (fp16) and the rounding every step took are the run's.
    "runtime.precision",
)


@dataclass(frozen=True)
class RunRecord:
    """What a checkpoint says of its run: the configuration it ran under and where it stopped."""

    checkpoint: Path
    config: dict[str, Any]  # `TrainConfig.to_dict` of the run, its overrides applied
    position: Position
    # The whole checkpoint, its tensors mapped: the resumed run loads its states from here, without a second read.
    payload: dict[str, Any]

    @property
    def total_steps(self) -> int | None:
        """The run's length in steps (None: a checkpoint from before it was recorded)."""
        return self.payload.get("total_steps")


def read_run_record(checkpoint: Path) -> RunRecord:
    """The run a checkpoint belongs to, its weights mapped, not loaded: a large model's take seconds to read, and
    the set-up that follows needs the memory (they are read when the resumed run loads them)."""
    payload = load_checkpoint(checkpoint, mmap=True)
    return RunRecord(checkpoint, payload["config"], Position(**payload["position"]), payload)


def check_resume(
    config: TrainConfig, record: RunRecord, given: Collection[str], source: Path | str, processes: int
) -> str | None:
    """Refuse (`ConfigError`, naming each setting) a `config` that is not `record`'s run in `RUN_SETTINGS`, or in
    its length in steps on `processes`, unless it differs only in length and the new length is among the keys
    `given` on the command line; then the line that says so. None: the same run."""
    now = config.to_dict()
    changed = changed_settings(record.config, now)
    # Epochs count every row of the training manifest (a row whose audio fails keeps its place), as the sampler does.
    rows = len(read_manifest(config.data.train)) if config.optimization.epochs else 0
    total, was = config.total_steps(config.steps_per_epoch(rows, processes)), record.total_steps
    if not changed and was in (None, total):
        return None
    new_length = _length_key(now)
    if set(changed) <= set(LENGTH) and new_length in given:
        decay = (
            f"still {total} steps, the same decay"
            if total == was
            else "the learning rate now decays over the new length"
        )
        return (
            f"the run's length changes to {_length(now, total)} (it was {_length(record.config, was)}), as --set "
            f"asks: {decay}"
        )
    if not changed:
        raise ConfigError(source, _steps_changed(record, total, rows, processes))
    differences = ", ".join(f"{key} {_yaml(value)} (the run's: {_yaml(run)})" for key, (run, value) in changed.items())
    as_it_was = " ".join(_set_option(key, run) for key, (run, _) in changed.items())
    reason = (
        f"differs from the run it resumes ({as_typed(record.checkpoint)}): {differences}; resume it as it was with "
        f"{as_it_was}"
    )
    if set(changed) <= set(LENGTH):
        longer = _set_option(new_length, _setting(now, new_length))
        raise ConfigError(source, f"{reason}, or train it on to this length with {longer}")
    raise ConfigError(source, f"{reason}; of these, only the length can change on resume, given with --set")


def _steps_changed(record: RunRecord, total: int, rows: int, processes: int) -> str:
    """Why the run's epochs make another number of steps now (`total`), and the `--set` that gives either length."""
    run_rows, run_processes = record.payload.get("train_examples"), len(record.payload["rng"])
    causes = []
    if rows != run_rows:
        causes.append(f"the training manifest has {rows} rows (the run's: {run_rows})")
    if processes != run_processes:
        causes.append(f"{processes} processes train it (the run's: {run_processes})")
    because = f", as {' and '.join(causes)}" if causes else ""
    epochs = _setting(record.config, LENGTH[1])
    keep = f"{_set_option(LENGTH[0], record.total_steps)} {_set_option(LENGTH[1], None)}"
    return (
        f"differs from the run it resumes ({as_typed(record.checkpoint)}) in its length: optimization.epochs "
        f"{epochs} make {total} steps now, the run's {record.total_steps}{because}; keep the run's "
        f"{record.total_steps} steps with {keep}, or train it on to {total} with {_set_option(LENGTH[1], epochs)}"
    )


def changed_settings(run: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The `RUN_SETTINGS` that the configuration `now` sets otherwise than the `run`: key -> (the run's, now)."""
    pairs = {key: (_setting(run, key), _setting(now, key)) for key in RUN_SETTINGS}
    return {key: (was, value) for key, (was, value) in pairs.items() if _comparable(was) != _comparable(value)}


def resume_point(position: Position, total: int, steps_per_epoch: int, optimization: OptimizationSection) -> str:
    """Where a resumed run starts and where it stops: `at step 6 of 2000 (epoch 3 of 1000)`."""
    # A checkpoint at an epoch's last step has not yet counted the epoch's end (the loop finds it on the next step).
    ended = position.batches_in_epoch >= steps_per_epoch * optimization.grad_accumulation
    epoch = position.epoch + (2 if ended else 1)
    epochs = optimization.epochs
    of = f" of {epochs}" if epochs else f", {steps_per_epoch} steps an epoch"
    return f"at step {position.step} of {total} (epoch {epoch}{of})"


def finished_by_length(step: int, total: int, optimization: OptimizationSection) -> tuple[str, str] | None:
    """Why a run at `step` of `total` has nothing left to train, and how to train it on; None while it has."""
    if step < total:
        return None
    if optimization.max_steps:
        return (
            f"at step {step} (optimization.max_steps {optimization.max_steps})",
            "resume with a higher optimization.max_steps, given with --set",
        )
    return (
        f"at step {step} (optimization.epochs {optimization.epochs}: {total} steps)",
        "resume with more optimization.epochs (or an optimization.max_steps), given with --set",
    )


def _setting(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _comparable(value: Any) -> Any:
    """`part_lr` rates may be written as text (YAML reads 1e-4 so) or numbers: compared as numbers."""
    if isinstance(value, dict):
        return {key: float(rate) for key, rate in value.items()}
    return value


def _length_key(config: dict[str, Any]) -> str:
    """The setting that gives a run its length: max_steps when set, else epochs (a configuration holds one)."""
    return LENGTH[0] if _setting(config, LENGTH[0]) is not None else LENGTH[1]


def _length(config: dict[str, Any], steps: int | None) -> str:
    """`optimization.max_steps 6`, or `optimization.epochs 3, 6 steps` (its steps when known)."""
    key = _length_key(config)
    in_steps = f", {steps} steps" if key == LENGTH[1] and steps is not None else ""
    return f"{key} {_setting(config, key)}{in_steps}"


def _yaml(value: Any) -> str:
    """A setting as `--set` reads it back (YAML: null, numbers, a {part: rate} mapping; a word as it is)."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def _set_option(key: str, value: Any) -> str:
    return f"--set {shlex.quote(f'{key}={_yaml(value)}')}"

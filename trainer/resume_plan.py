"""What a resumed run continues: the run its checkpoint recorded, not whatever the configuration says today.

Every checkpoint keeps the resolved configuration of its run (the file with the run's `--set` overrides applied,
`TrainConfig.to_dict`). A resume is given a configuration again, and one edited since, or given without the
overrides the run was started with, would quietly make another run of it: a recipe's `epochs: 1000` in place of
the `--set optimization.max_steps=6` the run was started with trains on for hours, its learning-rate decay planned
over another length. So the settings that define a run (`RUN_SETTINGS`) are the run's: a resume given others is
refused (exit code 2, before any set-up), naming them and the `--set` that resumes the run as it was. The one
change accepted is a new length given on the command line (`--set optimization.max_steps=N`, or `epochs`): that is
how a run is trained on, and it is said. Logging, evaluation, checkpoints, workers, the time budget, clipping, the
device and where the manifests are (their contents are checked by sha256) may change freely (`FREE_SETTINGS`). The
rest (the model, freezing, augmentation, answer length...) may change too, but is said in a warning (`said_changes`):
the run then goes on otherwise than it was started, and a model of other sizes does not fit its checkpoint, which
the error then explains by the settings that differ.

A run given in epochs has a length in steps that the data decides: an epoch is the training set's rows split across
the processes. A resume with more or fewer rows, or processes, would plan the learning-rate decay over another
number of steps while every setting reads the same; so a length in steps other than the run's is refused like a
changed length (`check_steps`, once the set-up has counted the rows: a cached run's are the clips that encoded),
with the `--set` that keeps the run's steps and the one that trains its epochs anew.

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

from pengi_search.checkpoint import CheckpointError, CheckpointMismatchError
from pengi_search.paths import shown_path
from pengi_search.units import count_text
from trainer.config import ConfigError, OptimizationSection, TrainConfig
from trainer.state import Position, load_checkpoint
from trainer.stopping import BestTracker

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

# What a resume may change without a word: how the run is watched and kept, and where it runs. The manifests' paths
# are free because their contents are compared (a changed manifest is warned of by its sha256).
FREE_SETTINGS = (
    "output_dir",
    "logging.",
    "evaluation.",
    "checkpoints.",
    "data.num_workers",
    "data.train",
    "data.validation",
    "optimization.max_minutes",
    "optimization.grad_clip",
    "runtime.device",
    "runtime.threads",
)


@dataclass(frozen=True)
class EpochSize:
    """What makes an epoch's steps, as the set-up found it: the training rows, the processes, and the run's length."""

    rows: int
    processes: int
    total_steps: int


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


def check_resume(config: TrainConfig, record: RunRecord, given: Collection[str], source: Path | str) -> str | None:
    """Refuse (`ConfigError`, naming each setting) a `config` that is not `record`'s run in `RUN_SETTINGS`, unless
    it differs only in length and the new length is among the keys `given` on the command line; then the line that
    says so. None: the same run."""
    now = config.to_dict()
    changed = changed_settings(record.config, now)
    if not changed:
        return None
    new_length = _length_key(now)
    if set(changed) <= set(LENGTH) and new_length in given:
        return _length_changes(now, record.config, _setting(now, LENGTH[0]), record.total_steps)
    differences = _differences(changed)
    as_it_was = " ".join(_set_option(key, run) for key, (run, _) in changed.items())
    reason = (
        f"differs from the run it resumes ({shown_path(record.checkpoint)}): {differences}; resume it as it was with "
        f"{as_it_was}"
    )
    if set(changed) <= set(LENGTH):
        longer = _set_option(new_length, _setting(now, new_length))
        raise ConfigError(source, f"{reason}, or train it on to this length with {longer}")
    raise ConfigError(source, f"{reason}; of these, only the length can change on resume, given with --set")


def check_steps(
    config: TrainConfig, record: RunRecord, epoch: EpochSize, given: Collection[str], source: Path | str
) -> str | None:
    """For a run in epochs that `check_resume` let through unchanged: refuse (`ConfigError`) epochs that make
    another number of steps than the run's, unless its length is given on the command line; then the line that
    says so. Asked once the set-up knows how many rows an epoch has (a cached run's: the clips that encoded)."""
    was, now = record.total_steps, config.to_dict()
    if was is None or epoch.total_steps == was:
        return None
    if _length_key(now) in given:
        return _length_changes(now, record.config, epoch.total_steps, was)
    causes = []
    if epoch.rows != record.payload["train_examples"]:
        causes.append(f"the training set has {epoch.rows} rows (the run's: {record.payload['train_examples']})")
    if epoch.processes != len(record.payload["rng"]):
        trains_on = count_text(epoch.processes, "process", "processes")
        causes.append(f"it trains on {trains_on} (the run's: {len(record.payload['rng'])})")
    because = f", as {' and '.join(causes)}" if causes else ""
    epochs = _setting(now, LENGTH[1])
    keep = f"{_set_option(LENGTH[0], was)} {_set_option(LENGTH[1], None)}"
    raise ConfigError(
        source,
        f"differs from the run it resumes ({shown_path(record.checkpoint)}) in its length: optimization.epochs "
        f"{epochs} make {epoch.total_steps} steps now, the run's {was}{because}; keep the run's {was} steps with "
        f"{keep}, or train it on to {epoch.total_steps} with {_set_option(LENGTH[1], epochs)}",
    )


def _length_changes(now: dict[str, Any], run: dict[str, Any], now_steps: int | None, run_steps: int | None) -> str:
    """What a resume given a new length with --set says (with the steps of a length in epochs, when known)."""
    same = now_steps is not None and now_steps == run_steps  # the run's steps, now as max_steps
    decay = f"still {now_steps} steps, the same decay" if same else "the learning rate now decays over the new length"
    return (
        f"the run's length changes to {_length(now, now_steps)} (it was {_length(run, run_steps)}), as --set asks: "
        f"{decay}"
    )


def changed_settings(run: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The `RUN_SETTINGS` that the configuration `now` sets otherwise than the `run`: key -> (the run's, now)."""
    pairs = {key: (_setting(run, key), _setting(now, key)) for key in RUN_SETTINGS}
    return {key: (was, value) for key, (was, value) in pairs.items() if _comparable(was) != _comparable(value)}


def said_changes(config: TrainConfig, record: RunRecord) -> dict[str, tuple[Any, Any]]:
    """The settings outside `RUN_SETTINGS` and `FREE_SETTINGS` that `config` sets otherwise than `record`'s run:
    key -> (the run's, now). A resume goes on with them, saying so (`changed_warning`)."""
    run, now = _leaves(record.config), _leaves(config.to_dict())
    run_settings = (*RUN_SETTINGS, *(f"{key}." for key in RUN_SETTINGS))  # `part_lr` is a mapping: its keys too
    watched = (key for key in sorted(run.keys() | now.keys()) if not key.startswith(run_settings))
    return {
        key: (run.get(key), now.get(key))
        for key in watched
        if not key.startswith(FREE_SETTINGS) and _comparable(run.get(key)) != _comparable(now.get(key))
    }


def changed_warning(changed: dict[str, tuple[Any, Any]]) -> str | None:
    """What a resume that goes on with `said_changes` warns; None when there are none."""
    if not changed:
        return None
    return f"the resumed run goes on with settings other than its own: {_differences(changed)}"


def mismatch_explained(error: CheckpointError, changed: dict[str, tuple[Any, Any]]) -> CheckpointError:
    """A checkpoint whose weights do not fit the model built now, with the model settings that differ from the
    run's (`said_changes`), its likely cause; the checkpoint named as the user would type it here."""
    model = {key: values for key, values in changed.items() if key.startswith(("model.", "freeze."))}
    why = f"; the model's settings differ from the run's: {_differences(model)}" if model else ""
    return CheckpointMismatchError(shown_path(Path(error.where)), error.reason + why)


def _differences(changed: dict[str, tuple[Any, Any]]) -> str:
    """`key value (the run's: value)`, each as --set writes it."""
    return ", ".join(f"{key} {_yaml(value)} (the run's: {_yaml(run)})" for key, (run, value) in changed.items())


def _leaves(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A configuration's settings by their dotted keys (`model.architecture.d_proj`), each leaf of its mappings."""
    leaves: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            leaves |= _leaves(value, f"{prefix}{key}.")
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def resume_point(position: Position, total: int, steps_per_epoch: int, optimization: OptimizationSection) -> str:
    """Where a resumed run starts and where it stops: `at step 6 of 2000 (epoch 3 of 1000)`."""
    # A checkpoint at an epoch's last step has not yet counted the epoch's end (the loop finds it on the next step).
    ended = position.batches_in_epoch >= steps_per_epoch * optimization.grad_accumulation
    epoch = position.epoch + (2 if ended else 1)
    epochs = optimization.epochs
    of = f" of {epochs}" if epochs else f", {steps_per_epoch} steps an epoch"
    return f"at step {position.step} of {total} (epoch {epoch}{of})"


def planned_resume(
    config: TrainConfig, record: RunRecord, length_change: str | None, total: int, steps_per_epoch: int
) -> tuple[list[str], list[str]]:
    """What the dry run says of resuming from `record` (lines, warnings), in the run's words: where it would start
    and stop, or that it would train nothing (a run stopped early on patience is seen only when resumed)."""
    lines = [length_change] if length_change else []
    if (finished := finished_by_length(record.position.step, total, config.optimization)) is not None:
        where, how = finished
        return lines, [f"the run already finished {where}: resuming trains nothing; to train on, {how}"]
    where = resume_point(record.position, total, steps_per_epoch, config.optimization)
    return [*lines, f"resuming from {shown_path(record.checkpoint)} {where}"], []


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


def finished_at(step: int, total: int, optimization: OptimizationSection, best: BestTracker) -> tuple[str, str] | None:
    """Why a run resumed at `step` of `total` has nothing left to train, and how to train it on: its length (the
    run's, or a new one given with --set) is reached, or early stopping's patience is spent (it may be raised in
    the configuration). None while it has."""
    if (by_length := finished_by_length(step, total, optimization)) is not None:
        return by_length
    if best.exhausted:
        return (
            f"at step {step} (early stop: no better {best.metric} in {best.since_best} evaluations, "
            f"evaluation.patience {best.patience})",
            "raise evaluation.patience and resume again",
        )
    return None


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

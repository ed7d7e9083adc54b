"""A training run from its command to its end, across its processes.

`train` runs what a configuration describes and returns the trained model (`pengi-search train` and
`python -m trainer` call it); a run that cannot start or go on raises a `PengiSearchError`, which the command line
turns into its exit code. Before anything is set up, the configuration and the checkpoint a resume continues from
are checked (each machine's first process says what they all meet); then the processes start, each sets up its
`trainer.loop.Trainer` (restored from the checkpoint when resuming), a set-up failure they all meet is said once,
and the processes train, or find the run already finished, and part.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch

from pengi_search.checkpoint import CheckpointMismatchError
from pengi_search.consoles import Console
from pengi_search.errors import PengiSearchError
from pengi_search.paths import shown_path
from pengi_search.torchrun_env import said_once_per_machine
from pengi_search.units import count_text
from trainer.checkpoint_files import checkpoint_path, checkpoint_to_resume
from trainer.config import ConfigError, TrainConfig
from trainer.distributed import Processes, end_last, ends_here, part_processes, process_lost_said, start_processes
from trainer.export import changed_manifests, finished_run_models
from trainer.loop import Trainer, TrainingResult
from trainer.resume_plan import (
    EpochSize,
    RunRecord,
    changed_warning,
    check_resume,
    check_steps,
    finished_at,
    mismatch_explained,
    read_run_record,
    resume_point,
    said_changes,
)
from trainer.stopping import InterruptRequest, RunInterrupted


def train(
    config: TrainConfig,
    *,
    resume: bool | Path = False,
    given: Collection[str] = (),
    source: Path | None = None,
    console: Console | None = None,
) -> TrainingResult:
    """Run the training that `config` describes in this process (one of several under `torchrun`).

    A resumed run must be the checkpoint's run, but for a new length among the keys `given` on the command line
    (`--set`): see `trainer.resume_plan`. A set-up failure every process meets is raised by rank 0 alone; one met
    before the processes connect, by the first process of each machine (`pengi_search.torchrun_env`)."""
    source = source or Path("<config>")
    with said_once_per_machine():  # the processes are not connected yet: each meets what the others meet
        if problems := config.problems(cuda=torch.cuda.is_available()):
            raise ConfigError(source, problems[0])
        # Before the set-up (features take minutes): a missing checkpoint, a new run in an output_dir holding one,
        # or a configuration that is not the run's.
        checkpoint = checkpoint_to_resume(config.output_dir, resume)
        record = None if checkpoint is None else read_run_record(checkpoint)  # the one read of the checkpoint
        length_change = None if record is None else check_resume(config, record, given, source)
    processes = start_processes(config.runtime.device, config.runtime.threads)
    # Where one process alone stops (a failure of its own, a stop signal during its set-up), it leaves the others
    # as it is; every other end is one that every process reaches alike, where they part (`part_processes`).
    with process_lost_said(processes), InterruptRequest(once=processes.distributed, held=False) as interrupt:
        trainer, said = _set_up(config, processes, interrupt, record, length_change, given, source, console)
        checkpoint = None if record is None else record.checkpoint
        record = None  # the trainer holds copies: the mapped file is let go
        if trainer is None:
            result = None
        elif trainer.finished is not None:  # resumed at the run's end: said, and nothing written
            assert checkpoint is not None  # only a resumed run is finished before it starts
            result = _already_finished(trainer, checkpoint)
        else:
            result = trainer.fit(interrupt)
        # DistributedDataParallel's reducer must be freed while its process group still exists: freed after
        # destroy_process_group, gloo's destructor and its worker thread deadlock on the GIL.
        del trainer
        siblings = part_processes(processes)
    end_last(siblings)
    if said is not None:
        raise said
    if result is None:
        return TrainingResult(None, None, None, 0, main=False)
    if result.interrupted and result.main:  # after the checkpoint, the model and the others: exit code 130 or 143
        raise RunInterrupted(_kept(config.output_dir, result))
    # Under torchrun the others end well, saying nothing: a process ending with another code than 0 makes torchrun
    # stop the rest (SIGTERM), rank 0 too, before it has said the run was interrupted.
    return result


def _kept(output_dir: Path, result: TrainingResult) -> str:
    """What a run stopped by a signal leaves (its checkpoint and model, as the user would type them here), and how
    to go on."""
    written = (checkpoint_path(output_dir, result.steps), result.model_dir)
    kept = " and ".join(shown_path(path) for path in written if path is not None and path.exists())
    return (
        f"the run stopped after step {result.steps}{f', kept in {kept}' if kept else ''}; "
        "run the same command with --resume to go on"
    )


def _set_up(
    config: TrainConfig,
    processes: Processes,
    interrupt: InterruptRequest,
    record: RunRecord | None,
    length_change: str | None,
    given: Collection[str],
    source: Path,
    console: Console | None,
) -> tuple[Trainer | None, PengiSearchError | None]:
    """This process's trainer, resumed from `record`; or None where the run ends at its set-up, with the failure
    this process is to raise once the processes have parted (None: another process says it)."""
    trainer = None
    failure: PengiSearchError | None = None  # how this process's set-up failed (`ends_here` decides who says it)
    try:
        trainer = Trainer(config, processes, source, console)
        if record is not None:
            epoch = EpochSize(len(trainer.data.train_set), processes.world_size, trainer.total_steps)
            _resume(trainer, record, length_change or check_steps(config, record, epoch, given, source))
    except PengiSearchError as error:  # too few examples, nothing to train, a run resumed on other processes...
        failure = error
    # From the processes' first collective on, a stop signal is a request they agree on (`Trainer._interrupted`):
    # one that interrupted a process there would leave the others waiting in it.
    interrupt.hold()
    try:
        # Every process's set-up read the same configuration and data: a failure they all met is said once.
        ended = ends_here(processes, failure)
    except PengiSearchError as said:
        return None, said
    return (None, None) if ended else (trainer, None)


def _resume(trainer: Trainer, record: RunRecord, length_change: str | None = None) -> None:
    """Load a checkpoint of this run (`check_resume` checked the configuration is its run's, or says in
    `length_change` how its length changed); the loop then continues exactly where it was written."""
    path = record.checkpoint
    changed = said_changes(trainer.config, record)
    try:
        payload = trainer.checkpoints.load(record.payload, path)
    except CheckpointMismatchError as error:  # a model of other sizes: the settings that made it are named
        raise mismatch_explained(error, changed) from None
    trainer.position = record.position
    trainer.say(length_change)
    trainer.finished = finished_at(
        trainer.position.step, trainer.total_steps, trainer.config.optimization, trainer.best
    )
    if trainer.finished is not None:
        return  # before the metrics log is touched: a finished run stays as it is
    if (warning := changed_warning(changed)) is not None:
        trainer.warn(warning)
    changed = changed_manifests(payload.get("provenance"), trainer.provenance)
    if payload["train_examples"] != len(trainer.data.train_set):
        trainer.warn("the training manifest changed since the checkpoint: the data order will differ")
        changed.pop("train", None)
    for split, manifest in changed.items():  # as many rows, other contents: the model would not say it
        trainer.warn(
            f"the {split} manifest {shown_path(Path(manifest))} changed since the checkpoint (another sha256): "
            "the run goes on with it as it is now"
        )
    rng, processes = payload["rng"], trainer.processes.world_size
    if len(rng) == processes:
        trainer.rng_to_restore = rng[trainer.processes.rank]
    else:
        written_by = count_text(len(rng), "process", "processes")
        trainer.warn(f"the checkpoint was written by {written_by}, not {processes}: random streams restart")
    trainer.metrics.truncate_after(trainer.position.step)
    where = resume_point(trainer.position, trainer.total_steps, trainer.steps_per_epoch, trainer.config.optimization)
    trainer.say(f"resuming from {shown_path(path)} {where}")


def _already_finished(trainer: Trainer, checkpoint: Path) -> TrainingResult:
    """Resumed at the run's end (`finished`): say so, where its model is and how to train on; write nothing."""
    where, how = trainer.finished
    model_dir, models = finished_run_models(trainer.config.output_dir, checkpoint, trainer.position.step)
    # Even with --quiet: it is the run's only outcome.
    trainer.say(f"the run already finished {where}: nothing was trained or written; {models}. To train on, {how}")
    return TrainingResult(
        trainer.model, trainer.tokenizers, model_dir, trainer.position.step, main=trainer.processes.main
    )

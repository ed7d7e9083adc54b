"""The training loop: micro-batches accumulated into optimizer steps (`trainer.optimization`), evaluation,
checkpoints and DDP.

A `Trainer` is one process's part of a run, which `trainer.run` starts, resumes and ends. One optimizer step reads
`grad_accumulation` micro-batches on every process; its loss is the summed answer-token NLL divided by the answer
tokens of all of them, so any split of a batch across micro-batches and processes gives the same gradient. Rank 0
logs, evaluates samples, writes checkpoints and exports the final model directory (`<output_dir>/model`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from pengi_search.consoles import Console, make_console
from pengi_search.errors import PengiSearchError
from pengi_search.messages import print_warning
from pengi_search.model import Pengi
from pengi_search.paths import as_typed, shown_path
from pengi_search.tokenization import Tokenizers
from trainer.config import TrainConfig
from trainer.data import Batch, example_loader
from trainer.distributed import Processes, gather_objects, parameter_digest, sum_across, wait_for_all
from trainer.evaluation import best_metric, evaluate_run
from trainer.export import BEST_MODEL_DIR, MODEL_DIR, export_model, run_provenance
from trainer.model_setup import (
    apply_freezing,
    build_model,
    caches_features,
    frozen_fingerprint,
    set_dropout,
    set_train_mode,
    trainable_parameters,
)
from trainer.objective import AnswerNll, encode_batch
from trainer.optimization import Optimization, autocast
from trainer.reporting import (
    METRICS_FILE,
    PLOT_FILE,
    Interval,
    MetricsLog,
    RateWindow,
    SkippedClips,
    TrainingProgress,
    report_evaluation,
    write_plot,
)
from trainer.run_data import prepare_data, quiet
from trainer.sampling import ResumableSampler
from trainer.state import Position, RunCheckpoints, restore_rng, seed_everything
from trainer.steps import accumulate_gradients
from trainer.stopping import BestTracker, InterruptRequest

log = logging.getLogger(__name__)


class TrainingError(PengiSearchError):
    """A run that cannot start or go on (nothing to train, too little data, precision the device lacks...)."""


@dataclass
class TrainingResult:
    model: Pengi | None  # None on a process whose set-up failed as rank 0's did (rank 0 says it)
    tokenizers: Tokenizers | None
    model_dir: Path | None  # the exported model directory (rank 0)
    steps: int
    audio_skipped: bool = False  # some rows' audio could not be used (each reported): the command exits 3
    # Rank 0, which reports for the run: only its command says the outcome and exits 3 for skipped audio. Under
    # torchrun a process ending with a code other than 0 makes it stop the others (SIGTERM), even rank 0 as it ends.
    main: bool = True
    # The processes agreed to stop early on a stop signal (every process's): rank 0 says so, once they have parted.
    interrupted: bool = False


class Trainer:
    """This process's part of a run: the model, data and optimizer set up from the configuration, then trained by
    `fit` (a resumed run's checkpoint restored into it first, by `trainer.run`)."""

    def __init__(self, config: TrainConfig, processes: Processes, source: Path, console: Console | None) -> None:
        self.config = config
        self.source = source
        self.processes = processes
        self.device = processes.device
        self.started = time.monotonic()  # the time budget (optimization.max_minutes) counts from here
        seed_everything(config.seed)  # the same initial weights on every process
        self.model, self.tokenizers = build_model(config, source)
        self.frozen = apply_freezing(self.model, config.freeze)
        if config.model.dropout is not None:
            set_dropout(self.model, config.model.dropout)
        fingerprint = frozen_fingerprint(self.model)
        self.model.to(self.device)
        cached = caches_features(config, self.model)
        self.loss_module = AnswerNll(self.model, cached=cached)
        self.parameters = trainable_parameters(self.model)
        if not self.parameters:
            raise TrainingError("", "nothing to train: every part of the model is frozen")
        torch.manual_seed(config.seed + processes.rank)  # each process its own dropout
        shown = processes.main and not config.logging.quiet
        self.console = console or make_console(stderr=True)
        # As the progress prints (`TrainingProgress.print`): as written, and on one line in a log.
        say = functools.partial(self.console.print, markup=False, highlight=False, soft_wrap=True) if shown else quiet
        self.data = prepare_data(config, self.model, self.tokenizers, source, cached=cached, say=say)
        self.provenance = run_provenance(config)  # the manifests as read now, by a resumed run too
        self._setup_loader()
        self.optimization = Optimization(
            self.model,
            self.parameters,
            config.optimization,
            total_steps=self.total_steps,
            device=self.device,
            precision=config.runtime.precision,
        )
        self.position = Position()
        self.interval = Interval()
        self.rate = RateWindow()
        self.best = BestTracker(best_metric(config.evaluation.metric, self.data), config.evaluation.patience)
        self.checkpoints = RunCheckpoints(
            config,
            processes,
            self.model,
            self.optimization,
            self.best,
            fingerprint=fingerprint,
            train_examples=len(self.data.train_set),
            tasks=self.data.tasks,
            total_steps=self.total_steps,
            provenance=self.provenance,
        )
        self.evaluated_at: int | None = None  # the step of the last evaluation
        self.skips = SkippedClips(self.console if processes.main else None)  # said even with --quiet
        self.skips.note(self.data.skipped_at_caching)
        self.stopped_early = False
        self.last_checkpoint: int | None = None  # step of the latest step checkpoint
        self.rng_to_restore: dict[str, Any] | None = None
        self.finished: tuple[str, str] | None = None  # resumed at the run's end: why, and what to raise
        self.metrics = MetricsLog(config.output_dir / METRICS_FILE, enabled=processes.main)
        self.progress = TrainingProgress(self.total_steps, 0, enabled=shown, console=self.console)

    # --- Set-up ------------------------------------------------------------------------------------------------

    def _setup_loader(self) -> None:
        data, processes, train_set = self.config.data, self.processes, self.data.train_set
        self.sampler = ResumableSampler(
            train_set, num_replicas=processes.world_size, rank=processes.rank, seed=self.config.seed
        )
        self.loader = example_loader(
            train_set,
            data.batch_size,
            self.sampler,
            num_workers=0 if self.data.cached else data.num_workers,  # cached rows need no decoding
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # its own: creating an iterator must not draw from the global RNG
        )
        self.steps_per_epoch = self.config.steps_per_epoch(len(train_set), processes.world_size)
        if self.steps_per_epoch == 0:
            raise TrainingError(
                as_typed(data.train), self.config.too_few_for_a_step(len(train_set), processes.world_size)
            )
        self.total_steps = self.config.total_steps(self.steps_per_epoch)

    def warn(self, message: str) -> None:
        """Said once (by rank 0), even with --quiet, as the command line says its warnings."""
        if self.processes.main:
            print_warning(self.console, message)

    def say(self, message: str | None) -> None:
        """What the run will do, said once (by rank 0), even with --quiet (which quiets the progress)."""
        if message is not None and self.processes.main:
            self.console.print(message, soft_wrap=True, markup=False, highlight=False)

    # --- Loop --------------------------------------------------------------------------------------------------

    def fit(self, interrupt: InterruptRequest) -> TrainingResult:
        """Train until the run's end, or until the processes agree to stop early (`interrupt`, held by the caller
        until the processes have parted: a stop signal stays a request through the wrap-up's collectives)."""
        self.interrupt = interrupt
        processes = self.processes
        ddp = processes.distributed
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(self.loss_module, device_ids=device_ids) if ddp else self.loss_module
        set_train_mode(self.model, self.frozen, self.config.freeze)
        if self.position.step == 0:
            self.metrics.truncate_after(0)  # what a run that crashed before its first checkpoint logged
        if self.rng_to_restore is not None:
            restore_rng(self.rng_to_restore, self.device)
        self._say_skipped()  # what encoding the clips found; a resumed run that trains nothing says none of it
        with self.progress:
            self.progress.advance(self.position.step)
            self.rate.restart_clock()
            while self.position.step < self.total_steps and not self._stopping():
                self._run_epoch()
        model_dir = self._wrap_up()
        interrupted = self._interrupted()  # as every process decides it: asked to stop during the wrap-up too
        step, skipped, main = self.position.step, self.skips.any, self.processes.main
        return TrainingResult(
            self.model, self.tokenizers, model_dir, step, audio_skipped=skipped, main=main, interrupted=interrupted
        )

    def _wrap_up(self) -> Path | None:
        """The loop has ended: the last evaluation and checkpoint a run stopped early lacks, then the model."""
        if self.stopped_early and self.evaluated_at != self.position.step:
            self._evaluate()  # the budget ended the run between evaluations: the last steps may hold the best model
        if self.position.step < self.total_steps and self.last_checkpoint != self.position.step:
            self._checkpoint()  # stopped early (Ctrl-C, patience, time budget): the run can be resumed or exported
        self._say_skipped()  # the steps since the last log (a run stopped early), before the run's outcome
        return self._finish()

    def _note_skipped(self, dataset: Dataset, skipped: list[tuple[int, str]]) -> None:
        """Rows of `dataset` whose audio failed here, with why: said at the next `_say_skipped`."""
        self.skips.note((dataset.examples[row].audio, reason) for row, reason in skipped)

    def _say_skipped(self) -> None:
        """Rank 0 says each clip any process noted, once (every process calls this at the same points)."""
        self.skips.say(gather_objects(self.processes, self.skips.take()))

    def _interrupted(self) -> bool:
        """Whether any process was asked to stop (one collective): they all stop after the same step."""
        return self.interrupt.agree(sum_across(self.processes, self.interrupt.votes()))

    def _out_of_time(self) -> bool:
        budget = self.config.optimization.max_minutes
        over = budget is not None and time.monotonic() - self.started > 60 * budget
        (anywhere,) = sum_across(self.processes, [float(over)])
        if anywhere and not self.stopped_early:
            self.stopped_early = True
            self.metrics.write("time_limit", step=self.position.step, minutes=budget)
            self.progress.print(f"time budget of {budget} min reached at step {self.position.step}")
        return anywhere > 0

    def _stopping(self) -> bool:
        return self.stopped_early or self._interrupted() or self._out_of_time()

    def _run_epoch(self) -> None:
        position, batch_size = self.position, self.config.data.batch_size
        accumulation = self.config.optimization.grad_accumulation
        self.data.train_set.set_epoch(position.epoch)
        self.sampler.set_position(position.epoch, position.batches_in_epoch * batch_size)
        batches: Iterator[Batch] = iter(self.loader)
        while position.step < self.total_steps and not self._stopping():
            micro = list(itertools.islice(batches, accumulation))
            if len(micro) < accumulation:  # the epoch's end (a partial group is left out)
                position.epoch += 1
                position.batches_in_epoch = 0
                return
            self._step(micro)
            position.batches_in_epoch += accumulation
            position.step += 1
            self._after_step()

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.config.runtime.precision)

    def _step(self, micro: list[Batch]) -> None:
        data, processes = self.config.data, self.processes
        shape = self.data.audio_shape
        inputs = [encode_batch(batch, self.tokenizers, data.max_answer_tokens, shape) for batch in micro]
        local_tokens = sum(item.tokens for item in inputs)
        (all_tokens,) = sum_across(processes, [float(local_tokens)])
        # DDP averages gradients over processes; scaling by world_size makes that a sum over all answer tokens.
        scale = processes.world_size / max(all_tokens, 1.0)
        precision = self.config.runtime.precision
        nll_sum = accumulate_gradients(
            self.wrapped, self.optimization, inputs, scale=scale, device=self.device, precision=precision
        )
        interval = self.interval
        interval.grad_norm, interval.rates = self.optimization.step()
        samples = sum(len(batch["answer"]) for batch in micro)
        interval.nll += nll_sum
        interval.tokens += local_tokens
        interval.samples += samples
        for batch in micro:
            self._note_skipped(self.data.train_set, batch["skipped"])
            interval.skipped += len(batch["skipped"])
        self.rate.step(samples * processes.world_size)

    def _after_step(self) -> None:
        step, total = self.position.step, self.total_steps
        checkpoint_due = step % self.config.checkpoints.every == 0 or step == total
        if step % self.config.logging.every == 0 or checkpoint_due:
            self._log_interval()
        else:
            self.progress.advance(step, self.rate)
        if step % self.config.evaluation.every == 0 or step == total:
            self._evaluate()
        if checkpoint_due:
            self._checkpoint()
        self.rate.restart_clock()

    def _log_interval(self) -> None:
        interval = self.interval
        nll, tokens, samples, skipped = sum_across(
            self.processes, [interval.nll, interval.tokens, interval.samples, interval.skipped]
        )
        loss = nll / tokens if tokens else None  # None: every clip of the interval failed to load
        self.metrics.write(
            "train",
            step=self.position.step,
            epoch=self.position.epoch + 1,  # counted from 1, as `optimization.epochs` and a resume count them
            loss=loss,
            **interval.rates,
            grad_norm=interval.grad_norm,
            samples_per_s=self.rate.rate,
            samples=int(samples),
            tokens=int(tokens),
            skipped=int(skipped),
        )
        self.progress.logged(self.position.step, self.rate, loss)
        self.interval = Interval()
        self._say_skipped()

    def _evaluate(self) -> None:
        self.evaluated_at = step = self.position.step
        self.model.eval()
        evaluation = evaluate_run(
            self.loss_module,
            self.tokenizers,
            self.data,
            self.config,
            self.processes,
            autocast=self._autocast,
            failed=self._say_failed_validation,
        )
        validated = evaluation.record if self.data.val_set is not None else None
        report_evaluation(self.metrics, self.progress, step, validated, evaluation.samples)
        record = evaluation.record
        improved = self.processes.main and self.best.update(step, record.get(self.best.metric), record.get("val_loss"))
        exhausted = self.processes.main and self.best.exhausted
        improved_flag, exhausted_flag = sum_across(self.processes, [float(improved), float(exhausted)])
        if improved_flag and self.config.checkpoints.keep_best:
            self._checkpoint(best=True)
        if exhausted_flag:
            self.stopped_early = True
            self.metrics.write("early_stop", step=step, **self.best.state())
            patience = self.config.evaluation.patience
            self.progress.print(f"early stop: no better {self.best.metric} in {patience} evaluations")
        set_train_mode(self.model, self.frozen, self.config.freeze)

    def _say_failed_validation(self, failed: list[tuple[int, str]]) -> None:
        assert self.data.val_set is not None  # only a validation set has rows to fail
        self._note_skipped(self.data.val_set, failed)
        self._say_skipped()

    def _checkpoint(self, best: bool = False) -> None:
        path = self.checkpoints.write(self.position, best=best)  # every process joins: its random streams
        if not best:
            self.last_checkpoint = self.position.step  # on every process: they decide together on a final one
        if path is None:
            return  # another process than rank 0, which alone writes
        if best:
            self._export(self.config.output_dir / BEST_MODEL_DIR, best=True)
        chosen = {"rule": self.best.rule} if best else {}  # what made it the best (`BestTracker.rule`)
        self.metrics.write("best" if best else "checkpoint", step=self.position.step, path=str(path), **chosen)

    def _export(self, directory: Path, best: bool = False) -> Path:
        extra: dict[str, Any] = {"provenance": self.provenance}
        if best:
            extra |= {"metric": self.best.metric, "value": self.best.best, "rule": self.best.rule}
        return export_model(
            self.model,
            self.tokenizers,
            directory,
            step=self.position.step,
            config=self.config.to_dict(),
            tasks=self.data.tasks,
            extra=extra,
        )

    def _finish(self) -> Path | None:
        """Check every process holds the same weights, then export the model directory (rank 0)."""
        digests = gather_objects(self.processes, parameter_digest(self.parameters))
        in_sync = len(set(digests)) == 1
        if not in_sync:
            log.error("the processes ended with different weights: %s", digests)
        if not self.processes.main:
            wait_for_all(self.processes)  # the run ends when rank 0 has written the model
            return None
        folder = self.config.output_dir
        model_dir = self._export(folder / MODEL_DIR)
        self.metrics.write(
            "end",
            step=self.position.step,
            model_dir=str(model_dir),
            rank_digests=digests,
            ranks_in_sync=in_sync,
            best=self.best.state(),
            stopped_early=self.stopped_early,
        )
        if self.config.logging.plot and write_plot(folder / METRICS_FILE, folder / PLOT_FILE) is None:
            self.warn(f"matplotlib is not installed: no {PLOT_FILE} (pip install matplotlib)")
        self.progress.summary()  # how the loss went (not with --quiet)
        # The run's outcome, said even with --quiet (which quiets the progress): where its models are.
        # Paths as the user would type them here: the configuration resolved output_dir.
        self.console.print(f"model written to {shown_path(model_dir)}", soft_wrap=True, markup=False)
        if self.best.best_step is not None and self.config.checkpoints.keep_best:
            best = f"best {self.best.metric} {self.best.best:.4f} at step {self.best.best_step}"
            if self.best.rule != self.best.metric:  # a tie in the metric, broken by the loss or the step
                best += f", chosen by {self.best.rule}"
            self.console.print(f"{best}: {shown_path(folder / BEST_MODEL_DIR)}", soft_wrap=True, markup=False)
        wait_for_all(self.processes)
        return model_dir

"""The training loop: Adam with linear warm-up and decay, accumulation, clipping, mixed precision and DDP.

`train` runs what a configuration describes and returns the trained model (`pengi-search train` and
`python -m trainer` call it); a run that cannot start or go on raises a `PengiSearchError`, which the command line
turns into its exit code. One optimizer step reads `grad_accumulation` micro-batches on every process; its loss is
the summed answer-token NLL divided by the answer tokens of all of them, so any split of a batch across
micro-batches and processes gives the same gradient. Rank 0 logs, evaluates samples, writes checkpoints and exports
the final model directory (`<output_dir>/model`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from pengi_search.checkpoint import CheckpointError
from pengi_search.choices import LongPrompt
from pengi_search.errors import PengiSearchError
from pengi_search.model import Pengi
from pengi_search.tokenization import PromptTooLongError, Tokenizers
from trainer.config import ConfigError, RuntimeSection, TrainConfig
from trainer.data import AudioTextDataset, Batch, Example, ManifestError, collate_examples, read_manifest
from trainer.distributed import (
    Processes,
    gather_objects,
    start_processes,
    stop_processes,
    sum_across,
    wait_for_all,
)
from trainer.evaluation import sample_generations, validation_loss
from trainer.model_setup import (
    apply_freezing,
    build_model,
    frozen_fingerprint,
    set_dropout,
    set_train_mode,
    trainable_parameters,
)
from trainer.objective import AnswerNll, encode_batch
from trainer.reporting import METRICS_FILE, MetricsLog, TrainingProgress
from trainer.sampling import ResumableSampler
from trainer.state import (
    Position,
    capture_rng,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_state,
    model_state,
    restore_rng,
    save_checkpoint,
    seed_everything,
)

MODEL_DIR = "model"

log = logging.getLogger(__name__)


class TrainingError(PengiSearchError):
    """A run that cannot start or go on (nothing to train, too little data, precision the device lacks...)."""


@dataclass
class TrainingResult:
    model: Pengi
    tokenizers: Tokenizers
    model_dir: Path | None  # the exported model directory (rank 0)
    steps: int


def train(
    config: TrainConfig,
    *,
    resume: bool | Path = False,
    source: Path | None = None,
    console: Console | None = None,
) -> TrainingResult:
    """Run the training that `config` describes in this process (one of several under `torchrun`)."""
    source = source or Path("<config>")
    check_runtime(config.runtime, source)
    if not resume and list_checkpoints(config.output_dir):
        raise TrainingError(config.output_dir, "holds checkpoints of a run: resume it, or choose a new output_dir")
    processes = start_processes(config.runtime.device)
    trainer = None
    try:
        trainer = Trainer(config, processes, source, console)
        if resume:
            trainer.resume(latest_checkpoint(config.output_dir) if resume is True else Path(resume))
        return trainer.fit()
    finally:
        # DistributedDataParallel's reducer must be freed while its process group still exists: freed after
        # destroy_process_group, gloo's destructor and its worker thread deadlock on the GIL.
        del trainer
        stop_processes(processes)


def check_runtime(runtime: RuntimeSection, source: Path) -> None:
    """A CUDA device when one is asked for, and for mixed precision (autocast here is CUDA only)."""
    cuda = torch.cuda.is_available()
    if runtime.device == "cuda" and not cuda:
        raise ConfigError(source, "runtime.device is cuda, but PyTorch sees no CUDA GPU")
    if runtime.precision != "fp32" and (runtime.device == "cpu" or not cuda):
        raise ConfigError(source, f"runtime.precision {runtime.precision} needs a CUDA device; this run is on the CPU")


def warmup_then_linear_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor for step s (0-based): (s+1)/warmup while warming up, then down linearly to 1/(remaining steps)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class _Interval:
    """What the steps since the last log add up to on this process."""

    def __init__(self) -> None:
        self.nll = self.tokens = self.samples = self.skipped = self.seconds = 0.0
        self.grad_norm = math.nan
        self.lr = math.nan


class Trainer:
    def __init__(self, config: TrainConfig, processes: Processes, source: Path, console: Console | None) -> None:
        self.config = config
        self.source = source
        self.processes = processes
        self.device = processes.device
        seed_everything(config.seed)  # the same initial weights on every process
        self.model, self.tokenizers = build_model(config.model, source)
        self.frozen = apply_freezing(self.model, config.freeze)
        if config.model.dropout is not None:
            set_dropout(self.model, config.model.dropout)
        self.fingerprint = frozen_fingerprint(self.model)
        self.model.to(self.device)
        self.loss_module = AnswerNll(self.model)
        self.parameters = trainable_parameters(self.model)
        if not self.parameters:
            raise TrainingError("", "nothing to train: every part of the model is frozen")
        torch.manual_seed(config.seed + processes.rank)  # each process its own dropout

        self._setup_data()
        opt = config.optimization
        self.optimizer = torch.optim.Adam(self.parameters, lr=opt.lr, weight_decay=opt.weight_decay)
        self.scheduler = LambdaLR(self.optimizer, warmup_then_linear_decay(opt.warmup_steps, self.total_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.runtime.precision == "fp16")
        self.position = Position()
        self.interval = _Interval()
        self.rng_to_restore: dict[str, Any] | None = None
        self.metrics = MetricsLog(config.output_dir / METRICS_FILE, enabled=processes.main)
        shown = processes.main and not config.logging.quiet
        self.progress = TrainingProgress(self.total_steps, 0, enabled=shown, console=console)

    # --- Set-up ------------------------------------------------------------------------------------------------

    def _dataset(self, examples: list[Example], train: bool) -> AudioTextDataset:
        audio = self.model.cfg.audio
        return AudioTextDataset(
            examples, train=train, seed=self.config.seed, sample_rate=audio.sample_rate, clip_samples=audio.clip_samples
        )

    def _setup_data(self) -> None:
        data, processes, cfg = self.config.data, self.processes, self.model.cfg
        room = cfg.decoder.n_positions - cfg.prefix_tokens  # GPT-2 positions left after the prefix
        if data.max_answer_tokens > room:
            raise ConfigError(self.source, f"data.max_answer_tokens may be at most {room} for this model")
        examples = read_manifest(data.train)
        check_prompts(examples, self.tokenizers, data.train)
        self.train_set = self._dataset(examples, train=True)
        self.sampler = ResumableSampler(
            self.train_set, num_replicas=processes.world_size, rank=processes.rank, seed=self.config.seed
        )
        self.loader = DataLoader(
            self.train_set,
            data.batch_size,
            sampler=self.sampler,
            collate_fn=collate_examples,
            num_workers=data.num_workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # its own: creating an iterator must not draw from the global RNG
        )
        accumulation = self.config.optimization.grad_accumulation
        self.steps_per_epoch = self.sampler.num_samples // data.batch_size // accumulation
        if self.steps_per_epoch == 0:
            raise TrainingError(
                data.train,
                f"{len(examples)} examples are too few for one step of batch_size {data.batch_size} "
                f"x grad_accumulation {accumulation} x {processes.world_size} process(es)",
            )
        opt = self.config.optimization
        self.total_steps = opt.max_steps or opt.epochs * self.steps_per_epoch
        self.val_set = None
        if data.validation is not None:
            val_examples = read_manifest(data.validation)
            check_prompts(val_examples, self.tokenizers, data.validation)
            self.val_set = self._dataset(val_examples, train=False)
        self.sample_set = self.val_set or self._dataset(examples, train=False)

    def resume(self, path: Path) -> None:
        """Load a checkpoint of this run; the loop then continues exactly where it was written."""
        payload = load_checkpoint(path)
        if not self.config.checkpoints.full_model and payload["frozen_fingerprint"] != self.fingerprint:
            raise CheckpointError(path, "the frozen weights differ from those this run started with")
        load_model_state(self.model, payload["model"], path)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except ValueError as error:
            raise CheckpointError(path, f"the optimizer state does not fit (freezing changed?): {error}") from None
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.position = Position(**payload["position"])
        if payload["train_examples"] != len(self.train_set):
            log.warning("the training manifest changed since the checkpoint: the data order will differ")
        rng = payload["rng"]
        if len(rng) == self.processes.world_size:
            self.rng_to_restore = rng[self.processes.rank]
        else:
            log.warning(
                "the checkpoint was written by %d processes, not %d: random streams restart",
                len(rng),
                self.processes.world_size,
            )
        self.metrics.truncate_after(self.position.step)
        self.progress.print(f"resumed from {path} at step {self.position.step}")

    # --- Loop --------------------------------------------------------------------------------------------------

    def fit(self) -> TrainingResult:
        processes = self.processes
        ddp = processes.distributed
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(self.loss_module, device_ids=device_ids) if ddp else self.loss_module
        set_train_mode(self.model, self.frozen, self.config.freeze)
        if self.position.step == 0:
            self.metrics.truncate_after(0)  # what a run that crashed before its first checkpoint logged
        if self.rng_to_restore is not None:
            restore_rng(self.rng_to_restore, self.device)
        with self.progress:
            self.progress.advance(self.position.step)
            while self.position.step < self.total_steps:
                self._run_epoch()
        model_dir = self._finish()
        return TrainingResult(self.model, self.tokenizers, model_dir, self.position.step)

    def _run_epoch(self) -> None:
        position, batch_size = self.position, self.config.data.batch_size
        accumulation = self.config.optimization.grad_accumulation
        self.train_set.set_epoch(position.epoch)
        self.sampler.set_position(position.epoch, position.batches_in_epoch * batch_size)
        batches: Iterator[Batch] = iter(self.loader)
        while position.step < self.total_steps:
            started = time.perf_counter()
            micro = list(itertools.islice(batches, accumulation))
            if len(micro) < accumulation:  # the epoch's end (a partial group is left out)
                position.epoch += 1
                position.batches_in_epoch = 0
                return
            self._step(micro)
            position.batches_in_epoch += accumulation
            position.step += 1
            self.interval.seconds += time.perf_counter() - started
            self._after_step()

    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.config.runtime.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def _step(self, micro: list[Batch]) -> None:
        data, processes = self.config.data, self.processes
        clip_samples = self.model.cfg.audio.clip_samples
        inputs = [encode_batch(batch, self.tokenizers, data.max_answer_tokens, clip_samples) for batch in micro]
        local_tokens = sum(item.tokens for item in inputs)
        (all_tokens,) = sum_across(processes, [float(local_tokens)])
        # DDP averages gradients over processes; scaling by world_size makes that a sum over all answer tokens.
        scale = processes.world_size / max(all_tokens, 1.0)
        nll_sum = 0.0
        for index, item in enumerate(inputs):
            last = index == len(inputs) - 1
            sync = contextlib.nullcontext() if last or not processes.distributed else self.wrapped.no_sync()
            with sync:
                with self._autocast():
                    nll = self.wrapped(**vars(item.to(self.device)))
                self.scaler.scale(nll * scale).backward()
            nll_sum += float(nll.detach())
        self.scaler.unscale_(self.optimizer)
        clip = self.config.optimization.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, clip)
        interval = self.interval
        interval.lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        interval.nll += nll_sum
        interval.tokens += local_tokens
        interval.samples += sum(len(batch["answer"]) for batch in micro)
        interval.skipped += sum(len(batch["skipped"]) for batch in micro)
        interval.grad_norm = float(grad_norm)

    def _after_step(self) -> None:
        step, total = self.position.step, self.total_steps
        checkpoint_due = step % self.config.checkpoints.every == 0 or step == total
        if step % self.config.logging.every == 0 or checkpoint_due:
            self._log_interval()
        else:
            self.progress.advance(step)
        if step % self.config.evaluation.every == 0 or step == total:
            self._evaluate()
        if checkpoint_due:
            self._checkpoint()

    def _log_interval(self) -> None:
        interval = self.interval
        nll, tokens, samples, skipped, seconds = sum_across(
            self.processes, [interval.nll, interval.tokens, interval.samples, interval.skipped, interval.seconds]
        )
        loss = nll / tokens if tokens else None  # None: every clip of the interval failed to load
        rate = samples / max(seconds / self.processes.world_size, 1e-9)
        self.metrics.write(
            "train",
            step=self.position.step,
            epoch=self.position.epoch,
            loss=loss,
            lr=interval.lr,
            grad_norm=interval.grad_norm,
            samples_per_s=rate,
            samples=int(samples),
            tokens=int(tokens),
            skipped=int(skipped),
        )
        self.progress.advance(self.position.step, rate, loss)
        self.interval = _Interval()

    def _evaluate(self) -> None:
        self.model.eval()
        step, evaluation = self.position.step, self.config.evaluation
        if self.val_set is not None:
            result = validation_loss(
                self.loss_module,
                self.val_set,
                self.tokenizers,
                self.processes,
                batch_size=self.config.data.batch_size,
                num_workers=self.config.data.num_workers,
                max_answer_tokens=self.config.data.max_answer_tokens,
                autocast=self._autocast,
            )
            self.metrics.write("eval", step=step, val_loss=result.loss, tokens=result.tokens, skipped=result.skipped)
            self.progress.print(f"step {step}: validation loss {result.loss:.4f}")
        if self.processes.main and evaluation.samples:
            samples = sample_generations(
                self.model,
                self.tokenizers,
                self.sample_set,
                evaluation.samples,
                beam=evaluation.beam,
                max_len=evaluation.max_len,
            )
            self.metrics.write("samples", step=step, samples=samples)
            for sample in samples:
                shown = f"{sample['prompt']!r} -> {sample['generated']!r}"
                self.progress.print(f"  {shown} (reference {sample['answer']!r})")
        set_train_mode(self.model, self.frozen, self.config.freeze)

    def _checkpoint(self) -> None:
        rng = gather_objects(self.processes, capture_rng(self.device))
        if not self.processes.main:
            return
        path = checkpoint_path(self.config.output_dir, self.position.step)
        payload = {
            "position": self.position.to_dict(),
            "model": model_state(self.model, self.config.checkpoints.full_model),
            "frozen_fingerprint": self.fingerprint,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "data": {"seed": self.config.seed, "epoch": self.position.epoch},
            "train_examples": len(self.train_set),
            "total_steps": self.total_steps,
            "config": self.config.to_dict(),
        }
        save_checkpoint(path, payload, keep=self.config.checkpoints.keep)
        self.metrics.write("checkpoint", step=self.position.step, path=str(path))

    def _finish(self) -> Path | None:
        """Check every process holds the same weights, then export the model directory (rank 0)."""
        digests = gather_objects(self.processes, parameter_digest(self.parameters))
        in_sync = len(set(digests)) == 1
        if not in_sync:
            log.error("the processes ended with different weights: %s", digests)
        if not self.processes.main:
            wait_for_all(self.processes)  # the run ends when rank 0 has written the model
            return None
        model_dir = self.model.save_pretrained(
            self.config.output_dir / MODEL_DIR,
            tokenizers=self.tokenizers,
            extra={"trained": {"steps": self.position.step, "config": self.config.to_dict()}},
        )
        self.metrics.write(
            "end", step=self.position.step, model_dir=str(model_dir), rank_digests=digests, ranks_in_sync=in_sync
        )
        self.progress.print(f"model written to {model_dir}")
        wait_for_all(self.processes)
        return model_dir


def parameter_digest(parameters: list[torch.nn.Parameter]) -> str:
    """SHA-256 of the trained weights' bytes: equal digests across processes mean bit-identical weights."""
    digest = hashlib.sha256()
    for parameter in parameters:
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_prompts(examples: list[Example], tokenizers: Tokenizers, manifest: Path) -> None:
    """Fail before training when a prompt is longer than the model's prompt length."""
    first_row: dict[str, int] = {}
    for example in examples:
        first_row.setdefault(example.prompt, example.row)
    for prompt, row in first_row.items():
        try:
            tokenizers.prompts([prompt], LongPrompt.refuse)  # training data is fixed, not cut
        except PromptTooLongError as error:
            raise ManifestError(manifest, str(error), row) from None

"""The dry run's time per step: the run's own step timed on this machine, on a copy of the model.

A step as the loop takes it (`trainer.loop.Trainer._step`): its `grad_accumulation` batches read from a DataLoader
set up as the run's (its workers, pinned memory on a GPU; a cached run's rows are its frozen backbone's outputs),
tokenised, each micro-batch's forward and backward pass under the run's precision (`trainer.steps`), then the
optimizer's step (`trainer.optimization`: clipping, Adam, the schedule), on the device the run would use. The first
step is a warm-up, not timed (Adam makes its state, the loader starts its workers, kernels are chosen); the mean of
the next ones is the estimate. The steps change a copy of the model, and the random streams are put back as they
were: the model's weights and what a run would draw next are as before.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from pengi_search.model import Pengi
from pengi_search.tokenization import Tokenizers
from trainer.config import TrainConfig
from trainer.data import Batch, Example, LoadAudio, example_loader
from trainer.distributed import use_threads
from trainer.features import FeatureDataset, clip_key, encode_clips
from trainer.model_setup import frozen_modules, set_dropout, set_train_mode, trainable_parameters
from trainer.objective import AnswerNll, encode_batch
from trainer.optimization import Optimization
from trainer.run_data import audio_dataset
from trainer.state import rng_kept
from trainer.steps import accumulate_gradients

WARM_UP_STEPS = 1  # not timed: its costs are paid once per run
TIMED_STEPS = 2


@dataclass(frozen=True)
class StepTiming:
    """Seconds of the timed steps (their mean), and what they were."""

    step: float  # from asking for its first batch to the end of the optimizer's step
    loading: float  # of it, waiting for the loader's batches
    optimizer: float  # of it, the optimizer's step
    encoding: float | None  # a cached run's encoding of one clip by the frozen backbone (clip loading included)
    device: torch.device
    precision: str
    batch_size: int
    accumulation: int

    def described(self, processes: int) -> str:
        """What was timed, in words, for the dry run's report."""
        rows = f"{self.batch_size * self.accumulation} rows"
        if self.accumulation > 1:
            rows += f" (data.batch_size {self.batch_size} x optimization.grad_accumulation {self.accumulation})"
        line = (
            f"timed: {TIMED_STEPS} steps of {rows} after {WARM_UP_STEPS} warm-up step, on {self.device} in "
            f"{self.precision}, on a copy of the model: each from loading its batches ({self.loading:.2f} s) "
            f"through the forward and backward passes to the optimizer's step ({self.optimizer:.2f} s)"
        )
        if processes > 1:
            line += f"; one process's step, without the exchange of gradients between the {processes} processes"
        return line


def time_steps(
    model: Pengi,
    tokenizers: Tokenizers,
    config: TrainConfig,
    examples: list[Example],
    *,
    cached: bool,
    device: torch.device,
    total_steps: int,
    load_audio: LoadAudio | None = None,
) -> StepTiming | None:
    """Time the run's step on the training `examples` (read in order, again from the first when there are too few
    for the steps); None where no row can be read (a cached run none of whose clips encode). `model` is left as
    it was, and so are the random streams."""
    use_threads(config.runtime.threads)  # timed as the run computes
    with rng_kept(device):
        trained = training_copy(model, config, device)
        rows = _rows(config, trained, examples, cached=cached, device=device, load_audio=load_audio)
        if rows is None:
            return None
        dataset, audio_shape, encoding = rows
        set_train_mode(trained, frozen_modules(trained, config.freeze), config.freeze)
        optimization = Optimization(
            trained,
            trainable_parameters(trained),
            config.optimization,
            total_steps=max(total_steps, 1),
            device=device,
            precision=config.runtime.precision,
        )
        batches = iter(_loader(config, dataset, cached=cached, device=device))
        step = _Step(AnswerNll(trained, cached=cached), optimization, tokenizers, config, device, audio_shape)
        timed = [step.timed(batches) for _ in range(WARM_UP_STEPS + TIMED_STEPS)][WARM_UP_STEPS:]
    mean = [sum(part) / len(timed) for part in zip(*timed, strict=True)]
    data = config.data
    accumulation = config.optimization.grad_accumulation
    precision = config.runtime.precision
    return StepTiming(*mean, encoding, device, precision, data.batch_size, accumulation)


def training_copy(model: Pengi, config: TrainConfig, device: torch.device) -> Pengi:
    """A copy of `model` on `device` with the run's dropout (`Trainer` sets it): steps on it leave `model` as it is."""
    trained = deepcopy(model)
    if config.model.dropout is not None:
        set_dropout(trained, config.model.dropout)
    return trained.to(device)


def _steps_rows(config: TrainConfig) -> int:
    """The rows the warm-up and the timed steps read."""
    return (WARM_UP_STEPS + TIMED_STEPS) * config.optimization.grad_accumulation * config.data.batch_size


def _rows(
    config: TrainConfig,
    model: Pengi,
    examples: list[Example],
    *,
    cached: bool,
    device: torch.device,
    load_audio: LoadAudio | None,
) -> tuple[Dataset, tuple[int, ...], float | None] | None:
    """The dataset the steps read, one row's audio shape, and (cached) the seconds one clip takes to encode: a
    cached run reads its rows' backbone outputs, which are encoded here for the rows the steps read, as the run
    encodes every clip before its first step. None: no clip encoded."""
    clip_samples = model.cfg.audio.clip_samples
    if not cached:
        return audio_dataset(config, model, examples, train=True, load_audio=load_audio), (clip_samples,), None
    read = audio_dataset(config, model, examples[: _steps_rows(config)], train=True, load_audio=load_audio)
    started = _clock(device)
    encoded = encode_clips(
        model.audio_encoder.backbone.eval(),
        read,
        1,
        device=device,
        batch_size=config.data.batch_size,
        num_workers=config.data.num_workers,
    )
    seconds = _clock(device) - started
    features = FeatureDataset(read.examples, encoded)
    if not len(features):
        return None
    clips = len({clip_key(example) for example in read.examples})  # each encoded once, or failed to load
    return features, features.shape, seconds / clips


def _loader(config: TrainConfig, dataset: Dataset, *, cached: bool, device: torch.device) -> DataLoader:
    """The run's loader (`Trainer._setup_loader`) over the rows the steps read, in order."""
    order = [row % len(dataset) for row in range(_steps_rows(config))]
    return example_loader(
        dataset,
        config.data.batch_size,
        order,
        num_workers=0 if cached else config.data.num_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # its own: the loader's seed is not drawn from the global stream
    )


def _clock(device: torch.device) -> float:
    """Now, once the GPU has done what it was given: its work is queued, and would otherwise be timed later."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class _Step:
    """The loop's step on the timing's copy of the model."""

    loss: AnswerNll
    optimization: Optimization
    tokenizers: Tokenizers
    config: TrainConfig
    device: torch.device
    audio_shape: tuple[int, ...]

    def timed(self, batches: Iterator[Batch]) -> tuple[float, float, float]:
        """One step on the next batches: (its seconds, of them loading, of them the optimizer's step)."""
        started = _clock(self.device)
        micro = list(itertools.islice(batches, self.config.optimization.grad_accumulation))
        loaded = _clock(self.device)
        max_tokens = self.config.data.max_answer_tokens
        inputs = [encode_batch(batch, self.tokenizers, max_tokens, self.audio_shape) for batch in micro]
        tokens = sum(item.tokens for item in inputs)
        precision = self.config.runtime.precision
        # One process: the loop's scale with all the step's answer tokens here.
        scale = 1.0 / max(tokens, 1.0)
        accumulate_gradients(self.loss, self.optimization, inputs, scale=scale, device=self.device, precision=precision)
        stepping = _clock(self.device)
        self.optimization.step()
        ended = _clock(self.device)
        return ended - started, loaded - started, ended - stepping

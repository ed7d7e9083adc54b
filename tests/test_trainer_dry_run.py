"""The dry run's time per step is the run's own step: loading its batches, the forward and backward passes and the
optimizer's step, on a copy of the model, leaving the model's weights and the random streams as they were."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import trainer.data
from pengi_search.errors import EXIT_FAILED
from trainer.config import load_config
from trainer.data import read_manifest
from trainer.model_setup import apply_freezing, build_model
from trainer.optimization import Optimization
from trainer.state import capture_rng
from trainer.step_timing import time_steps

from . import test_trainer
from .test_trainer import train_command, write_config

sounds = test_trainer.sounds  # the fixture: four sounds and their caption manifest

FAST = {"runtime": {"device": "cpu", "threads": 1}}  # one thread: a busy 2-core machine runs small steps faster


class FrozenClock:
    """`time.perf_counter` that moves only when told: what the test makes slow is all the timing sees."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_dry_runs_step_time_holds_loading_the_batches_and_the_optimizers_step(
    tmp_path, sounds, tiny_model_dir, monkeypatch
) -> None:
    """It timed the forward and backward passes alone, on random audio: 0.54 s a step where the run's steps took
    1.46 s. Here loading a clip takes 0.25 s and the optimizer's step 1 s, and nothing else takes any time: a step
    of 2 clips is 1.5 s, as the run would see it."""
    clock = FrozenClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    project_load_audio, optimizer_step = trainer.data.project_load_audio, Optimization.step

    def slow_load(path: Path, *, sample_rate: int) -> np.ndarray:
        clock.advance(0.25)
        return project_load_audio(path, sample_rate=sample_rate)

    def slow_step(self: Optimization) -> tuple[float, dict[str, float]]:
        clock.advance(1.0)
        return optimizer_step(self)

    monkeypatch.setattr(trainer.data, "project_load_audio", slow_load)
    monkeypatch.setattr(Optimization, "step", slow_step)
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", **FAST)  # batches of 2

    result = train_command(config_path, "--dry-run")

    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "time: 1.50 s a step, about 3.0 s an epoch on this machine" in said  # 4 rows: 2 steps an epoch
    assert (
        "timed: 2 steps of 2 rows after 1 warm-up step, on cpu in fp32, on a copy of the model: each from loading "
        "its batches (0.50 s) through the forward and backward passes to the optimizer's step (1.00 s)"
    ) in said


def test_timing_the_steps_leaves_the_models_weights_and_the_random_streams_as_they_were(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """The steps train (Adam moves the weights) and draw from the random streams (dropout): on a copy, with the
    streams put back, a run set up after the dry run starts from the same weights and draws the same numbers."""
    sections: dict[str, Any] = {**FAST, "model": {"init": str(tiny_model_dir), "dropout": 0.5}}
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", **sections)
    config = load_config(config_path)
    model, tokenizers = build_model(config, config_path, save_tokenizer=False)
    apply_freezing(model, config.freeze)
    model.eval()
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    before = capture_rng(torch.device("cpu"))

    timing = time_steps(
        model,
        tokenizers,
        config,
        read_manifest(sounds / "train.jsonl"),
        cached=False,
        device=torch.device("cpu"),
        total_steps=4,
    )

    assert timing is not None and timing.step > 0
    after = capture_rng(torch.device("cpu"))
    assert torch.equal(after.pop("torch"), before.pop("torch"))
    assert after == before  # Python's and NumPy's
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert not any(module.training for module in model.modules())  # as it was given, in eval mode


def test_a_step_that_runs_out_of_memory_is_a_problem_the_dry_run_names_not_a_traceback(
    tmp_path, sounds, tiny_model_dir, monkeypatch
) -> None:
    """The steps are timed on the run's device now, where a batch too large for the GPU fails as the run would."""

    def out_of_memory(self: Optimization) -> tuple[float, dict[str, float]]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Optimization, "step", out_of_memory)
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", **FAST)

    result = train_command(config_path, "--dry-run")

    assert result.exit_code == EXIT_FAILED, result.output
    said = " ".join(result.output.split())
    assert (
        "run: a step runs out of memory on cpu: lower data.batch_size (and raise optimization.grad_accumulation)"
    ) in said
    assert "time:" not in said and said.endswith("cannot train")

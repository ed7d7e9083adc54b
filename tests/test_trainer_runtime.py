"""`runtime.threads`: the CPU threads a run computes with, as `--threads` gives every other command that runs the
model."""

from __future__ import annotations

import torch

from pengi_search.errors import EXIT_USAGE

from . import test_trainer
from .test_trainer import train_command, write_config

sounds = test_trainer.sounds  # the fixture: four sounds and their caption manifest


def test_runtime_threads_sets_the_threads_the_run_and_its_dry_run_compute_with(
    tmp_path, sounds, tiny_model_dir, monkeypatch
) -> None:
    """`train` alone had no way to set PyTorch's threads: on this project's 2-core machine kept busy by other jobs,
    a small model's steps ran at 8 samples/s with PyTorch's two threads and at 205 with one (OMP_NUM_THREADS=1,
    the only way then). `runtime.threads` sets them for the run and for the steps its dry run times."""
    asked: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)  # the test process keeps its own threads
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", runtime={"threads": 1})

    for dry_run in (["--dry-run"], []):
        result = train_command(config_path, *dry_run)

        assert result.exit_code == 0, result.output
        assert asked == [1]
        asked.clear()


def test_runtime_threads_below_one_is_a_config_error(tmp_path, sounds, tiny_model_dir) -> None:
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", runtime={"threads": 0})

    result = train_command(config_path)

    assert result.exit_code == EXIT_USAGE
    assert "runtime.threads must be at least 1" in result.stderr

"""`train`: build or fine-tune Pengi from audio-text data (the `trainer` package does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import EXIT_USAGE, fail


def train(
    config: Annotated[Path, typer.Argument(help="Training configuration (YAML); see trainer/example.yaml.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the manifest, audio and model files; print the task mix.")
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's latest checkpoint.")] = False,
    resume_from: Annotated[
        Path | None, typer.Option("--resume-from", help="Continue from this checkpoint file.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or sample printing.")] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")
    ] = None,
) -> None:
    """Train Pengi on your data, or fine-tune a released model, on one GPU or many.

    The paper's procedure: task prompts, frozen language model and text encoder, trained audio encoder and mappers,
    cross-entropy on the answer tokens, Adam with linear warm-up. The result is a model directory that describe,
    index and classify load with --model. For several GPUs or nodes:
    torchrun --nproc-per-node 8 -m trainer config.yaml

    Example: pengi-search train config.yaml --dry-run
    """
    from trainer.config import ConfigError, parse_overrides
    from trainer.loop import run_training

    try:
        overrides = parse_overrides(set_ or [])
    except ConfigError as err:
        fail(str(err), EXIT_USAGE)
    code = run_training(config, dry_run=dry_run, resume=resume_from or resume, quiet=quiet or None, overrides=overrides)
    raise typer.Exit(code)

"""`train`: build or fine-tune Pengi from audio-text data (the `trainer` package does the work).

`python -m trainer` and `torchrun ... -m trainer` enter here too (see `trainer/__main__.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import err_console, handle_errors, out_console


@handle_errors
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
    from trainer.config import load_config, parse_overrides
    from trainer.dry_run import dry_run_report, print_dry_run
    from trainer.loop import train as run_training

    settings = load_config(config, parse_overrides(set_ or []))
    if quiet:  # without --quiet, the configuration's logging.quiet decides
        settings.logging.quiet = True
    if dry_run:
        report = dry_run_report(settings)
        print_dry_run(report, out_console)
        raise typer.Exit(report.exit_code)
    run_training(settings, resume=resume_from or resume, source=config, console=err_console)

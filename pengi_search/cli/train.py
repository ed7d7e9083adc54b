"""`train`: build or fine-tune Pengi from audio-text data (the `trainer` package does the work).

    pengi-search train init LABELS.csv --audio-root DIR   # manifests and a config from a recipe
    pengi-search train CONFIG.yaml [--dry-run|--resume]  # run (the same as `train run CONFIG.yaml`)
    pengi-search train export CHECKPOINT                 # a model directory from any checkpoint

`python -m trainer` and `torchrun ... -m trainer` enter here too (see `trainer/__main__.py`).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer

from ..errors import EXIT_PARTIAL
from ..paths import shown_path
from .common import err_console, handle_errors, out_console, warn
from .help_text import App, Group

if TYPE_CHECKING:
    from trainer.config import TrainConfig

RUN = "run"


class _RunByDefault(Group):
    """`pengi-search train CONFIG.yaml ...` runs: anything but a subcommand's name or --help goes to `run`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [RUN, *args]
        return super().parse_args(ctx, args)


app = App(
    cls=_RunByDefault,
    help="Train Pengi on your data, or fine-tune a released model: init, run (the default) and export.",
    no_args_is_help=True,
)


@app.command(RUN)
@handle_errors
def run(
    config: Annotated[Path, typer.Argument(help="Training configuration (YAML); see trainer/example.yaml.")],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Check the data, model, shapes and plan; estimate the time per epoch. Trains nothing."
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from the run's latest checkpoint, as the run was set: a config or --set that differs in "
            "its length, learning-rate schedule, batch, seed or precision is refused, but for a new "
            "optimization.max_steps or epochs given with --set, which trains it on.",
        ),
    ] = False,
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
    index and classify load with --model. Ctrl-C (or SIGTERM) stops after the current step and writes a checkpoint
    and the model. For several GPUs or nodes: torchrun --nproc-per-node 8 -m trainer config.yaml

    Example: pengi-search train config.yaml --dry-run
    """
    from trainer.checkpoint_files import checkpoint_to_resume
    from trainer.config import load_config, parse_overrides

    from ..torchrun_env import first_on_machine, said_once_per_machine

    if dry_run and not first_on_machine():
        return  # under torchrun: the first process of each machine checks the run and reports for them all
    # Read before the training code is imported (torch and the models: seconds), so that a mistyped key or
    # checkpoint fails at once (the run checks the checkpoint again, for library callers). What the first process of
    # the machine says, the others leave to it (`handle_errors`).
    with said_once_per_machine():
        overrides = parse_overrides(set_ or [])
        settings = load_config(config, overrides)
        # A checkpoint file named that is not there is a typo, said at once as a typo'd key is; what output_dir
        # holds (a run, for a new one; no checkpoint, for --resume) a dry run reports among every other problem.
        if resume_from is not None or not dry_run:
            checkpoint_to_resume(settings.output_dir, resume_from or resume)
    _run(settings, config, dry_run=dry_run, resume=resume_from or resume, given=set(overrides), quiet=quiet)


def _run(
    settings: TrainConfig, config: Path, *, dry_run: bool, resume: bool | Path, given: set[str], quiet: bool
) -> None:
    """The dry run or the run of `settings`, read from `config`; a resumed run takes a new length from the
    settings `given` (--set) alone."""
    from trainer.dry_run import dry_run_report, print_dry_run
    from trainer.run import train as run_training
    from trainer.stopping import RunInterrupted

    from ..messages import print_interrupted
    from ..stop_signals import interrupted_exit_code

    if quiet:  # without --quiet, the configuration's logging.quiet decides
        settings.logging.quiet = True
    if dry_run:
        report = dry_run_report(settings, source=config, resume=resume, given=given)
        print_dry_run(report, out_console, err_console)
        raise typer.Exit(report.exit_code)
    try:
        result = run_training(settings, resume=resume, given=given, source=config, console=err_console)
    except RunInterrupted as stop:  # after a step, its checkpoint and model written: say where, and how to go on
        print_interrupted(err_console, stop.kept)
        raise typer.Exit(interrupted_exit_code()) from None
    if result.audio_skipped and result.main:  # as everywhere: the command ran, but some audio could not be used
        warn("trained without the clips reported above, whose audio could not be used")
        raise typer.Exit(EXIT_PARTIAL)


@app.command("init")
@handle_errors
def init(
    labels: Annotated[
        Path,
        typer.Argument(
            help="CSV: file (or filename), label[, split][, caption][, group: clips of one recording, kept on one "
            "side of the validation split]."
        ),
    ],
    audio_root: Annotated[Path, typer.Option("--audio-root", help="Folder the CSV's file paths are relative to.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for manifests and config \\[default: train-<CSV name>].")
    ] = None,
    recipe: Annotated[
        str, typer.Option("--recipe", help="labels-cpu (minutes on a CPU), labels-gpu or finetune-released.")
    ] = "labels-cpu",
    validation: Annotated[
        float, typer.Option("--validation", help="Share of each label held out, without a split column.")
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds the split and the run.")] = 0,
    task: Annotated[str, typer.Option("--task", help="The label task's prompt (see pengi_search.prompts).")] = (
        "sound_event"
    ),
    captions: Annotated[
        bool, typer.Option("--captions/--no-captions", help="Also teach the caption prompt (for classify text).")
    ] = True,
    init_model: Annotated[
        str | None, typer.Option("--init", help="finetune-released: the model to start from.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an earlier init's files in --out (config.yaml included, edits and all) and remove those "
            "this init does not write (a stale test.jsonl); a run there stays.",
        ),
    ] = False,
) -> None:
    """Turn a labels CSV into training and validation manifests, a label map and a config from a recipe.

    A folder that already holds an earlier init's files is refused (nothing is written) unless --force.

    Then: pengi-search train OUT/config.yaml --dry-run, and pengi-search train OUT/config.yaml
    """
    from trainer.recipes import init_run

    folder = out or Path(f"train-{labels.stem}")
    result = init_run(
        labels,
        audio_root,
        folder,
        recipe=recipe,
        validation=validation,
        seed=seed,
        task=task,
        captions=captions,
        init=init_model,
        force=force,
    )
    counts = ", ".join(f"{count} {split}" for split, count in result.counts.items() if count)
    out_console.print(f"clips: {counts}", markup=False, soft_wrap=True)
    for split, path in result.manifests.items():
        out_console.print(f"{split} manifest: {shown_path(path)}", markup=False, soft_wrap=True)
    out_console.print(f"label map: {shown_path(result.label_map)}", markup=False, soft_wrap=True)
    out_console.print(f"config ({recipe}): {shown_path(result.config)}", markup=False, soft_wrap=True)
    for warning in result.warnings:
        warn(warning)
    out_console.print(
        f"next: pengi-search train {shlex.quote(shown_path(result.config))} --dry-run", markup=False, soft_wrap=True
    )


@app.command("export")
@handle_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A training checkpoint (…/checkpoints/step-*.pt or best.pt).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Model directory to write \\[default: model-step-<step> in the run folder holding the checkpoint].",
        ),
    ] = None,
) -> None:
    """Write the model of any training checkpoint as a model directory (describe, index, classify --model)."""
    from trainer.checkpoint_files import existing_checkpoint

    existing_checkpoint(checkpoint)  # before the training code loads (seconds); the export checks it again
    from trainer.export import export_checkpoint

    directory = export_checkpoint(checkpoint, output)  # by default beside the run's checkpoints, resolved
    out_console.print(f"model written to {shown_path(directory)}", markup=False, soft_wrap=True)

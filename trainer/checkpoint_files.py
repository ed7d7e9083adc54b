"""A run's checkpoint files: where they are, how they are named, which one a run continues from.

Apart from `trainer.state` (what a checkpoint holds), and without torch, so that the command line checks a
checkpoint the user named before it loads the training code (seconds).
"""

from __future__ import annotations

import re
from pathlib import Path

from pengi_search.errors import UsageError, not_found
from pengi_search.paths import as_path, as_typed

CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.pt"  # the training state at the best evaluation (not counted among the `keep` newest)
CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.pt$")
# What to give instead of a folder where a checkpoint file was wanted.
CHECKPOINT_HINT = "name one of its checkpoint files (…/checkpoints/step-*.pt or best.pt)"
# Why `train` (and its dry run) will not start a new run in an output_dir that holds one: bad usage (exit code 2),
# as `train init` refusing a taken folder and `--resume` without a checkpoint are; nothing was done, and the fix
# is in the command (--resume) or the configuration (output_dir).
HOLDS_A_RUN = "holds checkpoints of a run: continue it with --resume, or choose a new output_dir"


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def run_folder(checkpoint: Path, trained_in: Path) -> Path:
    """The run a checkpoint belongs to: the folder holding its `checkpoints/`, where the run lies now (also when it
    was copied from the machine that trained it); else, for a checkpoint file kept elsewhere, the output_dir it was
    trained in (`trained_in`)."""
    folder = checkpoint.resolve().parent
    return folder.parent if folder.name == CHECKPOINT_DIR else trained_in


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint was written at, from its name (`step-00000040.pt`); None for another file."""
    match = CHECKPOINT_NAME.match(path.name)
    return None if match is None else int(match.group(1))


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    found = [
        (step, p) for p in (output_dir / CHECKPOINT_DIR).glob("step-*.pt") if (step := checkpoint_step(p)) is not None
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path:
    """The run's newest step checkpoint, for `--resume`. None there is bad usage (exit code 2), as a missing
    `--resume-from` file is: the input asked for does not exist, nothing was done, and the fix is in the command."""
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        raise UsageError(
            as_typed(output_dir / CHECKPOINT_DIR), "no checkpoint to resume from: start the run without --resume"
        )
    return checkpoints[-1]


def existing_checkpoint(path: Path) -> Path:
    """`path` when it is a file; else bad usage (exit code 2) saying what it is instead (a folder, a broken link).

    The one check of a checkpoint named by the user (`--resume-from`, `train export`), for the command line and
    library callers alike."""
    if not path.is_file():
        raise not_found(path, "training checkpoint", in_folder=CHECKPOINT_HINT)
    return path


def checkpoint_to_resume(output_dir: Path, resume: bool | Path) -> Path | None:
    """The checkpoint a run continues from: none for a new run (`resume` False), whose `output_dir` must not hold
    a run (`HOLDS_A_RUN`), the latest in `output_dir` for `--resume` (True), the named file for `--resume-from` (a
    path). `train` and its dry run both ask here, before any set-up, so that a mistyped path or a taken
    output_dir fails at once and in the same words."""
    if not resume:
        if list_checkpoints(output_dir):
            raise UsageError(as_typed(output_dir), HOLDS_A_RUN)
        return None
    return latest_checkpoint(output_dir) if resume is True else existing_checkpoint(as_path(resume))

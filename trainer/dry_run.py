"""`--dry-run`: check a run's data and model sources without training, and show what it would do."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pengi_search.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL
from trainer.config import TrainConfig
from trainer.data import Example, LoadAudio, check_audio, read_manifest, task_mix

MISSING = "file not found"  # the reason `check_audio` gives for a file that is not there
PROBLEMS_SHOWN = 20  # per manifest; the counts cover them all


@dataclass
class ManifestCheck:
    role: str  # "train" or "validation"
    path: Path
    examples: int
    problems: list[tuple[Example, str]]
    tasks: Counter[str]

    @property
    def missing(self) -> int:
        return sum(reason == MISSING for _, reason in self.problems)

    @property
    def broken(self) -> int:
        return len(self.problems) - self.missing

    @property
    def usable(self) -> int:
        return self.examples - len(self.problems)


@dataclass
class DryRunReport:
    manifests: list[ManifestCheck]
    model_problems: list[str] = field(default_factory=list)
    plan: dict[str, int | None] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0: ready; 1: the run cannot start (a model file is missing, no usable example); 3: some audio unusable."""
        if self.model_problems or any(check.usable == 0 for check in self.manifests):
            return EXIT_FAILED
        return EXIT_PARTIAL if any(check.problems for check in self.manifests) else EXIT_OK


def dry_run_report(config: TrainConfig, *, load_audio: LoadAudio | None = None) -> DryRunReport:
    """Read the manifests, decode every clip, check the model's files exist and work out the step plan.

    A manifest that cannot be parsed raises `ManifestError`, as training would.
    """
    roles = [("train", config.data.train), ("validation", config.data.validation)]
    manifests = [_check_manifest(role, path, load_audio) for role, path in roles if path is not None]
    return DryRunReport(manifests, _model_problems(config), _plan(config, manifests[0].usable))


def _check_manifest(role: str, path: Path, load_audio: LoadAudio | None) -> ManifestCheck:
    examples = read_manifest(path)
    _, problems = check_audio(examples, load_audio)
    return ManifestCheck(role, path, len(examples), problems, task_mix(examples))


def _model_problems(config: TrainConfig) -> list[str]:
    section = config.model
    paths = {
        "model.init": section.init,
        "model.language_model": section.language_model,
        "model.text_encoder": section.text_encoder,
        "model.gpt2_tokenizer": section.gpt2_tokenizer,
        "model.clip_tokenizer": section.clip_tokenizer,
    }
    return [f"{key}: {path} does not exist" for key, path in paths.items() if path is not None and not path.exists()]


def _plan(config: TrainConfig, usable: int) -> dict[str, int | None]:
    """Steps per epoch for the usable examples, with the process count torchrun would give (WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    opt, batch = config.optimization, config.data.batch_size
    per_process = -(-usable // world)
    steps_per_epoch = per_process // batch // opt.grad_accumulation
    return {
        "processes": world,
        "examples_per_step": batch * opt.grad_accumulation * world,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": opt.max_steps or (opt.epochs or 0) * steps_per_epoch,
        "warmup_steps": opt.warmup_steps,
    }


def print_dry_run(report: DryRunReport, console: Console) -> None:
    for check in report.manifests:
        console.print(
            f"[bold]{check.role}[/] {check.path}: {check.examples} examples, {check.usable} usable, "
            f"{check.missing} missing, {check.broken} unreadable",
            soft_wrap=True,
        )
        for example, reason in check.problems[:PROBLEMS_SHOWN]:
            console.print(f"  row {example.row}: {example.audio}: {reason}", soft_wrap=True)
        if len(check.problems) > PROBLEMS_SHOWN:
            console.print(f"  ... and {len(check.problems) - PROBLEMS_SHOWN} more")
        table = Table("task", "examples", "share", title=f"{check.role} task mix")
        for task, count in check.tasks.most_common():
            table.add_row(task, str(count), f"{count / check.examples:.1%}")
        console.print(table)
    for problem in report.model_problems:
        console.print(f"[bold red]model:[/] {problem}", soft_wrap=True)
    plan = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in report.plan.items())
    console.print(f"plan: {plan}", soft_wrap=True)
    verdict = {
        EXIT_OK: "ready to train",
        EXIT_FAILED: "cannot train",
        EXIT_PARTIAL: "ready; unusable clips will be skipped",
    }
    console.print(f"[bold]{verdict[report.exit_code]}[/]")

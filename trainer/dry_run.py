"""`--dry-run`: check a run's data, model sources and architecture without training, and show what it would do:
the task mix, the step plan, the shape rules of the architecture (see `trainer/example.yaml`), the vocabulary
against the tokenizer, warm-up against the run's length, and the time an epoch should take (the run's own step timed
on this machine, on a copy of the model: `trainer.step_timing`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pengi_search.choices import LongPrompt
from pengi_search.config import PengiConfig
from pengi_search.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, PengiSearchError
from pengi_search.messages import print_error, print_warning
from pengi_search.model import Pengi
from pengi_search.paths import shown_path
from pengi_search.tokenization import PromptTooLongError, Tokenizers
from pengi_search.torchrun_env import place, process_count
from pengi_search.units import duration_text
from trainer.checkpoint_files import checkpoint_to_resume
from trainer.config import ConfigError, TrainConfig
from trainer.data import MISSING, Example, LoadAudio, check_audio, read_manifest, task_mix
from trainer.distributed import resolve_device
from trainer.resume_plan import (
    EpochSize,
    RunRecord,
    changed_warning,
    check_resume,
    check_steps,
    mismatch_explained,
    planned_resume,
    read_run_record,
    said_changes,
)
from trainer.run_data import FEATURE_DIR, clips_to_encode
from trainer.state import resume_mismatch, seed_everything

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
    config_problems: list[str] = field(default_factory=list)  # bad usage, each as `train` refuses it (exit 2)
    model_problems: list[str] = field(default_factory=list)
    plan: dict[str, int | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    run_problems: list[str] = field(default_factory=list)  # what the run itself would refuse (too few examples...)
    resume: list[str] = field(default_factory=list)  # what resuming would do, as the run says it
    # Seconds: per step (of it loading, the optimizer's step), per epoch, encoding the clips (`_time_steps`).
    timing: dict[str, float] = field(default_factory=dict)
    timed: str | None = None  # what was timed, in words
    left_out: str | None = None  # the rows each epoch leaves out, as no whole step takes them (`left_out`)

    @property
    def exit_code(self) -> int:
        """0: ready; 2: a bad configuration (as `train` says); 1: the run cannot start (a model file is missing, no
        usable example); 3: some audio unusable."""
        if self.config_problems:
            return EXIT_USAGE
        if self.model_problems or self.run_problems or any(check.usable == 0 for check in self.manifests):
            return EXIT_FAILED
        return EXIT_PARTIAL if any(check.problems for check in self.manifests) else EXIT_OK


def dry_run_report(
    config: TrainConfig,
    *,
    load_audio: LoadAudio | None = None,
    source: Path | None = None,
    resume: bool | Path = False,
    given: Collection[str] = (),
) -> DryRunReport:
    """Read the manifests, decode every clip, check the model's files exist and work out the step plan.

    `resume` and `given` as `train` takes them (--resume, --resume-from; the keys given with --set). What `train`
    refuses before its first step is in the report, all of it, in the words `train` stops with on the first: an
    output_dir with checkpoints for a new run, no checkpoint for a resumed one, or a configuration that is not the
    resumed run's (`checkpoint_to_resume`, `check_resume`, `check_steps`) are among its `config_problems`, a
    checkpoint that cannot be read among its `run_problems`. Only a manifest that cannot be parsed raises
    (`ManifestError`): nothing can be checked without its rows.
    """
    source = source or Path("<config>")
    problems = [str(ConfigError(source, problem)) for problem in config.problems(cuda=torch.cuda.is_available())]
    unreadable: list[str] = []  # a checkpoint to resume that cannot be read: the run cannot start (exit 1)
    record, length_change = _resumed_run(config, resume, given, source, problems, unreadable)
    roles = [("train", config.data.train), ("validation", config.data.validation)]
    manifests = [_check_manifest(role, path, load_audio) for role, path in roles if path is not None]
    report = DryRunReport(manifests, problems, _model_problems(config), run_problems=unreadable)
    built = None if report.model_problems else _build_model(config, report, source)
    train = manifests[0]
    rows = epoch_rows(train, built.cached if built is not None else _caches_features(config))
    report.plan = _plan(config, rows)
    report.run_problems += _run_problems(config, report.plan, rows if train.usable else 0)
    steps = bool(report.plan["steps_per_epoch"])  # none: the run cannot start, and its error says why
    if steps:
        report.warnings += _plan_warnings(report.plan)
        report.left_out = left_out(config, rows, report.plan)
    if record is not None:
        epoch = EpochSize(rows, report.plan["processes"] or 1, report.plan["total_steps"] or 0)
        try:
            length_change = length_change or check_steps(config, record, epoch, given, source)
        except ConfigError as error:  # the run refuses it once its set-up has counted the rows
            report.config_problems.append(str(error))
        else:
            _plan_resume(config, record, length_change, report)
        if built is not None:
            _check_resumed_model(config, record, built.model, report)
    if built is not None and steps and not (report.config_problems or report.run_problems):
        _time_steps(built, config, report, load_audio)  # not a run that would be refused: fixed first, timed then
    return report


def epoch_rows(train: ManifestCheck, cached: bool) -> int:
    """The rows an epoch of the run reads, which its steps are counted from (`TrainConfig.steps_per_epoch`): a
    cached run's are the rows whose clip encoded (its dataset keeps only them), an uncached run's every row of the
    manifest (a clip that fails is left out of its batch, which still counts)."""
    return train.usable if cached else train.examples


def _caches_features(config: TrainConfig) -> bool:
    """Whether the run would cache its audio features, from its settings, for a model that could not be built: the
    run asks the model (`caches_features`), whose backbone these settings freeze."""
    return config.data.cache_features and (config.freeze.audio_encoder or config.freeze.audio_backbone)


def _resumed_run(
    config: TrainConfig,
    resume: bool | Path,
    given: Collection[str],
    source: Path,
    problems: list[str],
    unreadable: list[str],
) -> tuple[RunRecord | None, str | None]:
    """The run a resume continues, and how its length changes (None: it does not), as `train` finds them before
    any set-up. What `train` refuses there goes into `problems` (bad usage, exit code 2) or `unreadable` (a
    checkpoint that cannot be read, exit code 1) instead, and the dry run goes on to find the rest."""
    try:
        checkpoint = checkpoint_to_resume(config.output_dir, resume)
        record = None if checkpoint is None else read_run_record(checkpoint)
        return record, None if record is None else check_resume(config, record, given, source)
    except PengiSearchError as error:
        (problems if error.exit_code == EXIT_USAGE else unreadable).append(str(error))
        return None, None


def _plan_resume(config: TrainConfig, record: RunRecord, length_change: str | None, report: DryRunReport) -> None:
    """What resuming `record` would do, in the run's words: where it starts and stops, or that it already finished."""
    total, per_epoch = report.plan["total_steps"] or 0, report.plan["steps_per_epoch"] or 0
    resume, warnings = planned_resume(config, record, length_change, total, per_epoch)
    report.resume += resume
    report.warnings += warnings


def _check_resumed_model(config: TrainConfig, record: RunRecord, model: Pengi, report: DryRunReport) -> None:
    """What the resume does with the model, as the run does it: the checkpoint's weights must fit it (else the run
    cannot start), and the settings the run goes on with otherwise than it was started are warned of."""
    from trainer.model_setup import frozen_fingerprint

    changed = said_changes(config, record)
    payload, full_model = record.payload, config.checkpoints.full_model
    if "model" in payload and "frozen_fingerprint" in payload:  # a run's checkpoint holds both; a hand-made one may not
        mismatch = resume_mismatch(model, payload, record.checkpoint, frozen_fingerprint(model), full_model)
        if mismatch is not None:
            report.run_problems.append(str(mismatch_explained(mismatch, changed)))
    if (warning := changed_warning(changed)) is not None:
        report.warnings.append(warning)


@dataclass
class _BuiltModel:
    """The model as training builds it, for the checks and the timing that need it."""

    model: Pengi
    tokenizers: Tokenizers
    cached: bool  # the run caches the frozen backbone's outputs (`data.cache_features`)
    encodings: int  # clips x views the run encodes before its first step (none: `features/` holds them)


def _build_model(config: TrainConfig, report: DryRunReport, source: Path) -> _BuiltModel | None:
    """Build the model as training would (a failure is a problem, not an exception) and check its shapes; None when
    it cannot be built or breaks a shape rule."""
    from trainer.model_setup import apply_freezing, build_model, caches_features

    seed_everything(config.seed)  # the run's initial weights, which its feature cache is keyed on
    try:
        model, tokenizers = build_model(config, source, save_tokenizer=False)
    except PengiSearchError as error:
        report.model_problems.append(str(error))
        return None
    except (ValueError, RuntimeError) as error:  # a module's own size checks (e.g. heads that do not divide)
        report.model_problems.append(f"the architecture cannot be built: {error}")
        return None
    prompts = sorted({example.prompt for path in _manifest_paths(config) for example in read_manifest(path)})
    report.model_problems += shape_problems(model, tokenizers, prompts, config.data.max_answer_tokens)
    report.warnings += shape_warnings(model.cfg)
    if report.model_problems:
        return None
    apply_freezing(model, config.freeze)
    cached = caches_features(config, model)
    encodings = clips_to_encode(config, model, read_manifest(config.data.train)) if cached else 0
    return _BuiltModel(model, tokenizers, cached, encodings)


def _manifest_paths(config: TrainConfig) -> list[Path]:
    return [path for path in (config.data.train, config.data.validation) if path is not None]


def shape_problems(model: Pengi, tokenizers: Tokenizers, prompts: list[str], max_answer_tokens: int) -> list[str]:
    """The architecture's shape rules (documented in trainer/example.yaml) that this model and data break."""
    cfg: PengiConfig = model.cfg
    problems = []
    width = model.gpt.get_input_embeddings().embedding_dim
    vocab = model.gpt.get_input_embeddings().num_embeddings
    if width % cfg.mapper.num_heads:
        problems.append(
            f"the language model's width {width} is not divisible by mapper.num_heads {cfg.mapper.num_heads}"
        )
    if cfg.decoder.hf_config is None and cfg.decoder.n_embd % cfg.decoder.n_head:
        problems.append(f"decoder.n_embd {cfg.decoder.n_embd} is not divisible by decoder.n_head {cfg.decoder.n_head}")
    if len(tokenizers.gpt2) > vocab:
        problems.append(f"the tokenizer has {len(tokenizers.gpt2)} tokens, the language model's vocabulary {vocab}")
    positions = cfg.decoder.n_positions if cfg.decoder.hf_config is None else None
    if positions is not None and cfg.prefix_tokens + max_answer_tokens > positions:
        problems.append(
            f"2 x mapper.prefix_length + data.max_answer_tokens = {cfg.prefix_tokens + max_answer_tokens} "
            f"exceeds the language model's {positions} positions"
        )
    try:
        tokenizers.prompts(prompts, LongPrompt.refuse)  # as training does (run_data.check_prompts)
    except PromptTooLongError as error:
        problems.append(f"{error}: raise text_prompt_length (and mapper.clip_length without a text encoder)")
    return problems


def shape_warnings(cfg: PengiConfig) -> list[str]:
    """Shapes that run but are probably not what was meant."""
    if not cfg.use_text_encoder and cfg.text_prompt_length != cfg.mapper.clip_length:
        tokens = cfg.text_prompt_length + cfg.mapper.prefix_length - cfg.mapper.clip_length
        return [
            f"without a text encoder, text_prompt_length ({cfg.text_prompt_length}) should equal mapper.clip_length "
            f"({cfg.mapper.clip_length}): the prompt's mapper then writes {tokens} prefix tokens, not "
            f"mapper.prefix_length ({cfg.mapper.prefix_length})"
        ]
    return []


def _plan_warnings(plan: dict[str, int | None]) -> list[str]:
    total, warmup = plan.get("total_steps") or 0, plan.get("warmup_steps") or 0
    warnings = []
    if warmup >= total:
        warnings.append(
            f"warm-up ({warmup} steps) is not shorter than the whole run ({total} steps): the learning rate never "
            "reaches its peak; lower optimization.warmup_steps"
        )
    return warnings


def _run_problems(config: TrainConfig, plan: dict[str, int | None], rows: int) -> list[str]:
    """What `train` would refuse before its first step: the same checks, the same words. `rows`: an epoch's, or 0
    where no example is usable (said per manifest)."""
    problems = []
    if plan.get("steps_per_epoch") == 0 and rows:
        too_few = config.too_few_for_a_step(rows, plan.get("processes") or 1)
        problems.append(f"{shown_path(config.data.train)}: {too_few}")
    return problems


def _time_steps(built: _BuiltModel, config: TrainConfig, report: DryRunReport, load_audio: LoadAudio | None) -> None:
    """The run's step timed on this machine (`trainer.step_timing`), and from it an epoch; with cached features,
    the one-off encoding of the training clips that `features/` lacks as well. Called only for a run that would
    start (no problem found before it, the device's among them)."""
    from trainer.step_timing import time_steps

    here = place()
    try:
        device = resolve_device(config.runtime.device, here.local_rank)
    except PengiSearchError as error:  # this process's GPU is not there: the run refuses it before its set-up
        (report.config_problems if error.exit_code == EXIT_USAGE else report.run_problems).append(str(error))
        return
    plan = report.plan
    examples = read_manifest(config.data.train)
    if built.cached:  # the run's cached rows are those whose clip encoded: the steps read no other
        unusable = {example.row for example, _ in report.manifests[0].problems}
        examples = [example for example in examples if example.row not in unusable]
    try:
        timing = time_steps(
            built.model,
            built.tokenizers,
            config,
            examples,
            cached=built.cached,
            device=device,
            total_steps=plan.get("total_steps") or 0,
            load_audio=load_audio,
        )
    except torch.cuda.OutOfMemoryError:  # the name torch 2.3 has
        report.run_problems.append(
            f"a step runs out of memory on {device}: lower data.batch_size (and raise optimization.grad_accumulation)"
        )
        return
    if timing is None:  # no clip encodes: the run cannot start, as its manifest's report says
        return
    report.timing = {
        "step": timing.step,
        "loading": timing.loading,
        "optimizer": timing.optimizer,
        "epoch": timing.step * (plan.get("steps_per_epoch") or 0),
    }
    if timing.encoding is not None:
        report.timing["encoding"] = timing.encoding * built.encodings
    report.timed = timing.described(plan.get("processes") or 1)


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
    missing = [(key, path) for key, path in paths.items() if path is not None and not path.exists()]
    return [f"{key}: {shown_path(path)} does not exist" for key, path in missing]


def left_out(config: TrainConfig, rows: int, plan: dict[str, int | None]) -> str | None:
    """What an epoch of `rows` leaves out: the rows past its last whole step (`batch_size x grad_accumulation`,
    on every process), as the run's loader drops them; None when they fill whole steps. The shuffle draws other
    rows each epoch, so none is left out of the whole run."""
    per_step, steps = plan["examples_per_step"] or 0, plan["steps_per_epoch"] or 0
    left = rows - per_step * steps
    if left <= 0:  # under torchrun the processes' shares are padded: an epoch may read a row twice, never less
        return None
    data, accumulation = config.data, config.optimization.grad_accumulation
    return (
        f"each epoch trains {per_step * steps} of its {rows} rows: the {left} left over fill no whole step of "
        f"{per_step} (data.batch_size {data.batch_size} x optimization.grad_accumulation {accumulation}"
        f"{'' if per_step == data.batch_size * accumulation else ' x processes'}); the shuffle leaves out other "
        "rows each epoch"
    )


def _plan(config: TrainConfig, rows: int) -> dict[str, int | None]:
    """Steps per epoch for an epoch's `rows` (`epoch_rows`), with the process count torchrun would give
    (WORLD_SIZE)."""
    world = process_count()
    steps_per_epoch = config.steps_per_epoch(rows, world)
    return {
        "processes": world,
        "examples_per_step": config.data.batch_size * config.optimization.grad_accumulation * world,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": config.total_steps(steps_per_epoch),
        "warmup_steps": config.optimization.warmup_steps,
    }


def print_dry_run(report: DryRunReport, console: Console, errors: Console) -> None:
    """The report on `console`; on `errors`, each problem of the configuration in the words `train` stops with."""
    for problem in report.config_problems:
        print_error(errors, problem)
    for check in report.manifests:
        _print_manifest(check, console)
    for problem in report.model_problems:
        console.print(Text.assemble(("model:", "bold red"), " ", problem), soft_wrap=True)
    for problem in report.run_problems:
        console.print(Text.assemble(("run:", "bold red"), " ", problem), soft_wrap=True)
    _print_plan(report, console)
    for warning in report.warnings:
        print_warning(console, warning)
    verdict = {
        EXIT_OK: "ready to train" + (" (see the warnings)" if report.warnings else ""),
        EXIT_USAGE: "cannot train: fix the configuration",
        EXIT_FAILED: "cannot train",
        EXIT_PARTIAL: "ready; unusable clips will be skipped",
    }
    console.print(f"[bold]{verdict[report.exit_code]}[/]")


def _print_plan(report: DryRunReport, console: Console) -> None:
    """The steps the run would train, the rows an epoch leaves out, the resume, and the time it would take."""
    if report.plan.get("steps_per_epoch"):  # no step: the run's error says why, and there is no plan to show
        plan = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in report.plan.items())
        console.print(f"plan: {plan}", soft_wrap=True)
    if report.left_out is not None:
        console.print(report.left_out, soft_wrap=True, markup=False, highlight=False)
    for line in report.resume:
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    if report.timing:
        timing = report.timing
        line = f"time: {timing['step']:.2f} s a step, about {duration_text(timing['epoch'])} an epoch on this machine"
        if timing.get("encoding"):
            line += f"; encoding the clips first (frozen encoder, cached): about {duration_text(timing['encoding'])}"
        elif "encoding" in timing:
            line += f"; the clips' features are already in {FEATURE_DIR}/ (frozen encoder, cached): no encoding"
        console.print(line, soft_wrap=True)
        if report.timed is not None:
            console.print(report.timed, soft_wrap=True, markup=False, highlight=False)


def _print_manifest(check: ManifestCheck, console: Console) -> None:
    console.print(
        Text.assemble(
            (check.role, "bold"),
            f" {shown_path(check.path)}: {check.examples} examples, {check.usable} usable, {check.missing} missing, "
            f"{check.broken} unreadable",
        ),
        soft_wrap=True,
    )
    for example, reason in check.problems[:PROBLEMS_SHOWN]:  # the configuration resolved the paths: shown as typed
        console.print(f"  row {example.row}: {shown_path(example.audio)}: {reason}", markup=False, soft_wrap=True)
    if len(check.problems) > PROBLEMS_SHOWN:
        console.print(f"  ... and {len(check.problems) - PROBLEMS_SHOWN} more")
    table = Table("task", "examples", "share", title=f"{check.role} task mix")
    for task, count in check.tasks.most_common():
        table.add_row(task, str(count), f"{count / check.examples:.1%}")
    console.print(table)

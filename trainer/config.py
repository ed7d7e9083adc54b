"""The training configuration: a YAML file read into typed sections (see `trainer/example.yaml` for every key).

Relative paths in the file are resolved against the file's folder. Unknown keys, wrong types and impossible values
raise `ConfigError` naming the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pengi_search.choices import Device
from pengi_search.errors import UsageError, empty_file
from pengi_search.paths import as_path, home_expanded, shown_path
from pengi_search.text_files import read_text
from pengi_search.units import count_text

PRECISIONS = ("fp32", "bf16", "fp16")
MODEL_PARTS = ("audio_encoder", "audio_projection", "mappers", "language_model", "text_encoder")
METRICS = ("auto", "accuracy", "loglik_accuracy", "val_loss")
DEVICES = tuple(d.value for d in Device)


class ConfigError(UsageError):
    """A training configuration that cannot be used; names the file (or the override) and the reason."""


class _Invalid(ValueError):
    """A bad value; the loader adds the file name."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _Invalid(message)


@dataclass
class ModelSection:
    init: Path | None = None  # model directory or released .pth to fine-tune
    architecture: str | dict | None = None  # preset name or PengiConfig fields, to train from scratch
    language_model: Path | None = None  # causal LM (from scratch): a transformers directory or a .gguf file
    text_encoder: Path | None = None  # Hugging Face CLIPModel directory (from scratch)
    audio_encoder: str = "htsat"  # from scratch: htsat, aisfx or transformers (see trainer/audio_parts.py)
    audio_weights: str | None = None  # htsat: a CLAP checkpoint; transformers: a directory or cached hub name
    audio_pooling: str = "max"  # aisfx: "attention" pools its time steps with a trained attention instead
    gpt2_tokenizer: Path | None = None  # the language model's tokenizer (a directory), whatever the model
    clip_tokenizer: Path | None = None
    train_tokenizer: int | None = None  # from scratch, no tokenizer: train a byte-level BPE of this many tokens
    dropout: float | None = None  # overrides the p of every Dropout layer

    def __post_init__(self) -> None:
        _require(
            self.init is not None or self.architecture is not None,
            "model: give `init` (fine-tune) or `architecture` (from scratch)",
        )
        scratch_only = [
            name
            for name in ("language_model", "text_encoder", "audio_weights", "train_tokenizer")
            if getattr(self, name) is not None
        ]
        if self.audio_encoder != "htsat":
            scratch_only.append("audio_encoder")
        if self.audio_pooling != "max":
            scratch_only.append("audio_pooling")
        _require(
            self.init is None or not scratch_only,
            f"model: {', '.join(scratch_only)} load weights into a model built from scratch; `init` already has them",
        )
        _require(self.dropout is None or 0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        _require(self.train_tokenizer is None or self.train_tokenizer >= 300, "model.train_tokenizer must be >= 300")


@dataclass
class FreezeSection:
    language_model: bool = True
    text_encoder: bool = True
    audio_encoder: bool = False  # the whole audio encoder, its projection included
    audio_backbone: bool = False  # the audio encoder before its projection (its outputs can then be cached)
    batch_norm_statistics: bool = False  # BatchNorm layers use (and keep) their running statistics


@dataclass
class DataSection:
    train: Path | None = None
    validation: Path | None = None
    batch_size: int = 8  # per process and per micro-batch
    num_workers: int = 4
    max_answer_tokens: int = 77
    cache_features: bool = True  # with a frozen audio backbone: encode each clip (view) once, then reuse it

    def __post_init__(self) -> None:
        _require(self.train is not None, "data.train (a manifest) is required")
        _require(self.batch_size >= 1, "data.batch_size must be at least 1")
        _require(self.num_workers >= 0, "data.num_workers must be non-negative")
        _require(self.max_answer_tokens >= 1, "data.max_answer_tokens must be at least 1")


@dataclass
class AugmentationSection:
    """Training clips only; every draw is seeded by (seed, epoch or view, example)."""

    views: int = 1  # augmented versions of each clip that cached features hold (epoch e uses view e % views)
    gain_db: float = 0.0  # random gain, uniform in +-gain_db
    time_shift: float = 0.0  # circular shift by up to this fraction of the clip
    noise_snr_db: float | None = None  # white noise at a signal-to-noise ratio uniform in [this, this + 20] dB
    mix: float = 0.0  # probability of mixing in another training clip, 5 to 15 dB quieter (label unchanged)
    time_mask: float = 0.0  # SpecAugment-style: silence up to this fraction of the clip (two spans)
    frequency_mask: float = 0.0  # SpecAugment-style: remove a band of up to this fraction of the spectrum

    def __post_init__(self) -> None:
        _require(self.views >= 1, "augmentation.views must be at least 1")
        _require(self.gain_db >= 0, "augmentation.gain_db must be non-negative")
        for name in ("time_shift", "mix", "time_mask", "frequency_mask"):
            _require(0.0 <= getattr(self, name) <= 1.0, f"augmentation.{name} must be in [0, 1]")

    @property
    def active(self) -> bool:
        amounts = (self.gain_db, self.time_shift, self.mix, self.time_mask, self.frequency_mask)
        return any(amounts) or self.noise_snr_db is not None


@dataclass
class OptimizationSection:
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 2000
    max_steps: int | None = None
    epochs: int | None = None
    grad_clip: float | None = 1.0
    grad_accumulation: int = 1
    max_minutes: float | None = None  # a time budget: stop (and export) this long after the run started
    part_lr: dict | None = None  # learning rate per part: audio_encoder, audio_projection, mappers, language_model,
    # text_encoder (the others use lr)

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optimization.lr must be positive")
        for part, value in (self.part_lr or {}).items():
            _require(
                part in MODEL_PARTS, f"optimization.part_lr: unknown part {part!r}; parts: {', '.join(MODEL_PARTS)}"
            )
            _require(_as_float(value) is not None and _as_float(value) > 0, f"optimization.part_lr.{part} must be > 0")
        _require(self.weight_decay >= 0, "optimization.weight_decay must be non-negative")
        _require(self.warmup_steps >= 0, "optimization.warmup_steps must be non-negative")
        both = "both are set: make one null, e.g. --set optimization.epochs=null"  # a recipe's epochs + --set max_steps
        _require(
            (self.max_steps is None) != (self.epochs is None),
            f"optimization: give exactly one of max_steps and epochs ({both if self.epochs else 'neither is set'})",
        )
        _require(self.max_steps is None or self.max_steps >= 1, "optimization.max_steps must be at least 1")
        _require(self.epochs is None or self.epochs >= 1, "optimization.epochs must be at least 1")
        _require(self.grad_clip is None or self.grad_clip > 0, "optimization.grad_clip must be positive or null")
        _require(self.grad_accumulation >= 1, "optimization.grad_accumulation must be at least 1")
        _require(self.max_minutes is None or self.max_minutes > 0, "optimization.max_minutes must be positive")


@dataclass
class RuntimeSection:
    device: str = "auto"
    precision: str = "fp32"
    threads: int | None = None  # PyTorch's CPU threads in each process; None: its default, one per core

    def __post_init__(self) -> None:
        _require(self.device in DEVICES, f"runtime.device must be one of {', '.join(DEVICES)}")
        _require(self.threads is None or self.threads >= 1, "runtime.threads must be at least 1")
        _require(self.precision in PRECISIONS, f"runtime.precision must be one of {', '.join(PRECISIONS)}")

    def problem(self, cuda: bool) -> str | None:
        """Why a machine where PyTorch does (`cuda`) or does not see a CUDA GPU cannot run as asked, or None: a
        CUDA device asked for, or mixed precision (autocast here is CUDA only)."""
        if self.device == "cuda" and not cuda:
            return "runtime.device is cuda, but PyTorch sees no CUDA GPU"
        if self.precision != "fp32" and (self.device == "cpu" or not cuda):
            return f"runtime.precision {self.precision} needs a CUDA device; this run is on the CPU"
        return None


@dataclass
class LoggingSection:
    every: int = 10
    quiet: bool = False
    plot: bool = True  # metrics.png beside metrics.jsonl: loss and validation curves (needs matplotlib)

    def __post_init__(self) -> None:
        _require(self.every >= 1, "logging.every must be at least 1")


@dataclass
class EvaluationSection:
    every: int = 1000
    samples: int = 4
    beam: int = 3  # 1: greedy
    max_len: int = 30
    metric: str = "auto"  # what picks the best model: accuracy, loglik_accuracy, val_loss (auto: accuracy if any)
    patience: int | None = None  # stop after this many evaluations without a better metric (null: never)
    max_examples: int | None = None  # validation examples whose answers are generated and scored (null: all)
    top_k: int = 5  # loglik: also count a label among the k most likely as right

    def __post_init__(self) -> None:
        _require(self.every >= 1, "evaluation.every must be at least 1")
        _require(self.metric in METRICS, f"evaluation.metric must be one of {', '.join(METRICS)}")
        _require(self.patience is None or self.patience >= 1, "evaluation.patience must be at least 1")
        _require(self.max_examples is None or self.max_examples >= 1, "evaluation.max_examples must be >= 1")
        _require(self.top_k >= 1, "evaluation.top_k must be at least 1")
        _require(self.samples >= 0, "evaluation.samples must be non-negative")
        _require(self.beam >= 1, "evaluation.beam must be at least 1")
        _require(self.max_len >= 1, "evaluation.max_len must be at least 1")


@dataclass
class CheckpointSection:
    every: int = 1000
    keep: int = 3
    full_model: bool = False  # save frozen weights too (else only what training changes)
    keep_best: bool = True  # checkpoints/best.pt and best-model/ follow the best evaluation

    def __post_init__(self) -> None:
        _require(self.every >= 1, "checkpoints.every must be at least 1")
        _require(self.keep >= 1, "checkpoints.keep must be at least 1")


@dataclass
class TrainConfig:
    output_dir: Path | None = None
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    freeze: FreezeSection = field(default_factory=FreezeSection)
    data: DataSection = field(default_factory=DataSection)
    augmentation: AugmentationSection = field(default_factory=AugmentationSection)
    optimization: OptimizationSection = field(default_factory=OptimizationSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    checkpoints: CheckpointSection = field(default_factory=CheckpointSection)

    def __post_init__(self) -> None:
        _require(self.output_dir is not None, "output_dir is required")
        _require(self.seed >= 0, "seed must be non-negative")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (paths as strings), for checkpoints and logs."""
        return _plain(dataclasses.asdict(self))

    def problems(self, cuda: bool) -> list[str]:
        """What this configuration asks that this machine (`cuda`: PyTorch sees a CUDA GPU) or folder cannot give:
        `train` refuses the first (`ConfigError`), its dry run reports them all; both exit with 2, bad usage."""
        found = (self.runtime.problem(cuda), self._output_dir_problem())
        return [problem for problem in found if problem is not None]

    def _output_dir_problem(self) -> str | None:
        if self.output_dir is not None and self.output_dir.exists() and not self.output_dir.is_dir():
            return f"output_dir {shown_path(self.output_dir)} is a file, not a folder"
        return None

    def steps_per_epoch(self, examples: int, processes: int) -> int:
        """Optimizer steps in an epoch of `examples` training rows across `processes`: each process reads its
        share (the last ones padded, as `DistributedSampler` pads) in whole batches, the last short one dropped."""
        share = -(-examples // processes)
        return share // self.data.batch_size // self.optimization.grad_accumulation

    def total_steps(self, steps_per_epoch: int) -> int:
        """The run's length in optimizer steps: max_steps, or its epochs of `steps_per_epoch`."""
        return self.optimization.max_steps or (self.optimization.epochs or 0) * steps_per_epoch

    def too_few_for_a_step(self, usable: int, processes: int) -> str:
        """What the run says when `usable` training examples make no whole step (and the dry run, in its words)."""
        across = count_text(processes, "process", "processes")
        return (
            f"{usable} usable examples are too few for one step of batch_size {self.data.batch_size} x "
            f"grad_accumulation {self.optimization.grad_accumulation} x {across}: lower data.batch_size"
        )


def config_from_dict(raw: dict[str, Any], source: Path | str, base: Path) -> TrainConfig:
    """A configuration from its dict (`TrainConfig.to_dict`, as checkpoints store it); paths relative to `base`."""
    try:
        return _with_local_sources(_build(TrainConfig, raw, "", base), base)
    except _Invalid as error:
        raise ConfigError(source, str(error)) from None


def _with_local_sources(config: TrainConfig, base: Path) -> TrainConfig:
    """`model.audio_weights` is a path (relative to the config's folder) when one exists there, else a hub name."""
    weights = config.model.audio_weights
    if weights is not None and (base / weights).exists():
        config.model.audio_weights = str(base / weights)
    return config


def load_config(path: Path | str, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training configuration; `overrides` maps dotted keys ("optimization.lr") to values."""
    path = as_path(path)
    text = read_text(path, ConfigError)
    if not text.strip():
        raise ConfigError(path, empty_file("`pengi-search train init` writes a configuration to start from"))
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(path, f"not valid YAML: {yaml_problem(error)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "expected a mapping of sections at the top level")
    as_written = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    base = path.parent.resolve()
    try:
        return _with_local_sources(_build(TrainConfig, raw, "", base), base)
    except _Invalid as error:
        raise ConfigError(_blamed(path, as_written, base, str(error)), str(error)) from None


def _blamed(path: Path, as_written: dict[str, Any], base: Path, problem: str) -> Path | str:
    """What a configuration's `problem` is named after: the file, when the file as written has it too, else the
    `--set` overrides that brought it (a mistyped key there is not to be looked for in the file)."""
    try:
        _build(TrainConfig, as_written, "", base)
    except _Invalid as error:
        return path if str(error) == problem else "--set"
    return "--set"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`section.key=value` pairs (command-line `--set`); values are read as YAML (numbers, booleans, null, text)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"expected section.key=value, got {pair!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError("--set", f"{key.strip()}: not a valid YAML value: {yaml_problem(error)}") from None
    return overrides


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where (1-based line and column)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{error.problem}{where}"
    return " ".join(str(error).split())


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError("--set", f"cannot set {dotted}: {key} is not a section")
    node[leaf] = value


def _build(cls: type, data: Any, where: str, base: Path) -> Any:
    if not isinstance(data, dict):
        raise _Invalid(f"{where.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in known]
    if unknown:
        raise _Invalid(f"unknown key {where}{unknown[0]}; known keys here: {', '.join(known)}")
    values = {key: _convert(value, hints[key], f"{where}{key}", base) for key, value in data.items()}
    return cls(**values)


def _convert(value: Any, hint: Any, where: str, base: Path) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, f"{where}.", base)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        _require(type(None) in options, f"{where} may not be empty")
        return None
    for option in options:
        converted = _as_type(value, typing.get_origin(option) or option, base)
        if converted is not None:
            return converted
    names = " or ".join(getattr(option, "__name__", str(option)) for option in options if option is not type(None))
    raise _Invalid(f"{where} must be {names}, got {value!r}")


def _as_type(value: Any, kind: type, base: Path) -> Any:
    """`value` as `kind`, or None when it is not one."""
    if kind is bool:
        return value if isinstance(value, bool) else None
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind is float:
        return _as_float(value)
    if kind is Path:  # a leading `~` is the home folder: no shell has seen a YAML file's values
        return base / home_expanded(value) if isinstance(value, str) and value else None
    return value if isinstance(value, kind) else None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value

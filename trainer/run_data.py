"""The data side of a run: its training and validation sets (clips, or cached features of a frozen audio
backbone), the rows evaluated and sampled, and the label sets that log-likelihood metrics rank."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import Dataset

from pengi_search.choices import LongPrompt
from pengi_search.consoles import is_watched, make_console
from pengi_search.model import Pengi
from pengi_search.paths import shown_path
from pengi_search.progress import CountColumn, Rate
from pengi_search.tokenization import PromptTooLongError, Tokenizers
from pengi_search.units import count_text
from trainer.config import ConfigError, TrainConfig
from trainer.data import AudioTextDataset, Example, LoadAudio, ManifestError, read_manifest
from trainer.evaluation import label_sets, sample_rows
from trainer.features import (
    EncodingStopped,
    FeatureCache,
    FeatureDataset,
    cache_folder,
    clip_key,
    earlier_layout,
    encode_clips,
    encodings_kept,
    load_or_encode,
)
from trainer.stopping import RunInterrupted

Printer = Callable[[str], None]
FEATURE_DIR = "features"
STATISTICS_CLIPS = 256  # clips encoded to standardise a pretrained encoder's outputs when they are not cached


def quiet(message: str) -> None:
    del message


@contextlib.contextmanager
def progress_bar(shown: bool) -> Iterator[Callable[[int], None]]:
    """A bar counting encoded clips (views included) and clips per second, for the minutes a CPU spends encoding;
    drawn from the first clip encoded, so that features read from the cache (a resumed run) show no empty bar. Only
    on a terminal: off one Rich draws nothing but a blank line as the bar goes."""
    console = make_console(stderr=True)
    bar = Progress(
        TextColumn("encoding audio"),
        BarColumn(),
        CountColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not shown or not is_watched(console),
        transient=True,
    )
    task = bar.add_task("encoding", total=None, unit="clips", rate=None)
    rate = Rate()  # from now: the encoding starts here (reading cached features takes a moment at most)

    def advance(count: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.advance(task, count)
        bar.update(task, rate=rate.of(bar.tasks[task].completed))

    try:
        yield advance
    finally:
        if bar.live.is_started:  # a bar never drawn is not stopped: off a terminal, stopping prints a blank line
            bar.stop()


@dataclass
class RunData:
    train_set: Dataset  # AudioTextDataset, or FeatureDataset when cached
    val_set: Dataset | None
    sample_set: Dataset  # validation, else training (without augmentation)
    cached: bool
    audio_shape: tuple[int, ...]  # one row's `audio`: (samples,) of a clip, or the cached features' shape
    sample_rows: list[int]
    eval_rows: list[int]
    candidates: dict[str, list[str]]
    skipped_at_caching: list[tuple[Path, str]]  # (clip, reason) of the rows of either manifest not encoded
    tasks: tuple[str, ...]  # the named tasks of the training rows, first seen first: what the model learns to answer


def check_prompts(examples: list[Example], tokenizers: Tokenizers, manifest: Path) -> None:
    """Fail before training when a prompt is longer than the model's prompt length."""
    first_row: dict[str, int] = {}
    for example in examples:
        first_row.setdefault(example.prompt, example.row)
    for prompt, row in first_row.items():
        try:
            tokenizers.prompts([prompt], LongPrompt.refuse)  # training data is fixed, not cut
        except PromptTooLongError as error:
            raise ManifestError(manifest, str(error), row) from None


def audio_dataset(
    config: TrainConfig, model: Pengi, examples: list[Example], *, train: bool, load_audio: LoadAudio | None = None
) -> AudioTextDataset:
    """The clips of `examples` as the run reads them (`load_audio`: how a clip is decoded; None: the project's)."""
    audio = model.cfg.audio
    return AudioTextDataset(
        examples,
        train=train,
        seed=config.seed,
        load_audio=load_audio,
        sample_rate=audio.sample_rate,
        clip_samples=audio.clip_samples,
        augmentation=config.augmentation,
    )


def prepare_data(
    config: TrainConfig, model: Pengi, tokenizers: Tokenizers, source: Path, *, cached: bool, say: Printer
) -> RunData:
    """Read and check the manifests; with `cached`, encode every clip with the frozen backbone first."""
    data, cfg = config.data, model.cfg
    room = cfg.decoder.n_positions - cfg.prefix_tokens  # GPT-2 positions left after the prefix
    if data.max_answer_tokens > room:
        raise ConfigError(source, f"data.max_answer_tokens may be at most {room} for this model")
    examples = read_manifest(data.train)
    check_prompts(examples, tokenizers, data.train)
    val_examples = read_manifest(data.validation) if data.validation is not None else None
    if val_examples is not None:
        check_prompts(val_examples, tokenizers, data.validation)
    train_set: Dataset = audio_dataset(config, model, examples, train=True)
    val_set: Dataset | None = audio_dataset(config, model, val_examples, train=False) if val_examples else None
    sample_set: Dataset = val_set or audio_dataset(config, model, examples, train=False)
    skipped: list[tuple[Path, str]] = []
    shape: tuple[int, ...] = (cfg.audio.clip_samples,)
    if cached:
        train_set, val_set, sample_set, skipped = _cache(config, model, train_set, val_set, sample_set, say)
        shape = train_set.shape
    standardiser = model.audio_encoder.standardise
    if standardiser is not None and config.model.init is None:  # a new model: statistics of its training data
        standardiser.fit(_training_features(config, model, train_set))
    evaluation = config.evaluation
    rows = list(range(len(val_set))) if val_set is not None else []
    if evaluation.max_examples is not None and len(rows) > evaluation.max_examples:
        rng = np.random.default_rng(config.seed)
        rows = sorted(rng.choice(len(rows), evaluation.max_examples, replace=False).tolist())
    return RunData(
        train_set=train_set,
        val_set=val_set,
        sample_set=sample_set,
        cached=cached,
        audio_shape=shape,
        sample_rows=sample_rows(sample_set.examples, evaluation.samples, config.seed),
        eval_rows=rows,
        candidates=label_sets(examples + (val_examples or [])),
        skipped_at_caching=skipped,
        tasks=tuple(dict.fromkeys(example.task for example in examples if example.task is not None)),
    )


def clips_to_encode(config: TrainConfig, model: Pengi, examples: list[Example]) -> int:
    """The encodings (distinct training clips x views) a cached run makes before its first step: those that
    `features/` lacks (an earlier start of the run, even one stopped while it encoded, kept the others, which the
    run reads in a moment). A dry run's estimate of the encoding time counts these."""
    train_set = audio_dataset(config, model, examples, train=True)
    views = _views(config, train_set)
    kept = encodings_kept(config.output_dir / FEATURE_DIR, model.audio_encoder.backbone, train_set, views)
    return len({clip_key(example) for example in examples}) * views - kept


def _views(config: TrainConfig, train_set: AudioTextDataset) -> int:
    """How many times each training clip is encoded: once per augmented view, once without augmentation."""
    return config.augmentation.views if train_set.augmentation is not None else 1


def _training_features(config: TrainConfig, model: Pengi, train_set: Dataset) -> torch.Tensor:
    """(N, ...) backbone outputs of the training clips: the cache's (every view), else a seeded sample of up
    to `STATISTICS_CLIPS` clips encoded now."""
    if isinstance(train_set, FeatureDataset):
        return train_set.cache.features.flatten(0, 1)
    rng = np.random.default_rng(config.seed)
    rows = sorted(rng.permutation(len(train_set))[:STATISTICS_CLIPS].tolist())
    subset = audio_dataset(config, model, [train_set.examples[row] for row in rows], train=False)
    device = next(model.parameters()).device
    options = {"device": device, "batch_size": config.data.batch_size, "num_workers": config.data.num_workers}
    was_training = model.audio_encoder.training
    cache = encode_clips(model.audio_encoder.backbone.eval(), subset, 1, **options)
    model.audio_encoder.train(was_training)
    return cache.features[0]


def _cache(
    config: TrainConfig,
    model: Pengi,
    train_set: AudioTextDataset,
    val_set: AudioTextDataset | None,
    sample_set: AudioTextDataset,
    say: Printer,
) -> tuple[FeatureDataset, FeatureDataset | None, FeatureDataset, list[tuple[Path, str]]]:
    views = _views(config, train_set)
    backbone = model.audio_encoder.backbone.eval()
    device = next(model.parameters()).device
    clips = len({clip_key(example) for example in train_set.examples})
    say(
        f"the audio encoder is frozen: its outputs for {count_text(clips, 'training clip')} x "
        f"{count_text(views, 'view')} are computed once "
        f"(or read from {FEATURE_DIR}/) and reused by every epoch"
    )
    started = time.perf_counter()
    folder = config.output_dir / FEATURE_DIR
    if (earlier := earlier_layout(folder)) and not cache_folder(folder, backbone, train_set, views).is_dir():
        say(earlier_layout_said(folder, earlier))
    with progress_bar(say is not quiet) as bar:
        options = {
            "device": device,
            "batch_size": config.data.batch_size,
            "num_workers": config.data.num_workers,
            "on_batch": bar,
        }
        train_cache = _encoded("training", folder, backbone, train_set, views, **options)
        cached_train = FeatureDataset(train_set.examples, train_cache)
        cached_val = None
        skipped = [(train_set.examples[row].audio, reason) for row, reason in train_cache.skipped]
        if val_set is not None:
            val_cache = _encoded("validation", folder, backbone, val_set, 1, **options)
            cached_val = FeatureDataset(val_set.examples, val_cache)
            skipped += [(val_set.examples[row].audio, reason) for row, reason in val_cache.skipped]
        if sample_set is val_set:
            cached_samples = cached_val
        else:
            encoded = _encoded("sample", folder, backbone, sample_set, 1, **options)
            cached_samples = FeatureDataset(sample_set.examples, encoded)
    took = time.perf_counter() - started
    # A run started again after a stop says that it went on from what the earlier start kept.
    read = f" ({train_cache.read} of {clips * views} read from {FEATURE_DIR}/)" if train_cache.read else ""
    say(f"audio features ready in {took:.0f} s{read}; {count_text(len(skipped), 'row')} skipped")
    return cached_train, cached_val, cached_samples, skipped


def earlier_layout_said(folder: Path, earlier: list[Path]) -> str:
    """Why the clips are encoded again where `folder` holds an earlier version's encodings (`earlier_layout`)."""
    return (
        f"{shown_path(folder)} holds {count_text(len(earlier), 'file')} of encodings an earlier pengi-search wrote "
        f"({FEATURE_DIR}/KEY.pt), which this one does not read (its keys hold each clip's file size and time too): "
        f"the clips are encoded again, into {FEATURE_DIR}/KEY/; the earlier files may be deleted"
    )


def _encoded(
    role: str, folder: Path, backbone: torch.nn.Module, dataset: AudioTextDataset, views: int, **options: Any
) -> FeatureCache:
    """`load_or_encode`; stopped by a signal, what it kept said as the run's interruption (`RunInterrupted`)."""
    try:
        return load_or_encode(folder, backbone, dataset, views, **options)
    except EncodingStopped as stopped:
        raise RunInterrupted(
            f"the run stopped while encoding the {role} clips: {stopped.kept} of {stopped.total} encodings made, kept "
            f"in {shown_path(folder)}; run the same command to encode only the rest"
        ) from None

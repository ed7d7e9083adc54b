"""The data side of a run: its training and validation sets (clips, or cached features of a frozen audio
backbone), the rows evaluated and sampled, and the label sets that log-likelihood metrics rank."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from pengi_search.model import Pengi
from pengi_search.tokenization import Tokenizers
from trainer.config import ConfigError, TrainConfig
from trainer.data import AudioTextDataset, Example, ManifestError, read_manifest
from trainer.evaluation import label_sets, sample_rows
from trainer.features import FeatureDataset, encode_clips

Printer = Callable[[str], None]


@dataclass
class RunData:
    train_set: Dataset  # AudioTextDataset, or FeatureDataset when cached
    val_set: Dataset | None
    sample_set: Dataset  # validation, else training (without augmentation)
    cached: bool
    audio_width: int  # what one row's `audio` holds: samples of a clip, or the cached feature width
    sample_rows: list[int]
    eval_rows: list[int]
    candidates: dict[str, list[str]]
    skipped_at_caching: int


def check_prompts(examples: list[Example], tokenizers: Tokenizers, manifest: Path) -> None:
    """Fail before training when a prompt is longer than the model's prompt length."""
    first_row: dict[str, int] = {}
    for example in examples:
        first_row.setdefault(example.prompt, example.row)
    for prompt, row in first_row.items():
        try:
            tokenizers.prompts([prompt])
        except ValueError as error:
            raise ManifestError(manifest, str(error), row) from None


def audio_dataset(config: TrainConfig, model: Pengi, examples: list[Example], *, train: bool) -> AudioTextDataset:
    audio = model.cfg.audio
    return AudioTextDataset(
        examples,
        train=train,
        seed=config.seed,
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
    skipped = 0
    width = cfg.audio.clip_samples
    if cached:
        train_set, val_set, sample_set, skipped = _cache(config, model, train_set, val_set, sample_set, say)
        width = cfg.audio.out_emb
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
        audio_width=width,
        sample_rows=sample_rows(sample_set.examples, evaluation.samples, config.seed),
        eval_rows=rows,
        candidates=label_sets(examples + (val_examples or [])),
        skipped_at_caching=skipped,
    )


def _cache(
    config: TrainConfig,
    model: Pengi,
    train_set: AudioTextDataset,
    val_set: AudioTextDataset | None,
    sample_set: AudioTextDataset,
    say: Printer,
) -> tuple[FeatureDataset, FeatureDataset | None, FeatureDataset, int]:
    views = config.augmentation.views if train_set.augmentation is not None else 1
    backbone = model.audio_encoder.backbone.eval()
    device = next(model.parameters()).device
    say(
        f"the audio encoder is frozen: encoding {len(train_set)} training rows x {views} view(s) once "
        "(later epochs reuse the cached outputs)"
    )
    started = time.perf_counter()
    options = {"device": device, "batch_size": config.data.batch_size, "num_workers": config.data.num_workers}
    train_cache = encode_clips(backbone, train_set, views, **options)
    cached_train = FeatureDataset(train_set.examples, train_cache)
    cached_val = None
    if val_set is not None:
        cached_val = FeatureDataset(val_set.examples, encode_clips(backbone, val_set, 1, **options))
    if sample_set is val_set:
        cached_samples = cached_val
    else:
        cached_samples = FeatureDataset(sample_set.examples, encode_clips(backbone, sample_set, 1, **options))
    say(f"encoded in {time.perf_counter() - started:.0f} s; {len(train_cache.skipped)} row(s) skipped (audio failed)")
    return cached_train, cached_val, cached_samples, len(train_cache.skipped)

"""Cached outputs of a frozen audio backbone: each clip (and each augmented view of it) is encoded once.

With the audio encoder's backbone frozen (`freeze.audio_backbone`, the usual choice with a pretrained encoder)
and `data.cache_features` on, a run first encodes every training clip `augmentation.views` times (view v is the
clip as epoch v would see it: its window and augmentation) and every validation clip once; epoch e then reads view
e % views. Epochs after that cost only the projection, the mappers and the language model. Rows that share a
clip (the same file and segment under several prompts) are encoded once. The outputs are kept in
`<output_dir>/features/`, under a key made of everything they depend on, so a resumed run does not encode again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from pengi_search.written_aside import written_aside
from trainer.data import AudioTextDataset, Example, ExampleItem, example_loader

log = logging.getLogger(__name__)


@dataclass
class FeatureCache:
    features: torch.Tensor  # (views, clips, width) or time steps (views, clips, T, width), float32 on the CPU
    row_clip: list[int]  # per kept row: its clip's index in `features`
    rows: list[int]  # the kept rows' indices in the source dataset (rows whose clip loaded)
    skipped: list[tuple[int, str]]  # (row, reason) of the rows whose clip failed to load


def cache_key(backbone: nn.Module, dataset: AudioTextDataset, views: int) -> str:
    """A digest of what the cached outputs depend on: the backbone's weights, the clips, their windows and
    augmentation (seed, settings) and the number of views."""
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    settings = dataclasses.asdict(dataset.augmentation) if dataset.augmentation is not None else None
    clips = [clip_key(example) for example in dataset.examples]
    described = [dataset.train, dataset.seed, dataset.sample_rate, dataset.clip_samples, settings, views, clips]
    digest.update(json.dumps(described).encode())
    return digest.hexdigest()[:24]


def cache_file(folder: Path, backbone: nn.Module, dataset: AudioTextDataset, views: int) -> Path:
    """Where in `folder` the outputs of `backbone` for `dataset`'s clips are kept (`cache_key`)."""
    return folder / f"{cache_key(backbone, dataset, views)}.pt"


def load_or_encode(folder: Path, backbone: nn.Module, dataset: AudioTextDataset, views: int, **options) -> FeatureCache:
    """The cached outputs from `folder` when they were made from the same inputs, else encoded now and saved."""
    path = cache_file(folder, backbone, dataset, views)
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return FeatureCache(
            stored["features"], stored["row_clip"], stored["rows"], [tuple(s) for s in stored["skipped"]]
        )
    cache = encode_clips(backbone, dataset, views, **options)
    folder.mkdir(parents=True, exist_ok=True)
    # Every process of a distributed run writes its own partial file.
    with written_aside(path, path.with_suffix(f".{os.getpid()}.partial")) as partial:
        torch.save(dataclasses.asdict(cache), partial)
    return cache


def clip_key(example: Example) -> tuple[str, float | None, float | None]:
    return str(example.audio), example.start, example.end


@torch.no_grad()
def encode_clips(
    backbone: nn.Module,
    dataset: AudioTextDataset,
    views: int,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    on_batch: Callable[[int], None] | None = None,
) -> FeatureCache:
    """Run the (frozen, eval-mode) backbone over each distinct clip of `dataset`, once per view."""
    first_row: dict[tuple, int] = {}
    for row, example in enumerate(dataset.examples):
        first_row.setdefault(clip_key(example), row)
    clips = list(first_row.values())  # a representative row per clip
    per_view: list[torch.Tensor] = []
    failed: dict[int, str] = {}
    for view in range(views):
        dataset.set_epoch(view)
        loader = example_loader(dataset, batch_size, clips, num_workers)
        encoded: dict[int, torch.Tensor] = {}
        for batch in loader:
            failed.update(batch["skipped"])
            if batch["index"]:
                out = backbone(batch["audio"].to(device)).float().cpu()
                encoded.update(zip(batch["index"], out, strict=True))
            if on_batch is not None:
                on_batch(len(batch["index"]) + len(batch["skipped"]))
        per_view.append(encoded)
    good = [row for row in clips if row not in failed and all(row in encoded for encoded in per_view)]
    position = {row: i for i, row in enumerate(good)}
    shape = next(iter(per_view[0].values())).shape if good else (0,)
    features = torch.stack([torch.stack([encoded[row] for row in good]) for encoded in per_view]) if good else None
    kept, row_clip, skipped = [], [], []
    for row, example in enumerate(dataset.examples):
        representative = first_row[clip_key(example)]
        if representative in position:
            kept.append(row)
            row_clip.append(position[representative])
        else:
            skipped.append((row, failed.get(representative, "not encoded")))
    if features is None:
        features = torch.empty(views, 0, *shape)
    return FeatureCache(features, row_clip, kept, skipped)


class FeatureDataset(Dataset):
    """The kept rows of a dataset with their cached features in place of audio (`audio` is then `shape`)."""

    def __init__(self, examples: Sequence[Example], cache: FeatureCache) -> None:
        self.examples = [examples[row] for row in cache.rows]
        self.cache = cache
        self.view = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """One row's features: (width,), or (T, width) time steps."""
        return tuple(self.cache.features.shape[2:])

    def set_epoch(self, epoch: int) -> None:
        self.view = epoch % self.cache.features.shape[0]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> ExampleItem:
        example = self.examples[index]
        features = self.cache.features[self.view, self.cache.row_clip[index]]
        return ExampleItem(audio=features, prompt=example.prompt, answer=example.answer, index=index)

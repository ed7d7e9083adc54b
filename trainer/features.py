"""Cached outputs of a frozen audio backbone: each clip (and each augmented view of it) is encoded once.

With the audio encoder's backbone frozen (`freeze.audio_backbone`, the usual choice with a pretrained encoder)
and `data.cache_features` on, a run first encodes every training clip `augmentation.views` times (view v is the
clip as epoch v would see it: its window and augmentation) and every validation clip once; epoch e then reads view
e % views. Epochs after that cost only the projection, the mappers and the language model. Rows that share a
clip (the same file and segment under several prompts) are encoded once. The outputs are kept in
`<output_dir>/features/<key>/`, the key made of everything they depend on (an edited clip or another encoder makes
another), in parts written as they are encoded: a resumed run reads them, and a run stopped while it encoded (Ctrl-C,
a kill) encodes only the rest when it is started again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from pengi_search.torchrun_env import first_on_machine
from pengi_search.written_aside import written_aside
from trainer.data import AudioTextDataset, Example, ExampleItem, example_loader

log = logging.getLogger(__name__)


PART_SECONDS = 30.0  # how often encodings are written out while encoding: at most this much work is lost to a kill


@dataclass
class FeatureCache:
    features: torch.Tensor  # (views, clips, width) or time steps (views, clips, T, width), float32 on the CPU
    row_clip: list[int]  # per kept row: its clip's index in `features`
    rows: list[int]  # the kept rows' indices in the source dataset (rows whose clip loaded)
    skipped: list[tuple[int, str]]  # (row, reason) of the rows whose clip failed to load
    read: int = 0  # encodings (clip x view) read from the folder, kept by an earlier start of the run


class EncodingStopped(KeyboardInterrupt):
    """A stop signal interrupted the encoding: `kept` of the `total` encodings (clips x views) are in `folder`,
    where a run on the same inputs reads them instead of encoding them again."""

    def __init__(self, folder: Path, kept: int, total: int) -> None:
        super().__init__(f"{kept} of {total} encodings kept in {folder}")
        self.folder, self.kept, self.total = folder, kept, total


def cache_key(backbone: nn.Module, dataset: AudioTextDataset, views: int) -> str:
    """A digest of what the cached outputs depend on: the backbone's weights, the clips (each file's size and
    modification time too, so an edited clip is encoded again), their windows and augmentation (seed, settings)
    and the number of views. Every clip is in it: a view may mix in any other clip (`augmentation.mix`)."""
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    settings = dataclasses.asdict(dataset.augmentation) if dataset.augmentation is not None else None
    clips = [(*clip_key(example), _file_identity(example.audio)) for example in dataset.examples]
    described = [dataset.train, dataset.seed, dataset.sample_rate, dataset.clip_samples, settings, views, clips]
    digest.update(json.dumps(described).encode())
    return digest.hexdigest()[:24]


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(size, modification time in ns) of a clip's file, as `make` and `rsync` tell a changed file; None when it
    cannot be read (it then fails to load, and is tried again by the next run)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def cache_folder(folder: Path, backbone: nn.Module, dataset: AudioTextDataset, views: int) -> Path:
    """Where in `folder` the outputs of `backbone` for `dataset`'s clips are kept (`cache_key`)."""
    return folder / cache_key(backbone, dataset, views)


def load_or_encode(folder: Path, backbone: nn.Module, dataset: AudioTextDataset, views: int, **options) -> FeatureCache:
    """The outputs of `backbone` for `dataset`'s clips: those an earlier start kept in `folder` for the same inputs
    (`cache_key`) read, the rest encoded now and kept there as they are made (`encode_clips`)."""
    return encode_clips(backbone, dataset, views, folder=cache_folder(folder, backbone, dataset, views), **options)


def earlier_layout(folder: Path) -> list[Path]:
    """The encodings an earlier pengi-search kept in `folder` itself, each cache whole in a `<key>.pt` file (before
    the parts of `EncodedParts`): not read, as no key of this version names them (its keys hold each clip's file
    size and time too)."""
    return sorted(path for path in folder.glob("*.pt") if path.is_file())


def encodings_kept(folder: Path, backbone: nn.Module, dataset: AudioTextDataset, views: int) -> int:
    """How many of the encodings (clips x views) of `dataset` `folder` already keeps."""
    return len(EncodedParts(cache_folder(folder, backbone, dataset, views)).outputs)


def clip_key(example: Example) -> tuple[str, float | None, float | None]:
    return str(example.audio), example.start, example.end


class EncodedParts:
    """The encodings of one cache key, (view, row) -> output, kept in `folder` (None: not kept) in parts: each part
    holds what was encoded since the one before, written aside and renamed whole, so that a run interrupted or
    killed while it encodes keeps what it had encoded. Every process of a distributed run encodes every clip and
    reads the parts; the first of each machine writes them (`keep`), so that they are on each machine's disk once."""

    def __init__(self, folder: Path | None, *, keep: bool = True) -> None:
        self.folder = folder
        self.keep = keep and folder is not None
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.failed: dict[int, str] = {}  # this start's only: a clip that failed may load next time
        self._pending: list[tuple[int, int]] = []
        self._saved_at = time.monotonic()
        for path in sorted(folder.glob("part-*.pt")) if folder is not None else ():
            self._read(path)
        self.read = len(self.outputs)

    def _read(self, path: Path) -> None:
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # written whole, so not a half part: one unreadable is encoded again
            log.warning("encoding again what %s held: %s", path, error)
            return
        self.outputs.update(zip(map(tuple, stored["keys"]), stored["features"], strict=True))

    def add(self, view: int, rows: list[int], outputs: torch.Tensor) -> None:
        keys = [(view, row) for row in rows]
        self.outputs.update(zip(keys, outputs, strict=True))
        self._pending += keys  # after `outputs`: a part never names an output that is not there

    def save(self, every: float = 0.0) -> None:
        """Write what was encoded since the last part, once `every` seconds have passed since it."""
        if not self.keep or not self._pending or time.monotonic() - self._saved_at < every:
            return
        assert self.folder is not None  # kept in one
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part-{time.time_ns()}-{os.getpid()}.pt"
        keys = list(self._pending)
        part = {"keys": [list(key) for key in keys], "features": torch.stack([self.outputs[key] for key in keys])}
        with written_aside(path, path.with_suffix(".partial")) as partial:
            torch.save(part, partial)
        del self._pending[: len(keys)]
        self._saved_at = time.monotonic()


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
    folder: Path | None = None,
) -> FeatureCache:
    """Run the (frozen, eval-mode) backbone over each distinct clip of `dataset`, once per view; with `folder`,
    the encodings it keeps are read and the others kept there (`EncodedParts`). A stop signal raises
    `EncodingStopped` once what was encoded is written."""
    first_row: dict[tuple, int] = {}
    for row, example in enumerate(dataset.examples):
        first_row.setdefault(clip_key(example), row)
    clips = list(first_row.values())  # a representative row per clip
    parts = EncodedParts(folder, keep=first_on_machine())
    try:
        for view in range(views):
            rest = [row for row in clips if (view, row) not in parts.outputs and row not in parts.failed]
            if rest:
                _encode_view(backbone, dataset, view, rest, parts, device, batch_size, num_workers, on_batch)
        parts.save()
    except KeyboardInterrupt:
        if not parts.keep or not parts.outputs:
            raise
        parts.save()
        raise EncodingStopped(folder, len(parts.outputs), len(clips) * views) from None
    return _assembled(dataset, first_row, views, parts)


def _encode_view(
    backbone: nn.Module,
    dataset: AudioTextDataset,
    view: int,
    rows: list[int],
    parts: EncodedParts,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    on_batch: Callable[[int], None] | None,
) -> None:
    dataset.set_epoch(view)
    # Its own generator: a loader's iterator otherwise draws its seed from the global stream, and a run would train
    # (its dropout) otherwise when it read some of its encodings from an earlier start than when it made them all.
    loader = example_loader(dataset, batch_size, rows, num_workers, generator=torch.Generator())
    for batch in loader:
        parts.failed.update(batch["skipped"])
        if batch["index"]:
            parts.add(view, batch["index"], backbone(batch["audio"].to(device)).float().cpu())
        parts.save(every=PART_SECONDS)
        if on_batch is not None:
            on_batch(len(batch["index"]) + len(batch["skipped"]))


def _assembled(dataset: AudioTextDataset, first_row: dict[tuple, int], views: int, parts: EncodedParts) -> FeatureCache:
    """The cache of every view of the clips that encoded, and the rows of the others with why."""
    outputs = parts.outputs
    good = [row for row in first_row.values() if all((view, row) in outputs for view in range(views))]
    position = {row: i for i, row in enumerate(good)}
    if good:
        features = torch.stack([torch.stack([outputs[view, row] for row in good]) for view in range(views)])
    else:
        features = torch.empty(views, 0, 0)
    kept, row_clip, skipped = [], [], []
    for row, example in enumerate(dataset.examples):
        representative = first_row[clip_key(example)]
        if representative in position:
            kept.append(row)
            row_clip.append(position[representative])
        else:
            skipped.append((row, parts.failed.get(representative, "not encoded")))
    return FeatureCache(features, row_clip, kept, skipped, read=parts.read)


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

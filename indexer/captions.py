"""The model's two jobs in an indexing run: audio embeddings for every window (pass 1), then captions (pass 2).

Pass 1 runs only the audio encoder (HTSAT and its projection), a small part of the cost of a window, and stores
each window with its audio embedding: `similar` then works on the whole library, and `query --rank audio` too.
Pass 2 pages through the windows that wait for captions (`uncaptioned_windows`: an audio vector and no text
vector), generates the answer to every prompt from the stored audio embedding, embeds the first answer, and
commits each batch in one transaction. The stored embedding is the very float32 tensor pass 1 computed, so
captions written in a later run equal those written in the same run; a window captioned meanwhile by another
process, or whose file was re-indexed, is skipped, so a killed pass loses at most its batch and repeats nothing.
Identical files (copies indexed with `--captions later`, or taken from an indexed file without its captions) share
their audio embeddings: each such window is generated once, and its twins (`uncaptioned_twins`) take its captions
in its batch's transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from pengi_search.audio import Window
from pengi_search.db import (
    EmbedderInfo,
    RefusedInputError,
    Store,
    TextRecord,
    Twin,
    UncaptionedWindow,
    WindowCaptions,
    WindowInput,
    add_captions,
    caption_counts,
    missing_captions,
    uncaptioned_twins,
    uncaptioned_windows,
)
from pengi_search.embedders import EmbedderSpec, TextEmbedder, open_text_embedder
from pengi_search.model_dir import ModelDir
from pengi_search.prompts import TASK_PROMPTS

from .hold_points import CAPTIONS_STORED, hold_at
from .roots import Roots
from .shard import Shard

if TYPE_CHECKING:
    from pengi_search.decoding import GenerationConfig
    from pengi_search.inference import Engine

    from .run_report import IndexOptions

PAGE = 512  # windows read per query while looking for those without captions
SYNC_EVERY_S = 300.0  # FAISS files saved at least this often during pass 2, so a running server sees new captions
DEFAULT_PROMPTS = (TASK_PROMPTS["caption"], TASK_PROMPTS["sound_event"])


class IndexModel:
    """Pengi for indexing: audio embeddings of windows, and captions (answers to every prompt, embedded)."""

    def __init__(
        self, engine: Engine, embedder: TextEmbedder, prompts: tuple[str, ...], gen: GenerationConfig, decoding: str
    ):
        self.engine = engine
        self.embedder = embedder
        self.prompts = prompts
        self.gen = gen
        self.decoding = decoding  # `gen`'s settings as each text records them (`IndexOptions.decoding`)
        # Whole windows per batch, each with every prompt: what --batch-size asked for, or as many as fill the
        # device's default rows, e.g. 16 windows on CPU and 128 on CUDA with two prompts.
        self.windows_per_batch = engine.windows_per_batch(len(prompts))

    @classmethod
    def load(cls, model_dir: ModelDir, embedder_spec: EmbedderSpec, device: str, options: IndexOptions) -> IndexModel:
        """The model as the run's `options` ask: its prompts (none: the caption and sound-event prompts; the first
        one's answer is embedded), windows per batch, decoding settings, --long-prompts and --fast."""
        from pengi_search.decoding import GenerationConfig
        from pengi_search.inference import Engine

        prompts = options.prompts or DEFAULT_PROMPTS
        gen = GenerationConfig(beam=options.beam, max_len=options.max_len, stop=options.stop)
        engine = Engine.load(model_dir, device, options.batch_size, options.long_prompts, fast=options.fast)
        engine.check_generation(prompts, gen)  # before pass 1 stores anything, not at pass 2's first batch
        embedder = open_text_embedder(embedder_spec, model_dir, engine=engine)
        return cls(engine, embedder, prompts, gen, options.decoding)

    @property
    def embedder_info(self) -> EmbedderInfo:
        return EmbedderInfo(self.embedder.id, int(self.embedder.dim))

    def audio_windows(self, windows: Sequence[Window]) -> list[WindowInput]:
        """Pass 1: the windows to store, each with its audio embedding (float32, as the model made it) and no text."""
        embeds = self.engine.audio_embeddings(np.stack([window.samples for window in windows])).cpu().numpy()
        return [
            WindowInput(index=window.index, start_s=window.start_s, end_s=window.end_s, vectors={"audio": embed})
            for window, embed in zip(windows, embeds, strict=True)
        ]

    def captions(self, windows: Sequence[UncaptionedWindow]) -> list[WindowCaptions]:
        """Pass 2: every prompt's answer for each window, from its stored audio embedding, and the caption's vector."""
        import torch

        embeds = torch.from_numpy(np.stack([window.audio for window in windows]))
        answers = self.engine.generate(embeds, self.prompts, self.gen)
        text_vectors = self.embedder.embed([row[0].text for row in answers])
        decoding, mode = self.decoding, self.engine.mode
        return [
            WindowCaptions(
                window.window_id,
                [TextRecord(p, a.text, float(a.score), mode, decoding) for p, a in zip(self.prompts, row, strict=True)],
                vector,
            )
            for window, row, vector in zip(windows, answers, text_vectors, strict=True)
        ]


@dataclass
class CaptionResult:
    captioned: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of windows that could not be stored


def captions_missing(store: Store, roots: Roots) -> int:
    """Windows below `roots` without captions (every shard's): counted by the database below each root; below many,
    from one query below their common folder that names each such window's file, kept where a root covers it (a
    path per waiting window read below one folder would be a million rows after a `--captions later` run)."""
    if roots.each_asked:
        return sum(caption_counts(store, under=folder).missing for folder in roots.folders)
    return sum(count for path, count in missing_captions(store, under=roots.common).items() if roots.covers(path))


@dataclass(frozen=True)
class _Captioned:
    """A window's captions and the same for its twins (`uncaptioned_twins`): stored together, or failed together."""

    index: int  # the window's index in its file, the twins' too
    paths: list[str]
    captions: list[WindowCaptions]


@dataclass
class CaptionPass:
    """Pass 2 over the windows below `roots` (only the files `shard` owns) that have no captions yet. Windows of
    identical files (twins, see `uncaptioned_twins`) are captioned once: the others take the same captions."""

    store: Store
    roots: Roots
    shard: Shard | None = None
    sync: Callable[[], None] | None = None  # saves the FAISS files; called at most every SYNC_EVERY_S
    _handled: set[int] = field(default_factory=set, init=False, repr=False)  # ids yielded, or given a twin's captions

    def windows(self) -> Iterator[UncaptionedWindow]:
        """The windows waiting for captions, page by page below the roots' common folder (a window that took a twin's
        captions after its page was read is not yielded)."""
        for folder in self.roots.folders:
            after = 0
            while page := uncaptioned_windows(self.store, under=folder, after_id=after, limit=PAGE):
                after = page[-1].window_id
                for window in page:
                    if window.window_id not in self._handled and self._owns(window.path):
                        self._handled.add(window.window_id)
                        yield window

    def batches(self, size: int) -> Iterator[list[UncaptionedWindow]]:
        """The waiting windows, `size` at a time with no two twins in a batch: a window left out for its twin in the
        batch takes that one's captions when the batch is stored (`_with_twins` finds it)."""
        batch: dict[tuple[str, int, bytes] | int, UncaptionedWindow] = {}
        for window in self.windows():
            batch.setdefault(window.twin_key, window)
            if len(batch) == size:
                yield list(batch.values())
                batch = {}
        if batch:
            yield list(batch.values())

    def run(self, model: IndexModel, result: CaptionResult, advance: Callable[[int], None] | None = None) -> None:
        """Caption every waiting window, batch by batch, counting into `result` what each stored batch kept (the
        caller sees it, also when the pass is interrupted)."""
        synced = time.monotonic()
        for batch in self.batches(model.windows_per_batch):
            captioned = self._with_twins(batch, model.captions(batch))
            self._store(captioned, result)
            hold_at(CAPTIONS_STORED)
            if advance is not None:
                advance(sum(len(item.paths) for item in captioned))
            if self.sync is not None and time.monotonic() - synced >= SYNC_EVERY_S:
                self.sync()
                synced = time.monotonic()

    def _with_twins(self, batch: Sequence[UncaptionedWindow], captions: Sequence[WindowCaptions]) -> list[_Captioned]:
        """Each window's captions, given also to its twins that wait below the roots (in this shard's files)."""
        twins: dict[int, list[Twin]] = {window.window_id: [] for window in batch}
        given: set[int] = set()
        for folder in self.roots.folders:
            for twin in uncaptioned_twins(self.store, list(twins), under=folder):
                if twin.window_id not in given and self._owns(twin.path):
                    twins[twin.of].append(twin)
                    given.add(twin.window_id)
        self._handled |= given  # a page read before this batch was stored may list them: not to be yielded
        return [
            _Captioned(
                window.index,
                [window.path] + [twin.path for twin in twins[window.window_id]],
                [caption] + [replace(caption, window_id=twin.window_id) for twin in twins[window.window_id]],
            )
            for window, caption in zip(batch, captions, strict=True)
        ]

    def _owns(self, path: str) -> bool:
        """Whether the file at `path` is this pass's: below a root, and this shard's."""
        return self.roots.covers(path) and (self.shard is None or self.shard.owns(path))

    def _store(self, captioned: Sequence[_Captioned], result: CaptionResult) -> None:
        """One transaction for the batch; if the store refuses it (e.g. a NaN caption embedding), one per window with
        its twins, so that only the bad window waits (it is tried again by the next run). A failure of the database
        itself (a full disk) ends the pass: every window would fail alike, and none is to blame."""
        try:
            result.captioned += add_captions(self.store, [caption for item in captioned for caption in item.captions])
            return
        except RefusedInputError:
            pass
        for item in captioned:
            try:
                result.captioned += add_captions(self.store, item.captions)
            except RefusedInputError as exc:
                reason = f"window {item.index}: no captions stored ({exc.reason})"
                result.failed += [(path, reason) for path in item.paths]

"""The model's two jobs in an indexing run: audio embeddings for every window (pass 1), then captions (pass 2).

Pass 1 runs only the audio encoder (HTSAT and its projection), a small part of the cost of a window, and stores
each window with its audio embedding: `similar` then works on the whole library, and `query --rank audio` too.
Pass 2 pages through the windows that wait for captions (`uncaptioned_windows`: an audio vector and no text
vector), generates the answer to every prompt from the stored audio embedding, embeds the first answer, and
commits each batch in one transaction. The stored embedding is the very float32 tensor pass 1 computed, so
captions written in a later run equal those written in the same run; a window captioned meanwhile by another
process, or whose file was re-indexed, is skipped, so a killed pass loses at most its batch and repeats nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pengi_search.audio import Window
from pengi_search.choices import decoding_settings
from pengi_search.chunking import chunked
from pengi_search.db import (
    DatabaseFailureError,
    EmbedderInfo,
    Store,
    StoreError,
    TextRecord,
    UncaptionedWindow,
    WindowCaptions,
    WindowInput,
    add_captions,
    uncaptioned_windows,
)
from pengi_search.embedders import EmbedderSpec, TextEmbedder, open_text_embedder
from pengi_search.model_dir import ModelDir
from pengi_search.prompts import TASK_PROMPTS

from .hold_points import CAPTIONS_STORED, hold_at
from .shard import Shard

if TYPE_CHECKING:
    from pengi_search.choices import LongPrompt
    from pengi_search.decoding import GenerationConfig
    from pengi_search.inference import Engine

PAGE = 512  # windows read per query while looking for those without captions
SYNC_EVERY_S = 300.0  # FAISS files saved at least this often during pass 2, so a running server sees new captions
DEFAULT_PROMPTS = (TASK_PROMPTS["caption"], TASK_PROMPTS["sound_event"])


class IndexModel:
    """Pengi for indexing: audio embeddings of windows, and captions (answers to every prompt, embedded)."""

    def __init__(self, engine: Engine, embedder: TextEmbedder, prompts: tuple[str, ...], gen: GenerationConfig):
        self.engine = engine
        self.embedder = embedder
        self.prompts = prompts
        self.gen = gen
        # Whole windows per batch, each with every prompt: what --batch-size asked for, or as many as fill the
        # device's default rows, e.g. 16 windows on CPU and 128 on CUDA with two prompts.
        self.windows_per_batch = engine.windows_per_batch(len(prompts))

    @classmethod
    def load(
        cls,
        model_dir: ModelDir,
        embedder_spec: EmbedderSpec,
        device: str,
        *,
        prompts: tuple[str, ...],
        batch_size: int | None,
        gen: GenerationConfig,
        long_prompts: LongPrompt,
        fast: bool = False,
    ) -> IndexModel:
        """`prompts`: empty for the caption and sound-event prompts; the first one's answer is embedded.
        `batch_size`: windows per batch (None: the device's default)."""
        from pengi_search.inference import Engine

        prompts = prompts or DEFAULT_PROMPTS
        engine = Engine.load(model_dir, device, batch_size, long_prompts, fast=fast)
        engine.check_generation(prompts, gen)  # before pass 1 stores anything, not at pass 2's first batch
        embedder = open_text_embedder(embedder_spec, model_dir, engine=engine)
        return cls(engine, embedder, prompts, gen)

    @property
    def decoding(self) -> str:
        """The decoding settings, as each text records them."""
        return decoding_settings(self.gen.beam, self.gen.max_len, self.gen.stop)

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


@dataclass
class CaptionPass:
    """Pass 2 over the windows below `roots` (only the files `shard` owns) that have no captions yet."""

    store: Store
    roots: Sequence[str]
    shard: Shard | None = None
    sync: Callable[[], None] | None = None  # saves the FAISS files; called at most every SYNC_EVERY_S

    def windows(self) -> Iterator[UncaptionedWindow]:
        """The windows waiting for captions, page by page (roots that overlap yield a window once)."""
        seen: set[int] = set()
        for root in self.roots:
            after = 0
            while page := uncaptioned_windows(self.store, under=root, after_id=after, limit=PAGE):
                after = page[-1].window_id
                for window in page:
                    if window.window_id not in seen and (self.shard is None or self.shard.owns(window.path)):
                        seen.add(window.window_id)
                        yield window

    def run(self, model: IndexModel, result: CaptionResult, advance: Callable[[int], None] | None = None) -> None:
        """Caption every waiting window, batch by batch, counting into `result` what each stored batch kept (the
        caller sees it, also when the pass is interrupted)."""
        synced = time.monotonic()
        for batch in chunked(self.windows(), model.windows_per_batch):
            self._store(model.captions(batch), batch, result)
            hold_at(CAPTIONS_STORED)
            if advance is not None:
                advance(len(batch))
            if self.sync is not None and time.monotonic() - synced >= SYNC_EVERY_S:
                self.sync()
                synced = time.monotonic()

    def _store(self, captions: list[WindowCaptions], batch: Sequence[UncaptionedWindow], result: CaptionResult) -> None:
        """One transaction for the batch; if the store refuses it (e.g. a NaN caption embedding), one per window,
        so that only the bad window waits (it is tried again by the next run). A failure of the database itself (a
        full disk) ends the pass: every window would fail alike, and none is to blame."""
        try:
            result.captioned += add_captions(self.store, captions)
            return
        except DatabaseFailureError:
            raise
        except StoreError:
            pass
        for caption, window in zip(captions, batch, strict=True):
            try:
                result.captioned += add_captions(self.store, [caption])
            except DatabaseFailureError:
                raise
            except StoreError as exc:
                result.failed.append((window.path, f"window {window.index}: no captions stored ({exc.reason})"))

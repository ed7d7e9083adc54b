"""Libraries for the search and classify tests.

The tiny test model writes the same gibberish for every sound, so text search is tested on a library whose captions
are written into the store directly (`caption_library`): known captions, embedded by the tiny model's own text
tower, and real audio embeddings of real files. `indexed_library` runs the real indexer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.pipeline import run_index
from pengi_search.audio import iter_windows
from pengi_search.choices import EXACT_MODE, StopRule, decoding_settings
from pengi_search.db import EmbedderInfo, ModelInfo, Store, StoredAudio, TextRecord, WindowInput
from pengi_search.embedders import EmbedderSpec, open_text_embedder
from pengi_search.hashing import file_sha256
from pengi_search.inference import Engine
from pengi_search.library import Library
from pengi_search.model_dir import ModelDir
from pengi_search.prompts import TASK_PROMPTS
from pengi_search.scan import scan

from .indexing import quick_options, write_tone

CAPTION = TASK_PROMPTS["caption"]
EVENTS = TASK_PROMPTS["sound_event"]
# How the stored texts say they were decoded: as `index` and `classify` decode by default, so that classify takes
# the stored captions as its own.
DECODING = decoding_settings(3, 30, StopRule.both)

# relative path -> (seconds, caption of each window); the 10 s file has two windows (0-7 s and 3-10 s)
CAPTIONED = {
    "animals/dog.wav": (3.0, ["a dog barks"]),
    "weather/rain.flac": (10.0, ["rain on a roof", "thunder rolls in the distance"]),
    "bell.wav": (2.0, ["a bell rings"]),
    "animals/cat.flac": (5.0, ["a cat meows"]),
}


def model_info(model_dir: Path) -> ModelInfo:
    read = ModelDir.read(model_dir)
    return ModelInfo(read.name, str(read.fingerprint))


@dataclass
class CaptionLibrary:
    db: str
    root: Path
    files: dict[str, Path]  # relative name -> absolute path


def caption_library(db: str, root: Path, model_dir: Path, captioned: dict | None = None) -> CaptionLibrary:
    """Write the sounds, and store them with the given captions (and real audio embeddings) as the indexer would."""
    captioned = CAPTIONED if captioned is None else captioned
    model = ModelDir.read(model_dir)
    engine = Engine.load(model, "cpu")
    embedder = open_text_embedder(EmbedderSpec(), model, engine=engine)
    files = {}
    with Store.open(db) as store:
        store.set_index_meta(model_info(model_dir), EmbedderInfo(embedder.id, embedder.dim))
        for seed, (name, (seconds, captions)) in enumerate(captioned.items()):
            path = write_tone(root / name, seconds, freq=tone(seed))
            files[name] = path
            windows = list(iter_windows(path))
            assert len(windows) == len(captions), name
            audio = engine.audio_embeddings(np.stack([w.samples for w in windows])).numpy()
            text = embedder.embed(captions)
            entry = scan([path], frozenset()).entries[0]
            digest = file_sha256(path)  # as the indexer records it: copies and uploads are known by it
            file_id = store.upsert_file(entry.path, size=entry.size, mtime=entry.mtime, content_hash=digest)
            inputs = [
                WindowInput(
                    w.index,
                    w.start_s,
                    w.end_s,
                    texts=[
                        TextRecord(CAPTION, caption, None, EXACT_MODE, DECODING),
                        TextRecord(EVENTS, caption.split()[-1], None, EXACT_MODE, DECODING),
                    ],
                    vectors={"text": text[i], "audio": audio[i] / np.linalg.norm(audio[i])},
                )
                for i, (w, caption) in enumerate(zip(windows, captions, strict=True))
            ]
            info = StoredAudio(seconds, 44_100, 1, path.suffix.lstrip("."))
            store.replace_file_windows(file_id, inputs, audio=info)
        Library(store).sync_vector_indexes()
    return CaptionLibrary(db, root, files)


def tone(seed: int) -> float:
    """A different frequency for every sound of a test library."""
    return 150.0 + 90.0 * seed


def index_folder(db: str, root: Path, model_dir: Path, **options: Any) -> None:
    """Index everything under `root` with the real indexer (decoding in this process, short answers)."""
    summary = run_index(quick_options([root], Path(db), model_dir, **options))
    assert summary.indexed and not summary.failed, summary.to_json()

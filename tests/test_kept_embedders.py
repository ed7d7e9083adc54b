"""A script's text queries open the text tower once (`embedders.kept_text_embedder`): `query_text` opened a new
embedder on every call, so a script that ran 1,000 queries loaded the model 1,000 times."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pengi_search import embedders
from pengi_search.choices import Rank
from pengi_search.embedders import (
    KEPT_EMBEDDERS,
    CutText,
    EmbedderSpec,
    TextEmbedder,
    forget_text_embedders,
    kept_text_embedder,
    open_text_embedder,
)
from pengi_search.library import Library
from pengi_search.model_dir import ModelDir
from pengi_search.search import Hit, SearchScope, query_text


class Opened:
    """`open_text_embedder`, counting its calls (slowly, as a real model loads, when asked to)."""

    def __init__(self, opening_s: float = 0.0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.opening_s = opening_s
        self._lock = threading.Lock()

    def __call__(self, spec: EmbedderSpec, model_dir: ModelDir | None, device: str = "auto", **kwargs) -> TextEmbedder:
        with self._lock:
            self.calls.append((str(spec), device))
        time.sleep(self.opening_s)
        if spec.is_pengi:
            return open_text_embedder(spec, model_dir, device, **kwargs)
        return FakeEmbedder(str(spec))


class FakeEmbedder:
    """A sentence-transformers model that is never loaded."""

    def __init__(self, name: str) -> None:
        self.id, self.dim = name, 4

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.ones((len(texts), self.dim), np.float32) / 2

    def cut_texts(self, texts: Sequence[str]) -> list[CutText]:
        return []


@pytest.fixture
def opened(monkeypatch) -> Opened:
    forget_text_embedders()  # none kept by a fixture's set-up (conftest lets go of them after each test)
    spy = Opened()
    monkeypatch.setattr(embedders, "open_text_embedder", spy)
    return spy


def found(hits: list[Hit]) -> list[tuple[str, float, float]]:
    return [(hit.path, hit.start_s, hit.score) for hit in hits]


def test_repeated_text_queries_open_the_text_tower_once_and_find_what_a_fresh_one_finds(
    captions, tiny_model_dir, opened
):
    model = str(tiny_model_dir)
    fresh = open_text_embedder(EmbedderSpec(), ModelDir.read(tiny_model_dir), "cpu", numpy_tower=True)
    with Library.open(captions.db, read_only=True) as library:
        expected = found(query_text(library, "a dog barks", SearchScope(k=3), model=model, embedder=fresh))
        first = found(query_text(library, "a dog barks", SearchScope(k=3), model=model))
        again = found(query_text(library, "a dog barks", SearchScope(k=3), model=model))
        by_audio = query_text(library, "rain", SearchScope(k=3), model=model, rank=Rank.audio)  # the same tower
    with Library.open(captions.db, read_only=True) as reopened:  # a script that opens a library per batch
        later = found(query_text(reopened, "a dog barks", SearchScope(k=3), model=model))
    assert first == again == later == expected and by_audio
    assert len(opened.calls) == 1


def test_threads_that_query_at_once_open_the_text_tower_once(captions, tiny_model_dir, opened):
    opened.opening_s = 0.3  # every thread asks while the first opens it
    texts = ["a dog barks", "rain on a roof", "a bell rings", "a cat meows"] * 2
    with Library.open(captions.db, read_only=True) as library:

        def query(text: str) -> list[tuple[str, float, float]]:
            return found(query_text(library, text, SearchScope(k=2), model=str(tiny_model_dir)))

        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(query, texts))
        alone = [query(text) for text in texts]
    assert together == alone
    assert len(opened.calls) == 1


def test_the_least_recently_used_embedder_is_let_go_past_those_kept(opened):
    specs = [EmbedderSpec(f"model-{i}") for i in range(KEPT_EMBEDDERS + 1)]
    first = kept_text_embedder(specs[0], None, "cpu")
    for spec in specs[1:]:
        kept_text_embedder(spec, None, "cpu")
    assert len(opened.calls) == KEPT_EMBEDDERS + 1
    assert kept_text_embedder(specs[-1], None, "cpu").id == "sentence-transformers:model-4"  # kept
    assert len(opened.calls) == KEPT_EMBEDDERS + 1
    assert kept_text_embedder(specs[0], None, "cpu") is not first  # let go: opened again
    assert opened.calls[-1] == ("sentence-transformers:model-0", "cpu")
    kept_text_embedder(specs[0], None, "cuda")  # on another device: another embedder
    assert len(opened.calls) == KEPT_EMBEDDERS + 3


def test_a_model_whose_weights_are_replaced_in_place_is_opened_again(tiny_model_dir, tmp_path, opened):
    """The same directory and the same recorded checksum, but another file: what is kept is not what is there."""
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    kept_text_embedder(EmbedderSpec(), ModelDir.read(model), "cpu")
    kept_text_embedder(EmbedderSpec(), ModelDir.read(model), "cpu")
    assert len(opened.calls) == 1
    weights = model / "model.safetensors"
    shutil.copy(weights, tmp_path / "weights")
    os.replace(tmp_path / "weights", weights)
    kept_text_embedder(EmbedderSpec(), ModelDir.read(model), "cpu")
    assert len(opened.calls) == 2


def test_a_kept_embedder_embeds_and_counts_cut_texts_as_the_one_it_opened(tiny_model_dir, opened):
    model = ModelDir.read(tiny_model_dir)
    kept = kept_text_embedder(EmbedderSpec(), model, "cpu")
    fresh = open_text_embedder(EmbedderSpec(), model, "cpu", numpy_tower=True)
    long = " ".join(["dog"] * 200)
    assert (kept.id, kept.dim) == (fresh.id, fresh.dim)
    np.testing.assert_array_equal(kept.embed(["a dog", long]), fresh.embed(["a dog", long]))
    assert kept.cut_texts(["a dog", long]) == fresh.cut_texts(["a dog", long])


def test_a_query_asked_to_run_on_cuda_runs_the_torch_tower_there_not_the_numpy_one(tiny_model_dir, monkeypatch):
    """The query path's numpy tower runs on the CPU: `query --device cuda` ran there all the same, without a word.
    Asked for by name, CUDA gets the torch tower (here on the CPU, the machine's GPU faked), as `auto` and `cpu`
    keep the numpy one."""
    import torch

    from pengi_search.text_query import NumpyTextEmbedder

    placed: list[str] = []

    def fake_device(device: str, engine: object = None) -> torch.device:
        placed.append(str(device))
        return torch.device("cpu")

    monkeypatch.setattr(embedders, "_torch_device", fake_device)
    model = ModelDir.read(tiny_model_dir)
    on_gpu = open_text_embedder(EmbedderSpec(), model, "cuda", numpy_tower=True)
    assert isinstance(on_gpu, embedders.PengiTextEmbedder) and placed == ["cuda"]
    for device in ("auto", "cpu"):
        assert isinstance(open_text_embedder(EmbedderSpec(), model, device, numpy_tower=True), NumpyTextEmbedder)

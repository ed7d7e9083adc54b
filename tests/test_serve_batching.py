"""The server's shared tower passes: concurrent query texts embedded together, each exactly as alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from pengi_search.model_dir import ModelDir
from pengi_search.serve.batching import EmbedBatcher
from pengi_search.text_query import NumpyTextEmbedder

TEXTS = ["a dog barks", "rain on a roof", "a bell rings", "a dog barks", "thunder rolls in the distance"]


class HeldTower:
    """The numpy tower, recording each call's texts; the first call waits until `release` is set."""

    def __init__(self, tower: NumpyTextEmbedder) -> None:
        self.tower = tower
        self.id = tower.id
        self.calls: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = False

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.started.set()
            self.release.wait(10)
        if self.fail:
            raise RuntimeError("the tower broke")
        return self.tower.embed(texts)


@pytest.fixture(scope="module")
def tower(tiny_model_dir) -> NumpyTextEmbedder:
    return NumpyTextEmbedder.from_model_dir(ModelDir.read(tiny_model_dir))


def embed_concurrently(batcher: EmbedBatcher, embedder: HeldTower, texts: Sequence[str]) -> list[object]:
    """Each text from its own thread while the worker is held in a first pass; then the pass is released."""
    texts = ["the first text", *texts]
    results: list[object] = [None] * len(texts)

    def one(i: int) -> None:
        try:
            results[i] = batcher.embed(embedder, texts[i])
        except RuntimeError as exc:
            results[i] = exc

    first = threading.Thread(target=one, args=(0,))
    first.start()
    assert embedder.started.wait(10)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, len(texts))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while batcher._queue.qsize() < len(threads) and time.monotonic() < deadline:  # all queued behind the first pass
        time.sleep(0.01)
    embedder.release.set()
    for thread in [first, *threads]:
        thread.join(10)
    return results[1:]


def test_texts_queued_together_share_one_pass_and_equal_alone(tower):
    batcher = EmbedBatcher()
    held = HeldTower(tower)
    try:
        results = embed_concurrently(batcher, held, TEXTS)
    finally:
        batcher.close()
    assert held.calls[0] == ["the first text"]
    assert len(held.calls) == 2 and sorted(held.calls[1]) == sorted(set(TEXTS))  # one pass, each text once
    for text, vector in zip(TEXTS, results, strict=True):
        assert isinstance(vector, np.ndarray) and vector.shape == (1, tower.dim)
        np.testing.assert_allclose(vector, tower.embed([text]), atol=1e-6, rtol=0)


def test_a_failed_pass_answers_each_waiting_request_and_the_worker_goes_on(tower):
    batcher = EmbedBatcher()
    held = HeldTower(tower)
    held.fail = True
    try:
        results = embed_concurrently(batcher, held, TEXTS[:3])
        assert all(isinstance(r, RuntimeError) and str(r) == "the tower broke" for r in results)
        held.fail = False
        np.testing.assert_allclose(batcher.embed(held, "a dog barks"), tower.embed(["a dog barks"]), atol=1e-6)
    finally:
        batcher.close()


def test_a_closed_batcher_embeds_in_the_calling_thread(tower):
    batcher = EmbedBatcher()
    np.testing.assert_allclose(batcher.embed(tower, "a bell rings"), tower.embed(["a bell rings"]), atol=1e-6)
    batcher.close()
    caller = threading.current_thread().name
    seen: list[str] = []

    class Recording:
        id = tower.id

        def embed(self, texts: Sequence[str]) -> np.ndarray:
            seen.append(threading.current_thread().name)
            return tower.embed(texts)

    np.testing.assert_allclose(batcher.embed(Recording(), "a bell rings"), tower.embed(["a bell rings"]), atol=1e-6)
    assert seen == [caller]


def test_a_lone_client_never_waits_for_others(tower):
    """Only after a pass of several texts does the next one wait for company; one client's passes start at once."""
    batcher = EmbedBatcher(max_wait_s=30.0)
    try:
        started = time.monotonic()
        for text in ("a dog barks", "rain on a roof", "a bell rings"):
            batcher.embed(tower, text)
        assert time.monotonic() - started < 20.0
    finally:
        batcher.close()

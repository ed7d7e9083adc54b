"""`eval` on a large set (AudioSet's 20,000 files and 527 classes, Clotho's 5,000 captions a split): no step of
its scoring may grow with the square of the set in Python."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from pengi_search.choices import Rank
from pengi_search.classify import Prediction, evaluate
from pengi_search.embedders import CutText
from pengi_search.evaluation.metrics import average_precision
from pengi_search.evaluation.retrieval import WindowMatching
from pengi_search.library import Library
from pengi_search.query_plans import plan_steps, recorded
from pengi_search.search_filters import Filters
from pengi_search.stored import stored_windows
from pengi_search.truth import Truth


class CountedText(str):
    """A caption or label that counts the times it is compared for equality with another text (not itself)."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountedText.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class RandomEmbedder:
    """A text embedder of the library's dimension whose vectors are random: only the work around it is measured."""

    id = "random"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.rng = np.random.default_rng(0)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)

    def cut_texts(self, texts: Sequence[str]) -> list[CutText]:
        return []


def test_audio_to_text_finds_each_caption_among_the_distinct_ones_by_its_hash(captions):
    """Not by comparing it with each distinct caption before it, which 100,000 captions make 5e9 comparisons."""
    texts = [CountedText(f"caption number {i}") for i in range(2_000)]
    with Library.open(captions.db, read_only=True) as library:
        meta = library.store.index_meta()
        assert meta is not None
        ranking = WindowMatching(Rank.caption, library, Filters(), RandomEmbedder(meta.embedder.dim), None)
        CountedText.comparisons = 0
        (ranked,) = ranking.audio_to_text([str(captions.files["bell.wav"])], texts, 10)
    assert len(ranked) == 10
    assert CountedText.comparisons <= len(texts)


def test_per_class_scores_take_one_pass_over_the_files_not_one_a_class():
    """527 classes over 20,000 files were 30 million comparisons of labels in Python."""
    labels = [CountedText(f"label {i}") for i in range(200)]
    files = [f"/set/{i}.wav" for i in range(1_000)]
    truth = Truth({path: (labels[i % 200],) for i, path in enumerate(files)}, {})
    # Every third file right, the others taken for the next class.
    predictions = [
        Prediction(path, [(labels[(i + (i % 3 > 0)) % 200], 0.9)], 1, "decoded") for i, path in enumerate(files)
    ]
    CountedText.comparisons = 0
    scores = evaluate(predictions, truth)
    assert CountedText.comparisons <= 2 * len(files)
    assert scores["correct"] == 334 and scores["per_class"]["label 0"] == pytest.approx(
        {"precision": 2 / 5, "recall": 2 / 5, "f1": 2 / 5, "support": 5}
    )


def test_an_indexed_files_stored_windows_are_found_without_reading_a_table_whole(captions):
    """Evaluation asks for each file's windows, several times: a scan of every window (or every file's path) for
    each file of a 20,000 files' set took 28 ms a file."""
    with Library.open(captions.db, read_only=True) as library, recorded(library.store.engine) as statements:
        stored = stored_windows(library, captions.files["weather/rain.flac"], audio=True)
    assert stored is not None and [window.index for window in stored.windows] == [0, 1]
    plans = plan_steps(captions.db, statements)
    assert plans and not [step for step in plans if step.startswith("SCAN")]


def test_text_to_audio_reads_the_windows_under_the_audio_root_once_not_once_a_caption(captions, monkeypatch):
    """Each read is every window id under the root: 40,000 of them, 0.1 s, for each of 100,000 captions."""
    reads: list[str | None] = []
    with Library.open(captions.db, read_only=True) as library:
        meta = library.store.index_meta()
        assert meta is not None
        real = library.store.filter_window_ids

        def counted(**conditions):
            reads.append(conditions.get("under"))
            return real(**conditions)

        monkeypatch.setattr(library.store, "filter_window_ids", counted)
        under_root = Filters(path_glob=str(captions.root) + "/*")
        ranking = WindowMatching(Rank.caption, library, under_root, RandomEmbedder(meta.embedder.dim), None)
        ranked = ranking.text_to_audio([f"caption number {i}" for i in range(20)], 3)
    assert [len(found) for found in ranked] == [3] * 20
    assert reads == [str(captions.root)]


def python_calls(work: Callable[[], object]) -> int:
    """How many Python functions `work` calls (builtins and numpy's C loops not counted)."""
    calls = 0

    def count(_frame, event: str, _arg) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_a_class_average_precision_ranks_its_files_in_arrays_not_a_python_call_a_file():
    """Multi-label scoring ranks every file for every class: 527 classes of 20,000 files were 10 million Python calls
    (a sort key, a group's sort) before any was summed."""
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(10_000), 3).tolist()  # many ties: ranked together
    positive = (rng.random(10_000) < 0.1).tolist()
    assert python_calls(lambda: average_precision(scores, positive)) < 100


def test_audio_to_text_sorts_only_a_files_best_captions_not_every_caption(captions, monkeypatch):
    """The k best (and those tied with the k-th) are found by partition: sorting all 100,000 captions of a set for
    each of its 20,000 files cost more than scoring them."""
    sorted_sizes: list[int] = []
    real = np.argsort

    def counted(values, *args, **kwargs):
        sorted_sizes.append(len(values))
        return real(values, *args, **kwargs)

    texts = [f"caption number {i}" for i in range(500)]
    with Library.open(captions.db, read_only=True) as library:
        meta = library.store.index_meta()
        assert meta is not None
        ranking = WindowMatching(Rank.caption, library, Filters(), RandomEmbedder(meta.embedder.dim), None)
        monkeypatch.setattr(np, "argsort", counted)
        (ranked,) = ranking.audio_to_text([str(captions.files["bell.wav"])], texts, 10)
    assert len(ranked) == 10 and [score for _, score in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert sorted_sizes and max(sorted_sizes) < len(texts)

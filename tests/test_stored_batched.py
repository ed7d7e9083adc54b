"""`classify`, `eval retrieval` and `eval caption` read the stored windows and vectors of many indexed files together
(`stored_windows_of`), as `similar` does: a few store queries for all the files, where file by file made a few each.
Every file gets what it gets read alone: an indexed, unchanged file its stored captions or vectors; a file changed
since, or whose windows are gone, decoded (classify), without results (audio -> text) or left out (eval); a library
built by another model is not reused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pengi_search import stored
from pengi_search.classify import Classifier, ClassifySettings
from pengi_search.evaluation import retrieval
from pengi_search.evaluation.captioning import caption_origins, evaluate_captions, library_captions
from pengi_search.evaluation.datasets import CaptionSet, read_caption_set
from pengi_search.evaluation.retrieval import available_rankings, evaluate_retrieval
from pengi_search.inference import Engine
from pengi_search.library import Library
from pengi_search.model_dir import ModelDir
from pengi_search.query_embedders import audio_query_embedder, query_embedder
from pengi_search.testing import make_tiny_model_dir

from .search_library import CAPTIONED, CaptionLibrary, caption_library

LABELS = ["a dog barks", "rain on a roof", "a bell rings", "a cat meows", "wind"]
# Two more one-window files than the shared library has: four stay indexed once two are spoiled.
SHELF = {**CAPTIONED, "wind.wav": (2.0, ["wind howls"]), "birds/lark.flac": (4.0, ["a lark sings"])}
CHANGED, WINDOWLESS = "bell.wav", "animals/cat.flac"
# The order files are given in: indexed ones around the changed and the windowless one.
ORDER = ["animals/dog.wav", CHANGED, "weather/rain.flac", WINDOWLESS, "wind.wav", "birds/lark.flac"]
UNCHANGED = [name for name in ORDER if name not in (CHANGED, WINDOWLESS)]


@pytest.fixture(scope="module")
def shelf(tmp_path_factory, tiny_model_dir) -> CaptionLibrary:
    """A library of SHELF whose bell.wav was touched after indexing and whose cat.flac has no windows left."""
    root = tmp_path_factory.mktemp("stored-batched")
    found = caption_library(str(root / "index.db"), root / "sounds", tiny_model_dir, SHELF)
    stamp = os.stat(found.files[CHANGED]).st_mtime
    os.utime(found.files[CHANGED], (stamp, stamp + 60))
    with Library.open(found.db) as library:
        library.store.replace_file_windows(library.store.get_file(str(found.files[WINDOWLESS])).id, [])
    (root / "sounds" / "captions.csv").write_text(
        "file_name,caption_1\n" + "".join(f"{name},{SHELF[name][1][0]}\n" for name in ORDER)
    )
    return found


def paths_of(shelf: CaptionLibrary, names: list[str]) -> list[str]:
    return [str(shelf.files[name]) for name in names]


def classifier(library: Library, model_dir: Path, method: str) -> Classifier:
    """Loglik on an engine that scores one window a batch: its scores do not depend on which files share a batch,
    so those of files read together equal those of files read alone, to the bit."""
    engine = Engine.load(ModelDir.read(model_dir), "cpu", batch_size=1)
    return Classifier(LABELS, ClassifySettings(method=method), library=library, engine=engine)


@pytest.mark.parametrize("method", ["text", "loglik"])
def test_classify_gives_each_file_what_it_gets_read_alone(shelf, tiny_model_dir, method):
    paths = paths_of(shelf, ORDER)
    with Library.open(shelf.db, read_only=True) as library:
        c = classifier(library, tiny_model_dir, method)
        together = list(c.classify_files(paths))
        alone = [p for path in paths for p in c.classify_files([path])]
    assert together == alone
    assert [p.source for p in together] == ["index", "decoded", "index", "decoded", "index", "index"]
    assert [p.window_count for p in together] == [1, 1, 2, 1, 1, 1]


def test_a_library_of_another_model_is_not_reused_for_many_files(shelf, tmp_path):
    other = make_tiny_model_dir(tmp_path / "other", seed=4)
    paths = paths_of(shelf, UNCHANGED[:2])
    with Library.open(shelf.db, read_only=True) as library:
        c = classifier(library, other, "loglik")
        together = list(c.classify_files(paths))
        alone = [p for path in paths for p in c.classify_files([path])]
    assert c.library is None
    assert together == alone and [p.source for p in together] == ["decoded", "decoded"]


@pytest.mark.parametrize("method", ["text", "loglik"])
def test_classify_reads_the_store_as_often_for_four_stored_files_as_for_one(shelf, tiny_model_dir, store_reads, method):
    """File by file, each stored file cost three or four reads (its record, its windows' ids, their details, and for
    loglik its audio vectors)."""
    with Library.open(shelf.db, read_only=True) as library:
        c = classifier(library, tiny_model_dir, method)
        counts = []
        for names in (UNCHANGED[:1], UNCHANGED):
            store_reads["count"] = 0
            assert {p.source for p in c.classify_files(paths_of(shelf, names))} == {"index"}
            counts.append(store_reads["count"])
    assert counts[0] == counts[1]


def rankings(library: Library, model_dir: Path, root: Path) -> list[retrieval.Ranking]:
    embedder = query_embedder(library, str(model_dir), "cpu")
    tower = audio_query_embedder(library, str(model_dir), "cpu", caption_embedder=embedder)
    return available_rankings(library, embedder, str(root), tower)  # caption, audio and hybrid


@pytest.fixture()
def few_per_read(monkeypatch) -> None:
    """Two files read together: the files of a run are read in several rounds, a round's end among them."""
    for reader in (retrieval, stored):  # the audio-to-text rounds, and the files' reads (`each_stored_windows`)
        monkeypatch.setattr(reader, "FILES_PER_READ", 2)


def test_audio_to_text_ranks_each_files_captions_as_it_does_the_file_alone(shelf, tiny_model_dir, few_per_read):
    paths = paths_of(shelf, ORDER)
    captions = [caption for name in ORDER for caption in SHELF[name][1]]
    with Library.open(shelf.db, read_only=True) as library:
        for ranking in rankings(library, tiny_model_dir, shelf.root):
            together = ranking.audio_to_text(paths, captions, 3)
            alone = [found for path in paths for found in ranking.audio_to_text([path], captions, 3)]
            assert together == alone, ranking.name
            # The changed file and the windowless one have no stored windows: no caption ranked.
            assert [bool(found) for found in together] == [True, False, True, False, True, True], ranking.name


def test_eval_retrieval_evaluates_the_files_it_did_reading_each_alone(shelf, tiny_model_dir, monkeypatch):
    caption_set = read_caption_set(shelf.root / "captions.csv")
    with Library.open(shelf.db, read_only=True) as library:
        found = rankings(library, tiny_model_dir, shelf.root)
        reports = []
        for files in (1, 2):
            for reader in (retrieval, stored):
                monkeypatch.setattr(reader, "FILES_PER_READ", files)
            reports.append(evaluate_retrieval(library, caption_set, found))
    assert reports[0] == reports[1]
    assert reports[1]["evaluated"] == {"files": 4, "captions": 4}
    assert {row["path"] for row in reports[1]["skipped"]} == {CHANGED, WINDOWLESS}


def test_audio_to_text_reads_the_store_as_often_for_four_files_as_for_one(shelf, tiny_model_dir, store_reads):
    """File by file, each file cost one read of its windows and one of each vector kind the ranking compares."""
    captions = [caption for name in UNCHANGED for caption in SHELF[name][1]]
    with Library.open(shelf.db, read_only=True) as library:
        for ranking in rankings(library, tiny_model_dir, shelf.root):
            ranking.audio_to_text(paths_of(shelf, UNCHANGED[:1]), captions, 3)  # embeds the captions, once
            counts = []
            for names in (UNCHANGED[:1], UNCHANGED):
                store_reads["count"] = 0
                assert all(ranking.audio_to_text(paths_of(shelf, names), captions, 3))
                counts.append(store_reads["count"])
            assert counts[0] == counts[1], ranking.name


class _NoResults:
    """A ranking that finds nothing and reads nothing: what `evaluate_retrieval` reads itself is left to count."""

    name = description = "none"
    embedders: list = []

    def text_to_audio(self, captions, k):
        return [[] for _ in captions]

    def audio_to_text(self, paths, captions, k):
        return [[] for _ in paths]


def test_eval_retrieval_finds_which_files_are_indexed_in_a_few_reads(shelf, store_reads):
    written = shelf.root / "two.csv"
    written.write_text("file_name,caption_1\n" + "".join(f"{name},x\n" for name in UNCHANGED[:2]))
    counts = []
    with Library.open(shelf.db, read_only=True) as library:
        for caption_set in (read_caption_set(written), read_caption_set(shelf.root / "captions.csv")):
            store_reads["count"] = 0
            evaluate_retrieval(library, caption_set, [_NoResults()])
            counts.append(store_reads["count"])
    assert counts[0] == counts[1]


def caption_report(library: Library, caption_set: CaptionSet) -> dict:
    """What `eval caption` reports of the library's captions of the set (no embedder nor Java: the captions it
    reads are what is compared), with where they came from."""
    report = evaluate_captions(caption_set, library_captions(library, caption_set), "no embedder", java=False)
    return report | caption_origins(library, [item.path or "" for item in caption_set.found])


def test_eval_caption_reports_the_files_it_did_reading_each_alone(shelf, monkeypatch):
    caption_set = read_caption_set(shelf.root / "captions.csv")
    with Library.open(shelf.db, read_only=True) as library:
        reports = []
        for files in (1, 2, len(ORDER)):  # each file alone, rounds that end among the files, all at once
            monkeypatch.setattr(stored, "FILES_PER_READ", files)
            reports.append(caption_report(library, caption_set))
    assert reports[0] == reports[1] == reports[2]
    assert [item["path"] for item in reports[0]["items"]] == UNCHANGED
    assert [item["generated"] for item in reports[0]["items"]] == [SHELF[name][1][0] for name in UNCHANGED]
    assert {row["path"] for row in reports[0]["skipped"]} == {CHANGED, WINDOWLESS}


def test_eval_caption_reads_the_store_as_often_for_four_files_as_for_one(shelf, store_reads):
    """File by file, each file cost a few reads (its record, its windows' ids, their details), twice: once for its
    caption and once for what made the captions."""
    counts = []
    with Library.open(shelf.db, read_only=True) as library:
        for names in (UNCHANGED[:1], UNCHANGED):
            written = shelf.root / f"caption-{len(names)}.csv"
            written.write_text("file_name,caption_1\n" + "".join(f"{name},x\n" for name in names))
            caption_set = read_caption_set(written)
            store_reads["count"] = 0
            assert caption_report(library, caption_set)["evaluated"]["files"] == len(names)
            counts.append(store_reads["count"])
    assert counts[0] == counts[1]

"""Many files through the model at once: batches are filled across files, and what each file gets back is what it
gets on its own."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest
from typer.testing import CliRunner

from pengi_search.audio_workers import Decoded, Job, Windows, decode_all
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_PARTIAL
from pengi_search.window_batches import Decoding, batched_rows, map_windows

from .indexing import CountingProgress, write_tone

runner = CliRunner()


@pytest.fixture()
def folder(tmp_path):
    """Five short files (one window each), a long one (three windows) and an unreadable one in the middle."""
    files = [write_tone(tmp_path / f"short-{n}.wav", 1.0 + n, freq=200.0 + 70 * n) for n in range(3)]
    files.append(write_tone(tmp_path / "long.flac", 20.0, sr=22_050, freq=300.0))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....not audio")
    files.insert(2, broken)
    files += [write_tone(tmp_path / f"late-{n}.wav", 2.0, freq=900.0 + n) for n in range(2)]
    return files


def fingerprint(windows):
    """A stand-in for the model: one number per window, and the batches it was given."""
    return [float(np.abs(w.samples).sum()) for w in windows]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_cross_files_and_results_come_back_per_file_in_order(folder, workers):
    batches = []

    def work(windows):
        batches.append(len(windows))
        return fingerprint(windows)

    outcomes = list(map_windows(folder, work, batch_size=4, workers=workers))
    assert [o.path for o in outcomes] == [str(f) for f in folder]
    assert batches[:-1] == [4] * (len(batches) - 1)  # every batch full but the last, whatever file its windows are from
    broken = outcomes[2]
    assert "not a readable audio file" in broken.error and broken.results == [] and broken.spans == []
    for path, outcome in zip(folder, outcomes, strict=True):
        if outcome.error is None:
            alone = next(map_windows([path], fingerprint, batch_size=1, workers=0))
            assert outcome.results == pytest.approx(alone.results)
            assert outcome.spans == alone.spans and outcome.duration_s == pytest.approx(alone.duration_s)
    assert [(s.start_s, s.end_s) for s in outcomes[4].spans] == [(0.0, 7.0), (7.0, 14.0), (13.0, 20.0)]


def test_a_decoding_started_early_gives_what_the_paths_give(folder):
    expected = list(map_windows(folder, fingerprint, batch_size=4, workers=2))
    with Decoding(folder, workers=2) as decoding:  # decodes (and reads ahead) before map_windows is called
        outcomes = list(map_windows(decoding, fingerprint, batch_size=4))
    assert outcomes == expected


def test_closing_a_decoding_stops_its_workers_even_unread(folder):
    for read in (0, 1):
        decoding = Decoding(folder, workers=2)
        for _ in zip(range(read), decoding, strict=False):
            pass
        decoding.close()
        assert [p for p in multiprocessing.active_children() if p.name == "pengi-decode"] == []


def test_progress_counts_windows_and_files(folder):
    progress = CountingProgress()
    list(map_windows(folder, fingerprint, batch_size=3, workers=0, progress=progress))
    assert progress.seen == {"total": 7, "files": 7, "windows": 8, "counted": 8}


def test_rows_held_in_memory_are_batched_across_files_and_handed_back_per_file():
    """`batched_rows` (a library's stored vectors): full batches whatever the files' sizes, a smaller one at the
    end, each file's results together and in order, a file without rows included; the progress hears each batch's
    rows and each file before it is handed over."""
    batches, heard = [], []

    class Progress:
        def advance(self, files=0, windows=0):
            heard.append((files, windows))

    def work(rows):
        batches.append(rows)
        return [10 * row for row in rows]

    files = [[1], [2, 3, 4], [], [5], [6, 7]]
    results = batched_rows(files, work, batch_size=3, progress=Progress())
    assert next(results) == [10] and heard == [(0, 3), (1, 0)]
    assert list(results) == [[20, 30, 40], [], [50], [60, 70]]
    assert batches == [[1, 2, 3], [4, 5, 6], [7]]
    assert heard[2:] == [(0, 3), (1, 0), (1, 0), (1, 0), (0, 1), (1, 0)]


@pytest.mark.parametrize(("seconds", "hop_s"), [(0.05, 7.0), (7.0, 7.0), (20.0, 7.0), (60.0, 7.0), (20.0, 3.0)])
def test_a_files_first_windows_promise_as_many_windows_as_it_has(tmp_path, seconds, hop_s):
    """A long recording's count of windows comes from its header with its first windows, not only once it has all
    decoded: the progress bar's total counts it while it is read."""
    path = write_tone(tmp_path / "a.wav", seconds, sr=22_050)
    *chunks, decoded = decode_all([Job(0, str(path), hop_s=hop_s)], workers=0, chunk=1)
    assert isinstance(decoded, Decoded) and all(isinstance(chunk, Windows) for chunk in chunks)
    assert [chunk.promised for chunk in chunks] == [decoded.count] * decoded.count


def test_progress_hears_each_files_promise_before_its_count(folder):
    told = []

    class Progress:
        def start(self, files):
            pass

        def promised(self, windows):
            told.append(("promised", windows))

        def counted(self, windows, promised=None):
            told.append(("counted", windows, promised))

        def advance(self, files=0, windows=0):
            pass

    list(map_windows(folder, fingerprint, batch_size=3, workers=0, progress=Progress()))
    short = [("promised", 1), ("counted", 1, 1)]
    broken = [("counted", 0, None)]  # no header read: nothing promised
    long = [("promised", 3), ("counted", 3, 3)]
    assert told == short + short + broken + short + long + short + short


def describe_json(*args):
    result = runner.invoke(app, ["describe", *map(str, args), "--json", "--beam", "2", "--max-len", "3"])
    return result.exit_code, json.loads(result.stdout)


def test_describe_of_many_files_equals_describing_each_alone(tiny_model_dir, folder):
    code, together = describe_json(*folder, "--model", tiny_model_dir, "--batch-size", 3)
    assert code == EXIT_PARTIAL
    for path, entry in zip(folder, together, strict=True):
        alone_code, (alone,) = describe_json(path, "--model", tiny_model_dir)
        assert entry == alone
        assert (entry["error"] is None) == (alone_code == 0)


def test_ask_takes_several_files_before_the_question(tiny_model_dir, folder):
    files = [folder[0], folder[4]]
    result = runner.invoke(
        app, ["ask", *map(str, files), "is there a dog?", "--model", str(tiny_model_dir), "--json", "--max-len", "2"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["path"] for d in data] == [str(f) for f in files]
    assert [len(d["windows"]) for d in data] == [1, 3]
    assert all(list(w["answers"]) == ["answer"] for d in data for w in d["windows"])


@pytest.mark.parametrize("method", ["text", "loglik"])
def test_classify_of_many_files_equals_classifying_each_alone(tiny_model_dir, folder, method):
    from pengi_search.classify import Classifier, ClassifySettings, Failure
    from pengi_search.model_dir import ModelDir

    settings = ClassifySettings(method=method, beam=2, max_len=3)
    labels = ["a dog barks", "rain", "a bell rings"]

    def classifier(batch_size):
        model_dir = ModelDir.read(tiny_model_dir)
        return Classifier(labels, settings, model_dir=model_dir, device="cpu", batch_size=batch_size)

    together = list(classifier(3).classify_files(folder))
    assert isinstance(together[2], Failure) and together[2].path == str(folder[2])
    single = classifier(None)
    for path, outcome in zip(folder, together, strict=True):
        if isinstance(outcome, Failure):
            continue
        alone = single.classify(path)
        assert (outcome.path, outcome.window_count, outcome.source) == (str(path), alone.window_count, "decoded")
        assert [label for label, _ in outcome.ranked] == [label for label, _ in alone.ranked]
        assert [s for _, s in outcome.ranked] == pytest.approx([s for _, s in alone.ranked], abs=1e-5)


def test_similar_on_several_files_equals_each_alone(tiny_model_dir, folder, tmp_path):
    from pengi_search.library import Library
    from pengi_search.search import SearchScope
    from pengi_search.similar import similar_to_file, similar_to_files

    from .search_library import index_folder

    library_root = tmp_path / "library"
    for n in range(3):
        write_tone(library_root / f"indexed-{n}.wav", 3.0 + n, freq=150.0 * (n + 1))
    db = str(tmp_path / "index.db")
    index_folder(db, library_root, tiny_model_dir)
    queries = [folder[0], library_root / "indexed-1.wav", folder[2], folder[4]]
    with Library.open(db) as library:
        options = {"model": str(tiny_model_dir), "device": "cpu"}
        results = list(similar_to_files(library, queries, SearchScope(3), batch_size=2, **options))
        assert [r.source for r in results] == ["decoded", "index", None, "decoded"]  # None: no vectors from it
        assert results[2].error is not None and results[2].hits == []
        for query, result in zip(queries, results, strict=True):
            if result.error is None:
                hits, source = similar_to_file(library, query, SearchScope(3), **options)
                assert source == result.source
                assert [(h.path, h.start_s, h.query_start_s) for h in hits] == [
                    (h.path, h.start_s, h.query_start_s) for h in result.hits
                ]
                assert [h.score for h in hits] == pytest.approx([h.score for h in result.hits], abs=1e-5)
    args = ["similar", *map(str, queries), "--db", db, "--model", str(tiny_model_dir), "-k", "3", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_PARTIAL
    data = json.loads(result.stdout)
    assert [(d["path"], d["source"], d["error"] is None) for d in data] == [
        (str(q), r.source, r.error is None) for q, r in zip(queries, results, strict=True)
    ]
    assert [h["path"] for h in data[0]["hits"]] == [h.path for h in results[0].hits]

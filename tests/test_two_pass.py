"""Two-pass indexing: audio embeddings for every window first (similar works at once), captions second, in the same
run or a later one; a run killed in either pass loses at most its batch and repeats nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from indexer.hold_points import CAPTIONS_STORED, FILE_STORED
from indexer.pipeline import run_index
from pengi_search.choices import Captions, Rank
from pengi_search.cli import app
from pengi_search.db import caption_counts
from pengi_search.fast_mode import FastMode
from pengi_search.inference import Engine
from pengi_search.library import EmptyLibraryError, Library
from pengi_search.search import SearchScope, query_text
from pengi_search.similar import similar_to_file

from .indexing import (
    CAPTIONED,
    INDEXED,
    HeldRun,
    assert_consistent,
    assert_same_content,
    count_rows,
    db_content,
    indexer_command,
    kill_when,
    quick_options,
    window_vectors,
    write_clips,
    write_tone,
    write_tree,
)

runner = CliRunner()


@pytest.fixture()
def tree(tmp_path) -> Path:
    return write_tree(tmp_path / "sounds")


def test_captions_later_then_a_second_run_writes_them(tiny_model_dir, tree, tmp_path, monkeypatch):
    db = tmp_path / "later.db"
    first = run_index(quick_options([tree], db, tiny_model_dir, captions=Captions.later))
    assert (first.indexed, first.window_count, first.captioned, first.captions_missing) == (3, 4, 0, 4)
    with Library.open(str(db)) as library:
        assert caption_counts(library.store).to_json() == {"window_count": 4, "captioned": 0, "missing": 4}
        assert len(library.store.vector_ids("audio")) == 4 and len(library.store.vector_ids("text")) == 0
        # similar already covers the whole library, from the stored embeddings
        hits, source = similar_to_file(library, tree / "short.wav", model=str(tiny_model_dir), device="cpu")
        assert source == "index" and {h.path for h in hits} == {
            str(tree / "birds" / n) for n in ("long.wav", "tone.flac")
        }
        assert all(h.caption == "" and h.texts == {} for h in hits)
        # a text query ranks by audio embeddings while captions are missing
        found = query_text(library, "birds singing", SearchScope(5), model=str(tiny_model_dir))
        assert len(found) == 3 and {h.ranking for h in found} == {Rank.audio}
        with pytest.raises(EmptyLibraryError, match="no window has captions yet") as no_captions:
            query_text(library, "birds singing", model=str(tiny_model_dir), rank=Rank.caption)
        # the command that writes them, to paste: the library's folder, the library as named
        assert f"`pengi-search index {tree} --db {db}` writes them" in str(no_captions.value)
    assert_consistent_audio_only(db)

    # The second run has no file to decode: it only writes the captions, from the stored audio embeddings.
    monkeypatch.setattr(Engine, "audio_embeddings", _never)
    second = run_index(quick_options([tree], db, tiny_model_dir))
    assert (second.indexed, second.unchanged, second.window_count, second.captioned, second.captions_missing) == (
        0,
        3,
        0,
        4,
        0,
    )
    assert_consistent(db)
    monkeypatch.undo()

    one_run = tmp_path / "one-run.db"
    run_index(quick_options([tree], one_run, tiny_model_dir))
    assert_same_content(db, one_run)  # same texts, vectors and scores as captions written in the same run
    assert all(len(w["texts"]) == 2 for row in db_content(db) for w in row["windows"])


def _never(*_args, **_kwargs):
    raise AssertionError("audio was embedded again")


def assert_consistent_audio_only(db: Path) -> None:
    with Library.open(str(db)) as library:
        ids = library.store.vector_ids("audio")
        assert np.array_equal(library.vector_index("audio").ids(), ids)


def test_the_same_run_captions_after_every_audio_embedding_is_stored(tiny_model_dir, tree, tmp_path, monkeypatch):
    """Pass 2 starts only when pass 1 is committed and the FAISS files are saved: at that moment `similar` works
    on the whole set and no window has captions yet."""
    db = tmp_path / "lib.db"
    seen: dict[str, object] = {}

    class Probe:
        filling = None  # no index is filled from the database here

        def start(self, files):
            pass

        def promised(self, windows):
            pass

        def counted(self, windows, promised=None):
            pass

        def start_captions(self, windows):
            with Library.open(str(db)) as library:
                seen["counts"] = caption_counts(library.store).to_json()
                hits, _ = similar_to_file(
                    library, tree / "birds" / "tone.flac", model=str(tiny_model_dir), device="cpu"
                )
                seen["similar"] = sorted(Path(h.path).name for h in hits)
            seen["windows"] = windows

        def advance(self, files=0, windows=0):
            pass

    summary = run_index(quick_options([tree], db, tiny_model_dir), Probe())
    assert seen == {
        "counts": {"window_count": 4, "captioned": 0, "missing": 4},
        "similar": ["long.wav", "short.wav"],
        "windows": 4,
    }
    assert 0 < summary.searchable_s <= summary.seconds and (summary.captioned, summary.captions_missing) == (4, 0)
    assert_consistent(db)


def test_a_changed_file_loses_its_old_captions_and_gets_new_ones(tiny_model_dir, tree, tmp_path):
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir))
    write_tone(tree / "short.wav", 2.5, freq=700)
    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert (summary.indexed, summary.captioned, summary.captions_missing) == (1, 1, 0)
    with Library.open(str(db)) as library:
        assert caption_counts(library.store).to_json() == {"window_count": 4, "captioned": 4, "missing": 0}
    assert_consistent(db)


def test_captions_are_written_only_under_the_roots_of_the_run(tiny_model_dir, tree, tmp_path):
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir, captions=Captions.later))
    summary = run_index(quick_options([tree / "birds"], db, tiny_model_dir))
    assert (summary.captioned, summary.captions_missing) == (3, 0)
    with Library.open(str(db)) as library:
        assert caption_counts(library.store).missing == 1  # short.wav waits for a run over its folder
        assert caption_counts(library.store, under=str(tree / "short.wav")).missing == 1


def test_stats_and_index_say_how_many_windows_have_captions(tiny_model_dir, tree, tmp_path):
    db = tmp_path / "lib.db"
    common = ["--db", str(db), "--model", str(tiny_model_dir), "--workers", "0", "--beam", "2", "--max-len", "3"]
    result = runner.invoke(app, ["index", str(tree), *common, "--captions", "later", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "0 windows captioned" in result.stdout
    # A command to paste: the paths as given (quoted for the shell), the library named as given.
    assert f"4 windows have no captions yet: `pengi-search index {tree} --db {db}` writes them" in result.stdout
    result = runner.invoke(app, ["stats", "--db", str(db)])
    assert f"captions: 0 of 4 windows (4 waiting: `pengi-search index {tree} --db {db}` writes them)" in result.stdout
    assert json.loads(runner.invoke(app, ["stats", "--db", str(db), "--json"]).stdout)["captions"] == {
        "window_count": 4,
        "captioned": 0,
        "missing": 4,
        "by_mode": {},
    }
    result = runner.invoke(app, ["index", str(tree), *common, "--json", "--device", "cpu"])
    data = json.loads(result.stdout)
    assert (data["indexed"], data["captioned"], data["captions_missing"]) == (0, 4, 0)
    assert "captions: 4 of 4 windows (exact: 4)" in runner.invoke(app, ["stats", "--db", str(db)]).stdout
    bad = runner.invoke(app, ["index", str(tree), *common, "--captions", "never"])
    assert bad.exit_code == 2 and "Invalid value for '--captions'" in bad.output


def index_birds_fast_then_the_rest(tiny_model_dir: Path, tree: Path, db: Path) -> list[str]:
    """birds/ (3 windows) indexed with --fast, then short.wav (1 window) in exact mode; the common options."""
    common = ["--db", str(db), "--model", str(tiny_model_dir), "--workers", "0", "--beam", "2", "--max-len", "3"]
    result = runner.invoke(app, ["index", str(tree / "birds"), *common, "--fast", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["index", str(tree), *common, "--device", "cpu"])  # short.wav, in exact mode
    assert result.exit_code == 0, result.output
    return [*common, "--device", "cpu"]


def test_captions_written_in_fast_mode_say_so(tiny_model_dir, tree, tmp_path):
    """--fast answers are not exact mode's: each text records its mode, and stats counts windows by mode."""
    db = tmp_path / "lib.db"
    index_birds_fast_then_the_rest(tiny_model_dir, tree, db)
    fast = str(FastMode.for_device(torch.device("cpu")))
    assert fast != "exact"
    stats = json.loads(runner.invoke(app, ["stats", "--db", str(db), "--json"]).stdout)
    assert stats["captions"]["by_mode"] == {"exact": 1, fast: 3}
    by_mode = ", ".join(f"{mode}: {count}" for mode, count in sorted({"exact": 1, fast: 3}.items()))
    assert f"captions: 4 of 4 windows ({by_mode})" in runner.invoke(app, ["stats", "--db", str(db)]).stdout
    with Library.open(str(db)) as library:
        details = library.store.window_details(library.store.vector_ids("text"))
    modes = {detail.path: {t.mode for t in detail.texts} for detail in details.values()}
    expected = {
        str(tree / "short.wav"): {"exact"},
        **{str(tree / "birds" / n): {fast} for n in ("long.wav", "tone.flac")},
    }
    assert modes == expected
    exported = [json.loads(line) for line in runner.invoke(app, ["export", "--db", str(db)]).stdout.splitlines()]
    assert {row["path"]: {t["mode"] for w in row["windows"] for t in w["texts"]} for row in exported} == expected


def test_recaption_fast_gives_exact_captions_under_new_window_ids(tiny_model_dir, tree, tmp_path):
    """--recaption-fast: the --fast windows get the captions an exact run writes, as new windows (ids are never
    reused for other vectors), and the FAISS indexes follow."""
    db = tmp_path / "lib.db"
    common = index_birds_fast_then_the_rest(tiny_model_dir, tree, db)
    with Library.open(str(db)) as library:
        before = set(library.store.vector_ids("text").tolist())
    result = runner.invoke(app, ["index", str(tree), *common, "--recaption-fast", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["recaptioned"] == 3 and summary["captioned"] == 3 and summary["captions_missing"] == 0
    stats = json.loads(runner.invoke(app, ["stats", "--db", str(db), "--json"]).stdout)
    assert stats["captions"]["by_mode"] == {"exact": 4}

    exact_db = tmp_path / "exact.db"  # the same files indexed in exact mode from the start
    result = runner.invoke(app, ["index", str(tree), *[exact_db if a == str(db) else a for a in common]])
    assert result.exit_code == 0, result.output
    with Library.open(str(db)) as library, Library.open(str(exact_db)) as exact:
        after = library.store.vector_ids("text")
        assert len(set(after.tolist()) & before) == 1  # short.wav's window kept its id; the 3 others are new
        np.testing.assert_array_equal(library.vector_index("text").ids(), after)
        np.testing.assert_array_equal(library.vector_index("audio").ids(), library.store.vector_ids("audio"))
        assert texts_by_window(library) == texts_by_window(exact)
    again = runner.invoke(app, ["index", str(tree), *common, "--recaption-fast", "--json"])
    assert json.loads(again.stdout)["recaptioned"] == 0  # nothing left to redo


def texts_by_window(library: Library) -> dict[tuple[str, int], list[tuple[str, str]]]:
    details = library.store.window_details(library.store.vector_ids("text"))
    return {(d.path, d.index): [(t.prompt, t.text) for t in d.texts] for d in details.values()}


# -- kill -9 in either pass ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("killed_in", ["audio embeddings", "captions"])
def test_sigkill_in_either_pass_then_rerun_loses_and_repeats_nothing(tiny_model_dir, tmp_path, killed_in):
    root = tmp_path / "lib"
    count = 24
    write_clips(root, count)
    db = tmp_path / "lib.db"
    command = indexer_command(root, db, tiny_model_dir, max_len=8)
    held = HeldRun(FILE_STORED if killed_in == "audio embeddings" else CAPTIONS_STORED, tmp_path)
    kill_when(command, held.reached, held.env)
    embedded, captioned = count_rows(db, INDEXED), count_rows(db, CAPTIONED)
    # One window a batch: killed after the first file embedded, or after the first window captioned.
    assert (embedded, captioned) == ((1, 0) if killed_in == "audio embeddings" else (count, 1))

    summary = run_index(quick_options([root], db, tiny_model_dir, max_len=8))
    assert (summary.unchanged, summary.indexed, summary.failed) == (embedded, count - embedded, [])
    assert (summary.captioned, summary.captions_missing) == (count - captioned, 0)
    with Library.open(str(db)) as library:
        files = library.store.files_under(str(root))
        assert [run.status for run in library.store.runs(2)] == ["finished", "interrupted"]  # the killed run
        assert caption_counts(library.store).to_json() == {"window_count": count, "captioned": count, "missing": 0}
    assert len(files) == count and {f.status for f in files} == {"indexed"}
    rows = db_content(db)
    assert sorted(len(row["windows"]) for row in rows) == [1] * count  # one window per file, none repeated
    assert all(len(row["windows"][0]["texts"]) == 2 for row in rows)  # each prompt answered once
    assert len(window_vectors(db, "text")) == count
    assert_consistent(db)

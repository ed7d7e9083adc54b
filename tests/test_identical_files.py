"""A file whose bytes are indexed already (moved, renamed, copied) is indexed from them: not decoded nor captioned
again, and the library holds what a fresh index of the same folders holds."""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import indexer.pipeline as pipeline
import indexer.reuse as reuse
from indexer.captions import IndexModel
from indexer.pipeline import run_index
from indexer.reuse import IdenticalFiles
from indexer.shard import Shard
from pengi_search.choices import EXACT_MODE, Captions, StopRule
from pengi_search.cli import app
from pengi_search.db import (
    DatabaseFailureError,
    RefusedInputError,
    Store,
    TextRecord,
    caption_counts,
    copy_identical_file,
)
from pengi_search.hashing import file_sha256
from pengi_search.inference import Engine
from pengi_search.library import Library

from .indexing import (
    assert_consistent,
    assert_same_content,
    db_content,
    quick_options,
    write_tone,
    write_tree,
)
from .test_truncated import SECONDS, write_cut

OTHER_PROMPT = "this acoustic scene is"
PROMPTS = ("generate audio caption", "this is a sound of")  # the index's by default


@pytest.fixture()
def tree(tmp_path) -> Path:
    return write_tree(tmp_path / "sounds")


@pytest.fixture()
def model_work(monkeypatch) -> dict[str, int]:
    """Counts the model's loads, windows through its audio encoder and windows captioned."""
    work = {"loads": 0, "embedded": 0, "captioned": 0}
    load, embed, generate = Engine.load.__func__, Engine.audio_embeddings, Engine.generate

    def counting_load(cls, *args, **kwargs):
        work["loads"] += 1
        return load(cls, *args, **kwargs)

    def counting_embed(self, waves):
        work["embedded"] += len(waves)
        return embed(self, waves)

    def counting_generate(self, embeds, *args, **kwargs):
        work["captioned"] += len(embeds)
        return generate(self, embeds, *args, **kwargs)

    monkeypatch.setattr(Engine, "load", classmethod(counting_load))
    monkeypatch.setattr(Engine, "audio_embeddings", counting_embed)
    monkeypatch.setattr(Engine, "generate", counting_generate)
    return work


def indexed(root: Path, db: Path, model_dir: Path, work: dict[str, int], **options) -> Path:
    """`db` after a first run over `root`, the model's work counted from zero again."""
    run_index(quick_options([root], db, model_dir, **options))
    work.update(dict.fromkeys(work, 0))
    return db


def assert_as_a_fresh_index(db: Path, root: Path, model_dir: Path) -> None:
    """`db` holds what a first run over `root` gives, and its FAISS files hold its vectors."""
    fresh = db.with_name("fresh.db")
    run_index(quick_options([root], fresh, model_dir))
    assert_same_content(db, fresh)
    assert_consistent(db)


def test_files_renamed_or_moved_within_a_run_are_neither_decoded_nor_captioned(
    tiny_model_dir, tree, tmp_path, model_work
):
    db = indexed(tree, tmp_path / "lib.db", tiny_model_dir, model_work)
    (tree / "field").mkdir()
    shutil.move(tree / "birds", tree / "field" / "birds")  # a folder moved: its files' old paths are pruned
    os.rename(tree / "short.wav", tree / "renamed.wav")

    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert (summary.indexed, summary.reused, summary.pruned, summary.window_count, summary.captioned) == (3, 3, 3, 4, 0)
    assert model_work == {"loads": 0, "embedded": 0, "captioned": 0}
    assert summary.captions_missing == 0
    assert_as_a_fresh_index(db, tree, tiny_model_dir)


def test_a_copy_of_an_indexed_file_takes_its_windows_and_captions(tiny_model_dir, tree, tmp_path, model_work):
    db = indexed(tree, tmp_path / "lib.db", tiny_model_dir, model_work)
    shutil.copy(tree / "birds" / "long.wav", tree / "copy of long.wav")  # a new mtime: only the bytes are the same
    write_tone(tree / "new.wav", 2.0, freq=990)  # a new sound beside it is indexed as ever

    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert (summary.indexed, summary.reused, summary.unchanged, summary.window_count, summary.captioned) == (
        2,
        1,
        3,
        3,
        1,
    )
    assert model_work == {"loads": 1, "embedded": 1, "captioned": 1}  # new.wav's one window only
    rows = {Path(row["path"]).name: row for row in db_content(db)}
    assert rows["copy of long.wav"]["windows"] == rows["long.wav"]["windows"]
    assert_as_a_fresh_index(db, tree, tiny_model_dir)


def test_a_copy_the_store_refuses_is_decoded_as_its_own_file(tiny_model_dir, tree, tmp_path, model_work, monkeypatch):
    db = indexed(tree, tmp_path / "lib.db", tiny_model_dir, model_work)
    shutil.copy(tree / "birds" / "long.wav", tree / "copy of long.wav")

    def refused(*_args, **_kwargs):
        raise RefusedInputError("lib.db", "UNIQUE constraint failed: windows.id")

    monkeypatch.setattr(reuse, "copy_identical_file", refused)
    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert (summary.indexed, summary.reused, summary.failed) == (1, 0, [])
    assert model_work["embedded"] == 2  # its two windows, decoded and embedded after all
    assert_as_a_fresh_index(db, tree, tiny_model_dir)


def test_a_database_failure_while_copying_stops_the_run_and_blames_no_file(
    tiny_model_dir, tree, tmp_path, model_work, monkeypatch
):
    db = indexed(tree, tmp_path / "lib.db", tiny_model_dir, model_work)
    shutil.copy(tree / "birds" / "long.wav", tree / "copy of long.wav")

    def disk_full(*_args, **_kwargs):
        raise DatabaseFailureError("lib.db", "database or disk is full")

    monkeypatch.setattr(reuse, "copy_identical_file", disk_full)
    with pytest.raises(DatabaseFailureError, match="disk is full"):
        run_index(quick_options([tree], db, tiny_model_dir))
    assert model_work["embedded"] == 0  # not decoded instead: storing it would fail alike
    assert "copy of long.wav" not in {Path(row["path"]).name for row in db_content(db)}


def test_the_run_summary_says_how_many_files_were_reused(tiny_model_dir, tree, tmp_path):
    command = ["index", str(tree), "--db", str(tmp_path / "lib.db"), "--model", str(tiny_model_dir), "--workers", "0"]
    command += ["--beam", "2", "--max-len", "3", "--device", "cpu"]
    assert CliRunner().invoke(app, command).exit_code == 0
    os.rename(tree / "short.wav", tree / "renamed.wav")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0
    assert result.stdout.startswith("indexed 1 file (1 reused from identical files), 1 window in ")
    assert ", 0 windows captioned; 2 unchanged, 0 touched, 0 failed, 1 pruned\n" in result.stdout


def test_a_file_changed_into_a_copy_of_another_takes_that_files_windows(tiny_model_dir, tree, tmp_path, model_work):
    db = indexed(tree, tmp_path / "lib.db", tiny_model_dir, model_work)
    shutil.copy(tree / "birds" / "tone.flac", tree / "short.wav")  # same path, other bytes: those of tone.flac

    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert (summary.indexed, summary.reused, summary.captioned) == (1, 1, 0)
    assert model_work["captioned"] == 0
    assert_as_a_fresh_index(db, tree, tiny_model_dir)


def test_a_source_whose_captions_were_never_written_gives_its_audio_and_the_copy_is_captioned(
    tiny_model_dir, tree, tmp_path, model_work
):
    """Pass 2 never ran for the old path (`--captions later`, or a run killed before it): the moved file takes the
    audio embeddings and is captioned from them, as its old path would have been."""
    db = indexed(tree, tmp_path / "lib.db", tiny_model_dir, model_work, captions=Captions.later)
    shutil.move(tree / "birds", tree / "moved")

    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert (summary.indexed, summary.reused, summary.pruned, summary.captioned, summary.captions_missing) == (
        2,
        2,
        2,
        4,  # short.wav's window too: it waited from the first run
        0,
    )
    assert model_work == {"loads": 1, "embedded": 0, "captioned": 4}
    assert_as_a_fresh_index(db, tree, tiny_model_dir)


def test_captions_for_other_prompts_are_not_taken_the_audio_is(tiny_model_dir, tree, tmp_path, model_work):
    db = indexed(tree, tmp_path / "lib.db", tiny_model_dir, model_work)
    shutil.copy(tree / "short.wav", tree / "copy.wav")

    summary = run_index(quick_options([tree], db, tiny_model_dir, prompts=(OTHER_PROMPT,)))
    assert (summary.indexed, summary.reused, summary.captioned) == (1, 1, 1)
    assert model_work == {"loads": 1, "embedded": 0, "captioned": 1}
    rows = {Path(row["path"]).name: row for row in db_content(db)}
    assert [text["prompt"] for text in rows["copy.wav"]["windows"][0]["texts"]] == [OTHER_PROMPT]


@pytest.mark.parametrize("other", [{"beam": 3}, {"max_len": 4}, {"stop": StopRule.original}])
def test_captions_decoded_with_other_settings_are_not_taken_the_audio_is(
    tiny_model_dir, tree, tmp_path, model_work, other
):
    """--beam, --max-len and --stop change the answers as the prompts do: the copy is captioned as this run
    captions, not given answers another run decoded otherwise."""
    db = indexed(tree, tmp_path / "lib.db", tiny_model_dir, model_work)
    shutil.copy(tree / "short.wav", tree / "copy.wav")

    summary = run_index(quick_options([tree], db, tiny_model_dir, **other))
    assert (summary.indexed, summary.reused, summary.captioned) == (1, 1, 1)
    assert model_work == {"loads": 1, "embedded": 0, "captioned": 1}
    rows = {Path(row["path"]).name: row for row in db_content(db)}
    decoding = quick_options([tree], db, tiny_model_dir, **other).decoding
    assert {text["decoding"] for text in rows["copy.wav"]["windows"][0]["texts"]} == {decoding}


def test_fast_runs_record_the_one_beam_they_decode_with_and_take_each_others_captions_whatever_beam_they_ask(
    tiny_model_dir, tree, tmp_path, model_work
):
    """--fast decodes greedily whatever --beam asks, and its texts say so: a copy found by a --fast run asking
    another --beam takes the answers the first --fast run decoded exactly as it would decode them."""
    db = indexed(tree, tmp_path / "lib.db", tiny_model_dir, model_work, fast=True, beam=2)
    assert {text["decoding"] for row in db_content(db) for window in row["windows"] for text in window["texts"]} == {
        "beam=1 max_len=3 stop=both"
    }
    shutil.copy(tree / "short.wav", tree / "copy.wav")

    summary = run_index(quick_options([tree], db, tiny_model_dir, fast=True, beam=3))
    assert (summary.indexed, summary.reused, summary.captioned) == (1, 1, 0)
    assert model_work == {"loads": 0, "embedded": 0, "captioned": 0}


def test_texts_record_their_decoding_settings_and_unrecorded_ones_count_as_this_runs(tmp_path):
    def accepts(decoding: str | None, **asked) -> bool:
        options = quick_options([tmp_path], tmp_path / "lib.db", tmp_path, **asked)
        texts = [TextRecord(prompt, "a dog", -0.5, EXACT_MODE, decoding) for prompt in options.prompts or PROMPTS]
        return IdenticalFiles(None, options, None).texts_ok(texts)  # type: ignore[arg-type]

    assert quick_options([tmp_path], tmp_path / "lib.db", tmp_path).decoding == "beam=2 max_len=3 stop=both"
    assert accepts("beam=2 max_len=3 stop=both") and not accepts("beam=3 max_len=3 stop=both")
    assert accepts("beam=2 max_len=3 stop=original", stop=StopRule.original)
    assert accepts(None) and accepts(None, beam=5)  # written before decoding settings were recorded


def test_exact_captions_serve_any_run_and_fast_ones_only_a_fast_run(tmp_path):
    prompts = ("generate audio caption", "this is a sound of")

    def texts(mode: str | None) -> list[TextRecord]:
        return [TextRecord(prompt, "a dog", -0.5, mode) for prompt in prompts]

    def accepts(fast: bool, mode: str | None, asked: tuple[str, ...] = ()) -> bool:
        options = quick_options([tmp_path], tmp_path / "lib.db", tmp_path, fast=fast, prompts=asked)
        return IdenticalFiles(None, options, None).texts_ok(texts(mode))  # type: ignore[arg-type]

    assert accepts(False, EXACT_MODE) and accepts(True, EXACT_MODE)
    assert accepts(True, "bf16+greedy") and not accepts(False, "bf16+greedy")
    assert not accepts(False, None) and not accepts(True, None)  # written before modes were recorded: unknown
    assert accepts(False, EXACT_MODE, prompts) and not accepts(False, EXACT_MODE, prompts[::-1])


def test_a_copy_of_a_cut_file_says_so_and_strict_decodes_it_to_fail_it(tiny_model_dir, tmp_path, model_work):
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    write_cut(root / "cut.mp3", 1 / 7)
    run_index(quick_options([root], db, tiny_model_dir))
    shutil.copy(root / "cut.mp3", root / "copy.mp3")

    copied = run_index(quick_options([root], db, tiny_model_dir))
    assert (copied.indexed, copied.reused) == (1, 1)
    assert [(Path(n.path).name, n.message[:29]) for n in copied.truncated] == [
        ("copy.mp3", f"truncated: header says {SECONDS:.2f} s")
    ]
    assert any("Xing" in note.message for note in copied.decoder_notes)

    shutil.copy(root / "cut.mp3", root / "strict copy.mp3")
    strict = run_index(quick_options([root], db, tiny_model_dir, strict=True))
    assert (strict.indexed, strict.reused) == (0, 0)
    assert [(Path(f.path).name, f.message[:29]) for f in strict.failed] == [
        ("strict copy.mp3", f"truncated: header says {SECONDS:.2f} s")
    ]


def test_an_interrupted_run_of_copies_resumes_and_repeats_nothing(tiny_model_dir, tree, tmp_path, monkeypatch):
    """Each copy is one transaction: a run stopped among them keeps those made, and the next makes the rest."""
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir))
    shutil.move(tree / "birds", tree / "moved")
    made = []
    real_copy = pipeline.IdenticalFiles.copy

    def stopped_at_the_second(self, entry):
        if made:
            raise KeyboardInterrupt
        made.append(real_copy(self, entry))
        return made[-1]

    monkeypatch.setattr(pipeline.IdenticalFiles, "copy", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_index(quick_options([tree], db, tiny_model_dir))
    monkeypatch.undo()

    again = run_index(quick_options([tree], db, tiny_model_dir))
    assert (again.indexed, again.reused, again.unchanged, again.pruned, again.captioned) == (1, 1, 2, 2, 0)
    with Store.open(str(db)) as store:
        assert [run.status for run in store.runs(2)] == ["finished", "interrupted"]
    assert_as_a_fresh_index(db, tree, tiny_model_dir)


@pytest.mark.parametrize("order", [(1, 0), (0, 1)])
def test_shards_index_moved_files_as_a_single_run_does(tiny_model_dir, tmp_path, order):
    """Shard 0 prunes the old paths: a shard that comes after it finds them gone and decodes its files instead."""
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    for n in range(6):
        write_tone(root / "old" / f"clip-{n}.wav", 1.0 + n, freq=200 + 90 * n)
    run_index(quick_options([root], db, tiny_model_dir))
    shutil.move(root / "old", root / "new")

    parts = [run_index(quick_options([root], db, tiny_model_dir, shard=Shard(i, 2))) for i in order]
    assert sum(part.indexed for part in parts) == 6
    if order == (1, 0):
        assert [part.reused for part in parts] == [part.indexed for part in parts]
    with Library.open(str(db)) as library:
        assert {Path(f.path).parent.name for f in library.store.files_under()} == {"new"}
    assert_as_a_fresh_index(db, root, tiny_model_dir)


def test_identical_new_files_of_one_run_are_decoded_and_captioned_once(tiny_model_dir, tmp_path, model_work):
    """A folder of copies added at once: the first is decoded and captioned, the others are copied from it once it
    is stored, though their windows would have shared its batches."""
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    write_tone(root / "a.wav", 9.0, freq=880)  # two windows
    shutil.copy(root / "a.wav", root / "b.wav")
    (root / "copies").mkdir()
    shutil.copy(root / "a.wav", root / "copies" / "c.wav")
    write_tone(root / "other.wav", 1.5, freq=330)

    summary = run_index(quick_options([root], db, tiny_model_dir, batch_size=8))
    assert (summary.indexed, summary.reused, summary.window_count, summary.captioned) == (4, 2, 7, 3)
    assert model_work == {"loads": 1, "embedded": 3, "captioned": 3}  # a.wav's two windows and other.wav's one
    rows = {Path(row["path"]).name: row for row in db_content(db)}
    assert rows["b.wav"]["windows"] == rows["c.wav"]["windows"] == rows["a.wav"]["windows"]
    assert summary.captions_missing == 0
    assert_consistent(db)


def test_identical_new_files_wait_for_the_first_with_captions_later_too(tiny_model_dir, tmp_path, model_work):
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    write_tone(root / "a.wav", 9.0, freq=880)
    shutil.copy(root / "a.wav", root / "b.wav")

    summary = run_index(quick_options([root], db, tiny_model_dir, captions=Captions.later))
    assert (summary.indexed, summary.reused, summary.window_count, summary.captions_missing) == (2, 1, 4, 4)
    assert model_work == {"loads": 1, "embedded": 2, "captioned": 0}
    rows = {Path(row["path"]).name: row for row in db_content(db)}
    assert rows["b.wav"]["windows"] == rows["a.wav"]["windows"]


def write_copies(root: Path) -> Path:
    """`a.wav` (two windows) with two copies, `b.wav` and `c.wav`, and another sound, `other.wav` (one window)."""
    write_tone(root / "a.wav", 9.0, freq=880)
    shutil.copy(root / "a.wav", root / "b.wav")
    shutil.copy(root / "a.wav", root / "c.wav")
    write_tone(root / "other.wav", 1.5, freq=330)
    return root


@pytest.mark.parametrize("batch_size", [1, 8], ids=["twins-in-later-batches", "twins-in-one-batch"])
def test_identical_files_indexed_with_captions_later_are_captioned_once_by_the_next_run(
    tiny_model_dir, tmp_path, model_work, batch_size
):
    """The copies share the first file's windows; the run that captions them captions each window once and gives
    its twins (the same bytes, window and audio embedding) the same texts and caption vector."""
    root = write_copies(tmp_path / "sounds")
    db = indexed(root, tmp_path / "lib.db", tiny_model_dir, model_work, captions=Captions.later)

    summary = run_index(quick_options([root], db, tiny_model_dir, batch_size=batch_size))
    assert (summary.indexed, summary.captioned, summary.captions_missing) == (0, 7, 0)
    assert model_work == {"loads": 1, "embedded": 0, "captioned": 3}  # a.wav's two windows and other.wav's one
    assert_as_a_fresh_index(db, root, tiny_model_dir)


def test_copies_of_a_file_captioned_with_other_settings_are_captioned_once(tiny_model_dir, tree, tmp_path, model_work):
    """Another --beam: the copies take the indexed file's audio, not its captions, and pass 2 captions their
    window once for both, as a fresh index with that --beam captions it."""
    db = indexed(tree, tmp_path / "lib.db", tiny_model_dir, model_work)
    for name in ("copy 1.wav", "copy 2.wav"):
        shutil.copy(tree / "short.wav", tree / name)

    summary = run_index(quick_options([tree], db, tiny_model_dir, beam=3))
    assert (summary.indexed, summary.reused, summary.captioned) == (2, 2, 2)
    assert model_work == {"loads": 1, "embedded": 0, "captioned": 1}
    fresh = tmp_path / "fresh"
    shutil.copy(tree / "short.wav", write_tone(fresh / "other.wav", 1.0).with_name("short.wav"))
    run_index(quick_options([fresh], tmp_path / "fresh.db", tiny_model_dir, beam=3))

    def texts(rows, name: str) -> list[tuple[str, str, str]]:
        (row,) = (row for row in rows if Path(row["path"]).name == name)
        return [(t["prompt"], t["text"], t["decoding"]) for window in row["windows"] for t in window["texts"]]

    rows, fresh_rows = db_content(db), db_content(tmp_path / "fresh.db")
    assert texts(rows, "copy 1.wav") == texts(rows, "copy 2.wav") == texts(fresh_rows, "short.wav")
    assert_consistent(db)


def test_a_twin_whose_audio_embedding_differs_is_captioned_from_its_own(tiny_model_dir, tmp_path, model_work):
    """Files decoded apart may round their audio embeddings otherwise; captions come from the embedding, so only
    windows whose stored embedding is the same bit for bit share them."""
    root = write_copies(tmp_path / "sounds")
    db = indexed(root, tmp_path / "lib.db", tiny_model_dir, model_work, captions=Captions.later)
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT v.window_id, v.vector FROM window_vectors v JOIN windows w ON w.id = v.window_id "
            "JOIN audio_files f ON f.id = w.file_id WHERE f.path LIKE '%/c.wav' AND v.kind = 'audio'"
        ).fetchall()
        for window_id, blob in rows:
            moved = np.frombuffer(blob, dtype="<f4") + np.float32(1e-3)
            connection.execute(
                "UPDATE window_vectors SET vector = ? WHERE window_id = ? AND kind = 'audio'",
                (moved.tobytes(), window_id),
            )

    summary = run_index(quick_options([root], db, tiny_model_dir))
    assert (summary.captioned, summary.captions_missing) == (7, 0)
    assert model_work["captioned"] == 5  # c.wav's two windows on their own


def test_captions_the_store_refuses_fail_their_window_and_its_twins_alone(
    tiny_model_dir, tmp_path, model_work, monkeypatch
):
    root = write_copies(tmp_path / "sounds")
    db = indexed(root, tmp_path / "lib.db", tiny_model_dir, model_work, captions=Captions.later)
    captions = IndexModel.captions

    def a_nan_vector_for_the_first_window(self, windows):
        made = captions(self, windows)
        bad = [(Path(window.path).name, window.index) == ("a.wav", 0) for window in windows]
        return [replace(c, text_vector=c.text_vector * np.nan) if b else c for c, b in zip(made, bad, strict=True)]

    monkeypatch.setattr(IndexModel, "captions", a_nan_vector_for_the_first_window)
    summary = run_index(quick_options([root], db, tiny_model_dir, batch_size=8))
    assert (summary.captioned, summary.captions_missing) == (4, 3)
    assert sorted((Path(failed.path).name, failed.message[:8]) for failed in summary.failed) == [
        (name, "window 0") for name in ("a.wav", "b.wav", "c.wav")
    ]


def test_twins_outside_the_folders_indexed_keep_waiting(tiny_model_dir, tmp_path, model_work):
    """Pass 2 captions the windows below the folders it is given; a twin elsewhere waits for a run over its own."""
    root = tmp_path / "sounds"
    write_tone(root / "here" / "a.wav", 9.0, freq=880)
    shutil.copytree(root / "here", root / "there")
    db = indexed(root, tmp_path / "lib.db", tiny_model_dir, model_work, captions=Captions.later)

    summary = run_index(quick_options([root / "here"], db, tiny_model_dir))
    assert (summary.captioned, summary.captions_missing) == (2, 0)
    with Store.open(str(db)) as store:
        assert caption_counts(store, under=str(root / "there")).missing == 2


def test_a_file_whose_twin_cannot_be_decoded_is_decoded_and_fails_on_its_own(tiny_model_dir, tmp_path):
    root, db = tmp_path / "sounds", tmp_path / "lib.db"
    for name in ("a.wav", "b.wav"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not audio at all" * 64)
    write_tone(root / "other.wav", 1.5, freq=330)

    summary = run_index(quick_options([root], db, tiny_model_dir))
    assert (summary.indexed, summary.reused) == (1, 0)
    assert sorted(Path(failed.path).name for failed in summary.failed) == ["a.wav", "b.wav"]


def test_hashing_files_that_may_be_copies_is_reported_in_files(tiny_model_dir, tmp_path):
    """Only files of a size that another has are hashed; on a large library of same-size files that takes a while,
    so it has its bar, before pass 1's."""
    root = tmp_path / "sounds"
    for name in ("a.wav", "b.wav", "c.wav"):  # the same length and rate: the same size, other bytes
        write_tone(root / name, 1.0, freq={"a.wav": 300, "b.wav": 500, "c.wav": 700}[name])
    write_tone(root / "longer.wav", 2.0)
    events: list[tuple[str, int]] = []

    class Recorder:
        filling = None  # no index is filled from the database here

        def start_hashing(self, files):
            events.append(("hashing", files))

        def start(self, files):
            events.append(("start", files))

        def promised(self, windows):
            pass

        def counted(self, windows, promised=None):
            pass

        def start_captions(self, windows):
            events.append(("captions", windows))

        def advance(self, files=0, windows=0):
            events.append(("files", files) if files else ("windows", windows))

    summary = run_index(quick_options([root], tmp_path / "lib.db", tiny_model_dir), Recorder())
    assert (summary.indexed, summary.reused) == (4, 0)
    assert events[:5] == [("hashing", 3), ("files", 1), ("files", 1), ("files", 1), ("start", 4)]


def test_a_copy_judges_each_windows_texts_once(tiny_model_dir, tree, tmp_path):
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir))
    copy = shutil.copy(tree / "birds" / "long.wav", tree / "copy.wav")
    judged = []

    def texts_ok(texts):
        judged.append(texts)
        return True

    with Store.open(str(db)) as store:
        (source,) = store.files_with_hash(file_sha256(copy))
        stat = os.stat(copy)
        made = copy_identical_file(
            store,
            str(copy),
            [source.id],
            texts_ok,
            size=stat.st_size,
            mtime=stat.st_mtime,
            content_hash=source.content_hash,
        )
    assert made is not None and made.windows == made.captioned == 2
    assert len(judged) == 2

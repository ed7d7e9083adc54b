"""A library that outlives moves: a folder moved or renamed outside the paths of a run is reused, and the run says
which old paths, gone from disk, are still indexed and how to forget them."""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.pipeline import run_index
from indexer.run_report import GoneSources
from pengi_search.cli import app
from pengi_search.hashing import file_sha256
from pengi_search.library import Library

from .indexing import quick_options, write_tone, write_tree

runner = CliRunner()
QUICK = ("--workers", "0", "--beam", "2", "--max-len", "3", "--device", "cpu", "--quiet")


@pytest.fixture()
def sounds(tmp_path, tiny_model_dir) -> Path:
    """`short.wav`, `birds/long.wav`, `birds/tone.flac`, indexed into `lib.db` beside them."""
    root = write_tree(tmp_path / "Sounds")
    run_index(quick_options([root], tmp_path / "lib.db", tiny_model_dir))
    return root


def indexed_paths(db: Path) -> list[str]:
    with Library.open(str(db)) as library:
        return [record.path for record in library.store.files_under()]


def test_a_renamed_root_is_reused_and_the_run_names_the_gone_folder_to_forget_without_forgetting_it(
    sounds, tmp_path, tiny_model_dir
):
    audio = tmp_path / "Audio"
    os.rename(sounds, audio)  # mv ~/Sounds ~/Audio
    summary = run_index(quick_options([audio], tmp_path / "lib.db", tiny_model_dir))
    assert (summary.indexed, summary.reused) == (3, 3)
    assert summary.gone_sources == [GoneSources(str(sounds), 3)]
    assert summary.to_json()["gone_sources"] == [{"path": str(sounds), "files": 3}]
    assert len(indexed_paths(tmp_path / "lib.db")) == 6  # nothing removed: that is the user's call


def test_the_summary_says_how_many_files_and_the_remove_command_that_forgets_the_gone_ones(
    sounds, tmp_path, tiny_model_dir, monkeypatch
):
    """The command names the library given with --db, so that, pasted, it acts on that library, not the default."""
    monkeypatch.chdir(tmp_path)
    audio = tmp_path / "Audio"
    os.rename(sounds, audio)
    os.rename("lib.db", "my lib.db")  # a name the shell must have quoted
    result = runner.invoke(app, ["index", str(audio), "--db", "my lib.db", "--model", str(tiny_model_dir), *QUICK])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"note: 3 files are copies of indexed files gone from disk at or under {sounds} (queries still find them "
        f"there): pengi-search remove {sounds} --db 'my lib.db' forgets them"
    ]
    pasted = shlex.split(result.stderr.partition("): ")[2].removesuffix(" forgets them\n"))
    assert pasted[0] == "pengi-search"
    forget = runner.invoke(app, pasted[1:])
    assert forget.exit_code == 0, forget.output
    assert indexed_paths(tmp_path / "my lib.db") == sorted(str(path) for path in audio.rglob("*.*"))


def test_files_moved_out_of_a_folder_that_keeps_indexed_files_are_named_one_by_one(sounds, tmp_path, tiny_model_dir):
    """`remove Sounds` would forget `birds/tone.flac`, still there: only what is gone is named."""
    audio = tmp_path / "Audio"
    audio.mkdir()
    shutil.move(sounds / "short.wav", audio / "short.wav")
    shutil.move(sounds / "birds" / "long.wav", audio / "long.wav")
    summary = run_index(quick_options([audio], tmp_path / "lib.db", tiny_model_dir))
    assert summary.reused == 2
    assert summary.gone_sources == [
        GoneSources(str(sounds / "birds" / "long.wav"), 1),
        GoneSources(str(sounds / "short.wav"), 1),
    ]


def test_a_folder_whose_indexed_files_are_all_gone_is_named_though_it_is_still_there(sounds, tmp_path, tiny_model_dir):
    audio = tmp_path / "Audio"
    audio.mkdir()
    shutil.move(sounds / "short.wav", audio / "short.wav")
    shutil.move(sounds / "birds" / "long.wav", audio / "long.wav")
    (sounds / "birds" / "tone.flac").unlink()  # deleted, not moved: gone all the same, and `remove` forgets it too
    summary = run_index(quick_options([audio], tmp_path / "lib.db", tiny_model_dir))
    assert sounds.is_dir() and summary.gone_sources == [GoneSources(str(sounds), 2)]


def test_copies_of_files_still_on_disk_and_moves_within_the_run_name_nothing(sounds, tmp_path, tiny_model_dir):
    shutil.copytree(sounds / "birds", tmp_path / "Backup")  # the originals are still there
    os.rename(sounds / "short.wav", sounds / "renamed.wav")  # the run prunes the old path itself
    summary = run_index(quick_options([sounds, tmp_path / "Backup"], tmp_path / "lib.db", tiny_model_dir))
    assert (summary.reused, summary.pruned, summary.gone_sources) == (3, 1, [])
    assert summary.to_json()["gone_sources"] == []


def content_hashes(db: Path) -> dict[str, str | None]:
    """Each file's content hash, by its path relative to the library's folder."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT path, content_hash FROM audio_files").fetchall()
    return {str(Path(path).relative_to(db.parent)): digest for path, digest in rows}


def test_a_library_indexed_before_content_hashes_reuses_a_copy_by_hashing_the_indexed_files_of_its_size(
    sounds, tmp_path, tiny_model_dir
):
    """Schema revision 0002 added content hashes, none for the files indexed before: the indexed files of a new
    file's size are hashed (once, the hash stored) where they are on disk as they were indexed, and only those."""
    db = tmp_path / "lib.db"
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE audio_files SET content_hash = NULL")  # as revision 0001 left every file
    os.utime(sounds / "birds" / "tone.flac", (1.0, 1.0))  # changed since it was indexed, for all the run can tell
    shutil.copytree(sounds / "birds", tmp_path / "NewDrive" / "birds")  # moved to another drive, by a copy
    summary = run_index(quick_options([tmp_path / "NewDrive"], db, tiny_model_dir))
    assert (summary.indexed, summary.reused) == (2, 1)  # long.wav taken; tone.flac decoded again
    long, tone = file_sha256(sounds / "birds" / "long.wav"), file_sha256(sounds / "birds" / "tone.flac")
    assert content_hashes(db) == {
        "Sounds/short.wav": None,  # no new file of its size: not read
        "Sounds/birds/long.wav": long,
        "Sounds/birds/tone.flac": None,  # its windows may not be of these bytes: not taken, not hashed
        "NewDrive/birds/long.wav": long,
        "NewDrive/birds/tone.flac": tone,
    }


def forget_content_hashes(db: Path) -> None:
    """The library as schema revision 0001 left it: no file has a content hash."""
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE audio_files SET content_hash = NULL")


def test_a_library_indexed_before_content_hashes_names_a_moved_folder_by_the_files_size_and_time(
    sounds, tmp_path, tiny_model_dir
):
    """Gone files cannot be hashed, so the run decodes the moved ones again; a move keeps each file's size and
    mtime, and the old paths with those of the run's files are named as a hashed library's are."""
    forget_content_hashes(tmp_path / "lib.db")
    audio = tmp_path / "Audio"
    os.rename(sounds, audio)
    summary = run_index(quick_options([audio], tmp_path / "lib.db", tiny_model_dir))
    assert (summary.indexed, summary.reused) == (3, 0)
    assert summary.gone_sources == [GoneSources(str(sounds), 3)]
    assert len(indexed_paths(tmp_path / "lib.db")) == 6


def test_unhashed_files_moved_out_of_a_folder_that_keeps_indexed_files_are_named_one_by_one(
    sounds, tmp_path, tiny_model_dir
):
    forget_content_hashes(tmp_path / "lib.db")
    audio = tmp_path / "Audio"
    audio.mkdir()
    shutil.move(sounds / "short.wav", audio / "short.wav")
    shutil.move(sounds / "birds" / "long.wav", audio / "long.wav")
    summary = run_index(quick_options([audio], tmp_path / "lib.db", tiny_model_dir))
    assert summary.gone_sources == [
        GoneSources(str(sounds / "birds" / "long.wav"), 1),
        GoneSources(str(sounds / "short.wav"), 1),
    ]


def test_unhashed_gone_files_of_the_same_size_but_another_time_are_not_named(sounds, tmp_path, tiny_model_dir):
    """An unmounted drive of clips as long as the new ones: the same sizes, but nothing says they were moved (clips
    of one length and format often have one size), so its files are not offered to `remove`."""
    forget_content_hashes(tmp_path / "lib.db")
    os.rename(sounds, tmp_path / "unmounted")
    fresh = write_tree(tmp_path / "Fresh")
    for path in fresh.rglob("*.*"):
        os.utime(path, (1.0, 1.0))
    summary = run_index(quick_options([fresh], tmp_path / "lib.db", tiny_model_dir))
    assert (summary.indexed, summary.gone_sources) == (3, [])


def test_unhashed_files_moved_with_one_size_and_time_are_each_named(tmp_path, tiny_model_dir):
    """Two different clips of one length and format, copied with their times (`cp -p`), share size and mtime: each
    of the run's files stands for one old path, so both old paths are named, none twice."""
    old, new = tmp_path / "Old", tmp_path / "New"
    write_tone(old / "keep.wav", 2.0)
    for path, freq in ((old / "one.wav", 440.0), (old / "sub" / "two.wav", 880.0)):
        write_tone(path, 1.0, freq=freq)
        os.utime(path, (1_000_000.0, 1_000_000.0))
    run_index(quick_options([old], tmp_path / "lib.db", tiny_model_dir))
    forget_content_hashes(tmp_path / "lib.db")
    new.mkdir()
    shutil.move(old / "one.wav", new / "one.wav")
    shutil.move(old / "sub" / "two.wav", new / "two.wav")
    summary = run_index(quick_options([new], tmp_path / "lib.db", tiny_model_dir))
    assert summary.gone_sources == [GoneSources(str(old / "one.wav"), 1), GoneSources(str(old / "sub"), 1)]


def test_each_file_of_a_set_as_a_root_keeps_its_own_source_and_names_the_gone_ones(tmp_path):
    """`eval` gives each file of its set as a root: a source below one is the run's to prune, one outside all of
    them and gone from disk is named (each source asked about by its folders, not against each of the roots)."""
    from indexer.left_behind import left_behind
    from indexer.roots import Roots
    from pengi_search.db import Store

    roots = Roots([str(tmp_path / f"set/clip-{n:04d}.wav") for n in range(2000)])
    sources = [str(tmp_path / "set/clip-0007.wav"), str(tmp_path / "old/clip-0007.wav")]
    with Store.open(str(tmp_path / "lib.db")) as store:
        assert left_behind(store, sources, roots) == [GoneSources(str(tmp_path / "old"), 1)]

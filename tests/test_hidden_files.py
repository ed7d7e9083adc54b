"""What real libraries hold beside their audio: hidden files and folders (`.Trash-1000/`, `.git/`, sync tools' and
editors' temporary files) are passed over unless `--hidden`, AppleDouble files (`._dog.wav`) always; a path given
directly is always used. The same rule for every command that walks folders, for `index --watch`, and for what an
earlier run indexed."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.pipeline import run_index
from indexer.watch import LibraryWatch
from pengi_search.audio import AUDIO_EXTENSIONS
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_PARTIAL, EXIT_USAGE
from pengi_search.db import Store
from pengi_search.scan import hidden_path, scan, skipped_at

from .indexing import quick_options, write_tone

runner = CliRunner()
NOT_AUDIO = b"\0\5\7 not audio" * 20


@pytest.fixture()
def drive(tmp_path) -> Path:
    """A folder as an external drive that macOS, Linux desktops, git and sync tools have been at holds it."""
    root = tmp_path / "drive"
    write_tone(root / "dog.wav", 1.0)
    write_tone(root / "birds" / "robin.flac", 1.0, freq=880)
    for name in ("._dog.wav", "birds/._robin.flac", ".~lock.dog.wav#", ".syncthing.cat.wav.tmp", "cat.wav.part"):
        (root / name).write_bytes(NOT_AUDIO)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_tone(root / ".Trash-1000" / "files" / "old.wav", 1.0, freq=330)
    write_tone(root / ".git" / "annex" / "take.wav", 1.0, freq=220)
    write_tone(root / "birds" / ".draft.wav", 1.0, freq=550)
    return root


def found(root: Path, **options) -> list[str]:
    return [
        Path(entry.path).relative_to(root).as_posix() for entry in scan([root], AUDIO_EXTENSIONS, **options).entries
    ]


def test_a_walk_passes_over_hidden_names_unless_asked_and_appledouble_files_always(drive):
    assert found(drive) == ["birds/robin.flac", "dog.wav"]
    assert found(drive, hidden=True) == [
        ".Trash-1000/files/old.wav",
        ".git/annex/take.wav",
        "birds/.draft.wav",
        "birds/robin.flac",
        "dog.wav",
    ]


def test_a_hidden_path_given_directly_is_used(drive):
    given = [drive / "._dog.wav", drive / ".Trash-1000", drive / "birds" / ".draft.wav"]
    assert [Path(entry.path).relative_to(drive).as_posix() for entry in scan(given, AUDIO_EXTENSIONS).entries] == [
        ".Trash-1000/files/old.wav",
        "._dog.wav",
        "birds/.draft.wav",
    ]


def test_the_rule_names_the_hidden_path_that_keeps_a_walk_away():
    root = "/media/drive"
    assert skipped_at(f"{root}/.Trash-1000/files/old.wav", root, hidden=False) == f"{root}/.Trash-1000"
    assert skipped_at(f"{root}/.Trash-1000/files/old.wav", root, hidden=True) is None
    assert skipped_at(f"{root}/birds/._robin.flac", root, hidden=True) == f"{root}/birds/._robin.flac"
    assert skipped_at(root, root, hidden=False) is None  # the root itself, hidden or not, is where a walk starts
    assert skipped_at("/home/me/.sounds/dog.wav", "/home/me/.sounds", hidden=False) is None
    assert hidden_path(f"{root}/birds/.draft.wav", root) == f"{root}/birds/.draft.wav"
    assert hidden_path(f"{root}/birds/._robin.flac", root) is None  # no walk reaches it, --hidden or not


def test_index_keeps_hidden_files_an_earlier_run_indexed_says_so_and_forgets_appledouble_failures(
    drive, tiny_model_dir, tmp_path
):
    db = tmp_path / "lib.db"
    earlier = run_index(quick_options([drive / "._dog.wav"], db, tiny_model_dir))  # as every run did before
    assert [Path(item.path).name for item in earlier.failed] == ["._dog.wav"]
    with_hidden = run_index(quick_options([drive], db, tiny_model_dir, hidden=True))
    assert (with_hidden.indexed, with_hidden.failed, with_hidden.pruned) == (5, [], 1)  # ._dog.wav forgotten

    without = run_index(quick_options([drive], db, tiny_model_dir))
    assert (without.files_seen, without.pruned, without.failed) == (2, 0, [])
    kept = {Path(note.path).relative_to(drive).as_posix(): note.message for note in without.hidden_kept}
    assert kept == {
        ".Trash-1000": "1 indexed file at or under this hidden path was kept as it is: runs without --hidden do "
        f"not look at hidden names (`pengi-search remove {drive / '.Trash-1000'} --db {db}` forgets it)",
        ".git": kept[".git"],
        "birds/.draft.wav": kept["birds/.draft.wav"],
    }
    shutil.rmtree(drive / ".Trash-1000")  # not looked at: kept, as files of an extension not asked for are
    assert run_index(quick_options([drive], db, tiny_model_dir)).pruned == 0
    with Store.open(str(db), create=False) as store:
        assert len(store.all_file_stamps()) == 5
    assert run_index(quick_options([drive], db, tiny_model_dir, hidden=True)).pruned == 1


def test_the_index_command_warns_of_hidden_files_it_kept_until_they_are_removed(drive, tiny_model_dir, tmp_path):
    quick = ["--db", tmp_path / "lib.db", "--model", tiny_model_dir, "--workers", "0", "--beam", "1", "--max-len", "2"]
    first = runner.invoke(app, [str(a) for a in ["index", drive / "birds", "--hidden", "--json", *quick]])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["indexed"] == 2

    again = runner.invoke(app, [str(a) for a in ["index", drive / "birds", *quick]])
    assert again.exit_code == 0, again.output
    draft = drive / "birds" / ".draft.wav"
    assert f"warning: {draft}: 1 indexed file at or under this hidden path was kept as it is" in again.stderr
    removed = runner.invoke(app, [str(a) for a in ["remove", draft, "--db", tmp_path / "lib.db"]])
    assert removed.exit_code == 0, removed.output
    quiet = runner.invoke(app, [str(a) for a in ["index", drive / "birds", "--json", *quick]])
    assert quiet.exit_code == 0 and quiet.stderr == "" and json.loads(quiet.stdout)["hidden_kept"] == []


def test_hidden_changes_wake_no_watch_and_appledouble_files_none_even_with_hidden(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()

    def write(*names: str) -> None:
        for name in names:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(NOT_AUDIO)

    hidden_names = (".Trash-1000/files/old.wav", ".syncthing.new.wav.tmp", ".new.wav")
    with LibraryWatch([root], AUDIO_EXTENSIONS, str(tmp_path / "lib.db"), debounce_s=0.2) as watch:
        write("._new.wav", *hidden_names)
        assert watch.wait(2.0) == set()
        write("new.wav")
        assert watch.wait(60.0) == {str(root / "new.wav")}
    with LibraryWatch([root], AUDIO_EXTENSIONS, str(tmp_path / "lib.db"), debounce_s=0.2, hidden=True) as watch:
        threading.Thread(target=write, args=("._other.wav", ".other.wav")).start()
        assert watch.wait(60.0) == {str(root / ".other.wav")}


FOLDER_COMMANDS = {  # every command that walks a folder given to it, with what it needs besides
    "describe": [],
    "ask": ["is it a dog?"],
    "classify": ["--labels", "{labels}"],
    "similar": ["--db", "{db}"],
    "eval classify": ["--truth", "{truth}", "--output", "{out}"],
}


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_every_command_that_walks_a_folder_passes_over_hidden_files_unless_hidden(command, tiny_model_dir, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / ".take.wav").write_bytes(NOT_AUDIO)  # decoded only with --hidden: it then fails, and says so
    (folder / "._take.wav").write_bytes(NOT_AUDIO)
    (tmp_path / "labels.txt").write_text("dog\ncat\n")
    (tmp_path / "truth.csv").write_text("file,label\n.take.wav,dog\n")
    if command == "similar":
        run_index(quick_options([write_tone(tmp_path / "indexed.wav", 1.0)], tmp_path / "lib.db", tiny_model_dir))
    names = {"labels": tmp_path / "labels.txt", "db": tmp_path / "lib.db", "truth": tmp_path / "truth.csv"}
    extra = [arg.format(**names, out=tmp_path / "out") for arg in FOLDER_COMMANDS[command]]
    args = [*command.split(), str(folder), *extra, "--model", str(tiny_model_dir), "--device", "cpu"]

    plain = runner.invoke(app, args)
    assert plain.exit_code == EXIT_USAGE, plain.output
    assert plain.stderr == f"error: {folder}: no audio file in this folder\n"
    hidden = runner.invoke(app, [*args, "--hidden"])
    assert hidden.exit_code == EXIT_PARTIAL, hidden.output
    assert ".take.wav" in hidden.output + _report(tmp_path) and "._take.wav" not in hidden.output


def _report(tmp_path: Path) -> str:
    """`eval classify` lists its skipped files in its report."""
    report = tmp_path / "out" / "report.json"
    return report.read_text() if report.exists() else ""

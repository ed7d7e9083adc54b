"""`pengi-search index`, `rebuild-index`, `stats`, `remove` and `export`, as a user runs them."""

from __future__ import annotations

import io
import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.run_report import FailedFile, IndexSummary
from indexer.shard import Shard
from pengi_search.cli import app
from pengi_search.cli import index as cli_index
from pengi_search.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_USAGE
from pengi_search.consoles import make_console
from pengi_search.db import DatabaseUnreachableError, Store
from pengi_search.db.run_lock import indexing_lock
from pengi_search.library import Library
from pengi_search.library_stats import index_info
from pengi_search.testing import make_tiny_model_dir

from .indexing import assert_consistent, write_tone
from .torchrun_runs import torchrun_rank

runner = CliRunner()
QUICK = ("--workers", "0", "--beam", "2", "--max-len", "3", "--device", "cpu", "--quiet")


@pytest.fixture()
def sounds(tmp_path) -> Path:
    root = tmp_path / "sounds"
    write_tone(root / "dogs" / "bark.wav", 2.0, freq=600)
    write_tone(root / "dogs" / "growl.flac", 8.0, sr=22_050, freq=150)
    write_tone(root / "rain.wav", 1.0, channels=2, freq=900)
    return root


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def index(root, db, model, *extra):
    return run("index", root, "--db", db, "--model", model, *QUICK, *extra)


def test_a_folder_named_tilde_is_that_folder_not_the_home_folder(tiny_model_dir, tmp_path, monkeypatch):
    """`index '~'` and `--db '~/lib.db'`: the shell expands the `~` a user means, so one that reaches pengi-search was
    quoted and names a folder `~` (it was walked as the home folder)."""
    home, here = tmp_path / "home", tmp_path / "here"
    write_tone(home / "private.wav", 1.0)
    write_tone(here / "~" / "bell.wav", 1.0)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    assert run("index", "~", "--db", "~/lib.db", "--model", tiny_model_dir, *QUICK).exit_code == 0
    assert (here / "~" / "lib.db").is_file() and not (home / "lib.db").exists()
    exported = [json.loads(line)["path"] for line in run("export", "--db", "~/lib.db").stdout.splitlines()]
    assert exported == [str(here / "~" / "bell.wav")]
    removed = run("remove", "~", "--db", "~/lib.db")
    assert removed.exit_code == 0 and run("export", "--db", "~/lib.db").stdout == ""


def test_a_tilde_the_shell_left_never_makes_a_folder_named_tilde(tiny_model_dir, sounds, tmp_path, monkeypatch):
    """`--db=~/lib.db` reaches pengi-search with its `~` (bash expands none after `=`): a folder `~` made in the
    current folder is one `rm -rf ~` away from the home folder, so the command refuses (exit 2) and makes nothing."""
    monkeypatch.chdir(tmp_path)
    result = run("index", str(sounds), "--db=~/lib.db", "--model", tiny_model_dir, *QUICK)
    assert result.exit_code == 2, result.output
    assert "would make a folder named '~'" in result.stderr and "a space, not '='" in result.stderr
    assert not (tmp_path / "~").exists()
    (tmp_path / "captions.csv").write_text("file,caption\na.wav,a dog barks\n")
    report = run("eval", "retrieval", "captions.csv", "--output=~user/report")
    assert report.exit_code == 2 and "would make a folder named '~user'" in report.stderr
    assert not (tmp_path / "~user").exists()


def test_index_then_stats_and_export(tiny_model_dir, sounds, tmp_path):
    db = tmp_path / "lib.db"
    result = index(sounds, db, tiny_model_dir, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["indexed"], summary["window_count"], summary["failed"]) == (3, 4, [])

    stats = json.loads(run("stats", "--db", db, "--json").stdout)
    assert stats["files"] == {"total": 3, "pending": 0, "indexed": 3, "error": 0}
    assert (stats["window_count"], stats["texts"], stats["vectors"]) == (4, 8, {"text": 4, "audio": 4})
    assert stats["model"]["model"] == "tiny-base" and stats["model"]["embedder"].startswith("pengi-text:")
    assert stats["runs"][0]["files_indexed"] == 3 and stats["database_bytes"] > 0
    indexes = stats["vector_indexes"]
    assert {kind: info["index_type"] for kind, info in indexes.items()} == {"text": "flat", "audio": "flat"}
    assert all(info["bytes"] > 0 for info in indexes.values())

    lines = run("export", "--db", db).stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [Path(r["path"]).name for r in rows] == ["bark.wav", "growl.flac", "rain.wav"]
    assert [len(r["windows"]) for r in rows] == [1, 2, 1]
    out = tmp_path / "out" / "library.jsonl"
    out.parent.mkdir()
    assert run("export", "--db", db, "--output", out, "--under", sounds / "dogs").exit_code == 0
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == [r["path"] for r in rows[:2]]

    text = run("stats", "--db", db)
    assert "files: 3 (3 indexed, 0 pending, 0 failed)" in text.stdout


def test_the_summary_says_when_the_library_became_searchable_only_for_a_run_that_stored_windows(
    tiny_model_dir, sounds, tmp_path
):
    db = tmp_path / "lib.db"
    first = index(sounds, db, tiny_model_dir).stdout.splitlines()[0]
    assert re.fullmatch(r"indexed 3 files, 4 windows in [0-9.]+ s \(searchable by sound after [0-9.]+ s\), .*", first)
    again = index(sounds, db, tiny_model_dir).stdout.splitlines()[0]
    assert re.fullmatch(r"indexed 0 files, 0 windows in [0-9.]+ s, 0 windows captioned; 3 unchanged, .*", again)


def test_a_run_of_minutes_or_hours_says_how_long_it_took_as_stats_does(monkeypatch):
    """A large library's run said `2417 windows in 14523.7 s (searchable by sound after 1205.2 s)`, where `stats`
    said of the same run `(4 h 2 min)`."""
    console = make_console(highlight=False)
    console.file = io.StringIO()
    monkeypatch.setattr(cli_index, "out_console", console)
    summary = IndexSummary("lib.db", indexed=1322, window_count=2417, searchable_s=1205.2, seconds=14523.7)
    cli_index._print_summary(summary, paths=["lib"], verbose=False, db_option="")
    assert "2417 windows in 4 h 2 min (searchable by sound after 20 min 5 s), " in console.file.getvalue()


def test_captions_left_for_later_name_the_command_that_writes_them_ready_to_paste(
    tiny_model_dir, sounds, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    sounds.rename(tmp_path / "my sounds")
    result = index("my sounds", "lib.db", tiny_model_dir, "--captions", "later")
    assert result.exit_code == 0, result.output
    assert "4 windows have no captions yet: `pengi-search index 'my sounds' --db lib.db` writes them" in result.stdout


def test_export_under_a_path_with_nothing_indexed_says_so_rather_than_reading_as_an_empty_library(
    tiny_model_dir, sounds, tmp_path, monkeypatch
):
    db = tmp_path / "lib.db"
    assert index(sounds, db, tiny_model_dir).exit_code == 0
    monkeypatch.chdir(sounds)
    result = run("export", "--db", db, "--under", "./dgos")
    assert (result.exit_code, result.stdout) == (0, "")  # no file there: nothing to export is no failure
    assert result.stderr == "warning: ./dgos: nothing in the index at or under this path\n"
    assert run("export", "--db", db, "--under", "./dogs").stderr == ""


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_an_interrupted_run_says_what_it_kept_and_that_the_same_command_resumes(
    tiny_model_dir, sounds, tmp_path, monkeypatch, json_output
):
    """Ctrl-C (or SIGTERM) in pass 2, after one batch of captions: every file of pass 1 and that batch are kept, and
    the line that says `interrupted` says so, with the way on; with --json too, whose stdout stays empty (the run
    ended with no summary). The same command then writes only the captions still missing."""
    db, command = tmp_path / "lib.db", ("--batch-size", 1, *(("--json",) if json_output else ()))
    stop_after_one_caption_batch(monkeypatch, KeyboardInterrupt())
    result = index(sounds, db, tiny_model_dir, *command)
    assert (result.exit_code, result.stdout) == (EXIT_INTERRUPTED, ""), result.output
    assert result.stderr.strip() == (
        "interrupted: this run kept 3 files indexed and 1 window captioned; run the same command again to resume"
    )
    monkeypatch.undo()
    assert_resumed(sounds, db, tiny_model_dir)


def stop_after_one_caption_batch(monkeypatch, stop: BaseException) -> None:
    """Pass 2 raises `stop` (Ctrl-C, a database gone) once its first batch of captions is stored."""
    from indexer.captions import CaptionPass

    store = CaptionPass._store

    def stopped(self, captioned, result):
        if result.captioned:
            raise stop
        store(self, captioned, result)

    monkeypatch.setattr(CaptionPass, "_store", stopped)


def assert_resumed(sounds: Path, db: Path, model: Path) -> None:
    """The same command again decodes no file anew and leaves every window of `sounds` captioned."""
    again = index(sounds, db, model, "--json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["indexed"], summary["unchanged"], summary["captioned"]) == (0, 3, 3)


def test_a_run_whose_database_stops_answering_says_so_in_one_line_and_the_same_command_resumes(
    tiny_model_dir, sounds, tmp_path, monkeypatch
):
    """A database server that goes down (or restarts) in pass 2 ends the run with its one line, which says that what
    was committed is kept and how to go on; the same command, once it answers, writes only what is missing."""
    db, server = tmp_path / "lib.db", "postgresql+psycopg://me:***@db.lan/pengi"
    stop_after_one_caption_batch(monkeypatch, DatabaseUnreachableError(server, "cannot reach the database"))
    result = index(sounds, db, tiny_model_dir, "--batch-size", 1)
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == (
        "error: postgresql+psycopg://me:***@db.lan/pengi: cannot reach the database; what was committed is kept: run"
        " the same command again to resume once the database answers\n"
    )
    monkeypatch.undo()
    assert_resumed(sounds, db, tiny_model_dir)


def test_failed_files_give_exit_code_3_and_are_listed(tiny_model_dir, sounds, tmp_path):
    (sounds / "broken [live].mp3").write_text("this is not an mp3")
    result = index(sounds, tmp_path / "lib.db", tiny_model_dir)
    assert result.exit_code == EXIT_PARTIAL
    assert "indexed 3 files" in result.stdout
    assert f"failed {sounds / 'broken [live].mp3'}: not a readable audio file" in result.stderr


def test_with_json_failed_files_and_warnings_still_go_to_stderr(tiny_model_dir, sounds, tmp_path):
    """A cron job's `index --json > summary.json 2>> errors.log` finds failures in its log, as `describe --json`
    and `classify --json` write their `skipped` lines: stdout holds the JSON alone, stderr what went wrong."""
    (sounds / "broken.mp3").write_text("this is not an mp3")
    result = index(sounds, tmp_path / "lib.db", tiny_model_dir, "--json")
    assert result.exit_code == EXIT_PARTIAL
    assert [item["path"] for item in json.loads(result.stdout)["failed"]] == [str(sounds / "broken.mp3")]
    assert f"failed {sounds / 'broken.mp3'}: not a readable audio file" in result.stderr
    (tmp_path / "notes").mkdir()
    empty = index(tmp_path / "notes", tmp_path / "lib.db", tiny_model_dir, "--json")
    assert empty.exit_code == 0 and json.loads(empty.stdout)["files_seen"] == 0
    assert "warning: no audio file found in" in empty.stderr


def test_stats_names_the_files_that_failed_with_their_reason(tiny_model_dir, sounds, tmp_path):
    """A later run skips them without naming them, so `stats` is where a user finds which files failed and why."""
    (sounds / "empty.wav").write_bytes(b"")
    (sounds / "notes.mp3").write_text("this is not an mp3")
    db = tmp_path / "lib.db"
    assert index(sounds, db, tiny_model_dir).exit_code == EXIT_PARTIAL
    again = index(sounds, db, tiny_model_dir)
    assert "2 files that failed before were skipped (--retry-errors; `stats` lists them)" in again.stdout

    text = run("stats", "--db", db).stdout
    assert "failed: 2 files could not be indexed (`index --retry-errors` tries again)" in text
    assert f"  {sounds / 'empty.wav'}: empty file (0 bytes)\n" in text
    assert f"  {sounds / 'notes.mp3'}: not a readable audio file (unknown format or corrupt data)\n" in text
    failed = json.loads(run("stats", "--db", db, "--json").stdout)["failed"]
    assert [(item["path"], item["error"].splitlines()[0]) for item in failed] == [
        (str(sounds / "empty.wav"), "empty file (0 bytes)"),
        (str(sounds / "notes.mp3"), "not a readable audio file (unknown format or corrupt data)"),
    ]


def test_device_cuda_without_a_gpu_is_refused_even_with_nothing_to_index(tiny_model_dir, sounds, tmp_path, monkeypatch):
    """Every file is indexed and captioned, so the run would never load the model: CUDA is still checked first."""
    import torch

    db = tmp_path / "lib.db"
    assert index(sounds, db, tiny_model_dir).exit_code == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = index(sounds, db, tiny_model_dir, "--device", "cuda")
    assert result.exit_code == EXIT_USAGE and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: Invalid value for '--device': PyTorch sees no CUDA GPU on this machine"), line
    assert len(json.loads(run("stats", "--db", db, "--json").stdout)["runs"]) == 1  # no second run was started


def test_rebuild_index_changes_the_type_and_indexing_keeps_it(tiny_model_dir, sounds, tmp_path):
    db = tmp_path / "lib.db"
    assert index(sounds, db, tiny_model_dir).exit_code == 0
    rebuilt = run("rebuild-index", "--db", db, "--index-type", "hnsw", "--json")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert json.loads(rebuilt.stdout)["vectors"] == {"text": 4, "audio": 4}

    write_tone(sounds / "new.wav", 1.0, freq=250)
    assert index(sounds, db, tiny_model_dir).exit_code == 0
    with Library.open(str(db)) as library:
        assert {kind: info.effective_type for kind, info in index_info(library.store).items()} == {
            "text": "hnsw",
            "audio": "hnsw",
        }
        assert library.vector_index("text").type == "hnsw" and len(library.vector_index("text")) == 5
    assert_consistent(db)


def test_remove_forgets_a_folder_and_updates_the_vector_indexes(tiny_model_dir, sounds, tmp_path):
    db = tmp_path / "lib.db"
    assert index(sounds, db, tiny_model_dir).exit_code == 0
    result = run("remove", sounds / "dogs", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["removed_files"] == 2
    assert_consistent(db)
    with Library.open(str(db)) as library:
        assert len(library.vector_index("audio")) == 1

    again = run("remove", sounds / "dogs", "--db", db)
    assert again.exit_code == EXIT_FAILED and "nothing in the index" in again.stderr


def test_remove_forgets_every_path_given_as_rm_does_and_says_each_one_with_nothing_indexed(
    tiny_model_dir, sounds, tmp_path
):
    """`remove sounds/dogs/*.wav old/`: each path on its own; one with nothing indexed fails the command (exit 1) but
    not the others."""
    db = tmp_path / "lib.db"
    assert index(sounds, db, tiny_model_dir).exit_code == 0
    bark, rain, nothing = sounds / "dogs" / "bark.wav", sounds / "rain.wav", sounds / "cats"
    result = run("remove", bark, nothing, rain, "--db", db)
    assert result.exit_code == EXIT_FAILED
    assert result.stdout.splitlines() == [f"removed 1 file at or under {bark}", f"removed 1 file at or under {rain}"]
    assert result.stderr.splitlines() == [f"error: {nothing}: nothing in the index at or under this path"]
    assert_consistent(db)
    with Library.open(str(db)) as library:
        assert [f.path for f in library.store.files_under(str(sounds))] == [str(sounds / "dogs" / "growl.flac")]

    listed = run("remove", sounds / "dogs", nothing, "--db", db, "--json")
    assert json.loads(listed.stdout) == [  # several paths: a list of what `remove PATH --json` gives
        {"path": str(sounds / "dogs"), "removed_files": 1},
        {"path": str(nothing), "removed_files": 0},
    ]
    assert listed.exit_code == EXIT_FAILED


def test_remove_with_an_empty_path_forgets_nothing(tiny_model_dir, sounds, tmp_path, monkeypatch):
    """`pengi-search remove "$UNSET"` is bad usage: an empty path is not the current folder."""
    db = tmp_path / "lib.db"
    assert index(sounds, db, tiny_model_dir).exit_code == 0
    monkeypatch.chdir(sounds)
    result = run("remove", "", "--db", db)
    assert result.exit_code == EXIT_USAGE and "the path is empty" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with Library.open(str(db)) as library:
        assert len(library.vector_index("audio")) == 4
    assert run("remove", ".", "--db", db).exit_code == 0  # said explicitly, it is the current folder


def test_a_missing_folder_is_a_usage_error_and_prunes_nothing(tiny_model_dir, sounds, tmp_path):
    db = tmp_path / "lib.db"
    assert index(sounds, db, tiny_model_dir).exit_code == 0
    result = index(tmp_path / "unmounted", db, tiny_model_dir)
    assert result.exit_code == EXIT_USAGE and "unmounted" in result.stderr
    assert json.loads(run("stats", "--db", db, "--json").stdout)["files"]["indexed"] == 3


def test_a_first_run_over_folders_without_audio_creates_no_library(tiny_model_dir, sounds, tmp_path):
    """A mistyped folder or --ext is refused as `describe` refuses it (exit code 2), and nothing is created."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no audio here\n")
    db = tmp_path / "new" / "lib.db"
    empty = index(tmp_path / "notes", db, tiny_model_dir)
    assert (empty.exit_code, empty.stderr) == (
        EXIT_USAGE,
        f"error: {tmp_path / 'notes'}: no audio file in this folder\n",
    )
    other_kind = index(sounds, db, tiny_model_dir, "--ext", "mp3")
    assert other_kind.exit_code == EXIT_USAGE
    assert other_kind.stderr == f"error: {sounds}: no audio file with the extensions .mp3 in this folder\n"
    both = index(tmp_path / "notes", db, tiny_model_dir, "--ext", "mp3,wav")
    assert both.stderr.endswith("no audio file with the extensions .mp3, .wav in this folder\n")
    assert not db.parent.exists()


def test_a_run_over_folders_without_audio_goes_on_with_a_warning_once_the_library_exists(
    tiny_model_dir, sounds, tmp_path
):
    """The library's run records what is there, or not (a drop folder may be empty today), and tells of it."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no audio here\n")
    assert index(sounds, tmp_path / "lib.db", tiny_model_dir).exit_code == 0
    empty = index(tmp_path / "notes", tmp_path / "lib.db", tiny_model_dir)
    assert empty.exit_code == 0 and "indexed 0 files" in empty.stdout
    assert "warning: no audio file found in" in empty.stderr and "notes" in empty.stderr
    other_kind = index(sounds, tmp_path / "lib.db", tiny_model_dir, "--ext", "mp3")
    assert other_kind.exit_code == 0 and "no audio file with the extensions 'mp3' found in" in other_kind.stderr
    assert "warning" not in index(sounds, tmp_path / "lib.db", tiny_model_dir).stderr


def test_a_file_given_by_name_is_indexed_whatever_ext_says_with_a_warning(tiny_model_dir, sounds, tmp_path):
    """As ripgrep searches a file it is given whatever --type says (and as a hidden file named is used): --ext
    chooses among the files of a folder given; a file named is indexed all the same, said in one line."""
    growl = sounds / "dogs" / "growl.flac"
    result = run("index", growl, sounds / "rain.wav", "--db", tmp_path / "lib.db", "--model", tiny_model_dir,
                 *QUICK, "--ext", "wav,mp3")  # fmt: skip
    assert result.exit_code == 0 and "indexed 2 files" in result.stdout, result.output
    assert result.stderr.splitlines() == [
        f"warning: {growl}: indexed as it is given by name, though --ext asks for .mp3, .wav"
    ]
    folder = index(sounds / "dogs", tmp_path / "lib.db", tiny_model_dir, "--ext", "wav")
    assert folder.exit_code == 0 and "warning" not in folder.stderr  # inside a folder given, --ext chooses


def test_under_torchrun_a_file_named_against_ext_is_said_once_per_machine(
    tiny_model_dir, sounds, tmp_path, monkeypatch
):
    """Every rank of a torchrun job is given the same paths, and each said the file named against --ext: the
    machine's first rank says it. (An unsharded run holds the library: both ranks stop there, the first saying so.)"""
    db = tmp_path / "lib.db"
    assert index(sounds / "rain.wav", db, tiny_model_dir).exit_code == 0
    growl = sounds / "dogs" / "growl.flac"
    said = []
    with Store.open(db) as store, indexing_lock(store):
        for rank in (0, 1):
            torchrun_rank(monkeypatch, rank, 2)
            said.append(index(growl, db, tiny_model_dir, "--ext", "wav"))
    assert said[0].exit_code == EXIT_FAILED and said[0].stderr.count("though --ext asks for .wav") == 1, said[0].output
    assert (said[1].exit_code, said[1].output) == (0, "")


def test_a_shard_without_files_of_its_own_is_no_run_over_folders_without_audio(tiny_model_dir, sounds, tmp_path):
    """A shard that owns none of the files said "no audio file found in sounds", of a folder that holds three."""
    files = [str(path.resolve()) for path in sounds.rglob("*") if path.is_file()]
    empty = next(i for i in range(16) if not any(Shard(i, 16).owns(path) for path in files))
    result = index(sounds, tmp_path / "lib.db", tiny_model_dir, "--shard", f"{empty}/16")
    assert result.exit_code == 0 and "indexed 0 files" in result.stdout, result.output
    assert "warning" not in result.stderr, result.stderr


def test_under_torchrun_paths_without_audio_are_said_once_per_machine(monkeypatch, capsys):
    """Every rank is given the same paths: the machine's first says that they hold no audio."""
    summary = IndexSummary(database="lib.db", shard="1/2")
    for rank, said in ((1, ""), (0, "warning: no audio file found in notes\n")):
        torchrun_rank(monkeypatch, rank, 2)
        cli_index._warn_if_nothing_found(summary, ["notes"], None)
        assert capsys.readouterr().err == said


def test_under_torchrun_an_unreadable_folder_is_said_once_per_machine(monkeypatch, capsys):
    """Every rank scans the same paths and met the same unreadable folder, and each said it: the machine's first
    says it; a file that failed is its rank's own, and said by it."""
    summary = IndexSummary(
        database="lib.db",
        shard="1/2",
        failed=[FailedFile("/sounds/bad.wav", "no audio samples")],
        unreadable_dirs=[FailedFile("/sounds/locked", "permission denied")],
    )
    for rank, folder_said in ((1, 0), (0, 1)):
        torchrun_rank(monkeypatch, rank, 2)
        cli_index._print_problems(summary, verbose=False, db_option="")
        said = capsys.readouterr().err
        assert said.count("/sounds/locked") == folder_said and said.count("/sounds/bad.wav") == 1, said


def test_an_empty_mount_point_keeps_its_files_and_says_how_to_forget_them(tiny_model_dir, sounds, tmp_path):
    db = tmp_path / "lib.db"
    assert index(sounds, db, tiny_model_dir).exit_code == 0
    for path in [*(sounds / "dogs").iterdir(), sounds / "rain.wav"]:
        path.unlink()  # the folder is still there, empty: what an unmounted drive's mount point looks like

    result = index(sounds, db, tiny_model_dir, "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 0 and summary["pruned"] == 0
    [note] = summary["unseen_roots"]
    assert note["path"] == str(sounds) and "3 indexed files were kept" in note["note"]
    shown = index(sounds, db, tiny_model_dir)
    assert shown.exit_code == 0 and "were kept" in shown.stderr and "pengi-search remove" in shown.stderr
    assert json.loads(run("stats", "--db", db, "--json").stdout)["files"]["indexed"] == 3

    write_tone(sounds / "rain.wav", 1.0, freq=900)  # back with one file, and no dogs folder: the two are gone
    (sounds / "dogs").rmdir()
    again = index(sounds, db, tiny_model_dir, "--json")
    assert (
        again.exit_code == 0
        and json.loads(again.stdout)["pruned"] == 2
        and not json.loads(again.stdout)["unseen_roots"]
    )


def test_an_empty_mount_point_below_the_root_keeps_its_files_while_files_deleted_beside_it_are_pruned(
    tiny_model_dir, sounds, tmp_path
):
    """`~/Sounds/dogs` as a drive's mount point with the drive away: the folder is there, without audio. Its files
    are kept and the folder named; a file deleted where the scan still finds audio is pruned, as is a folder gone."""
    db = tmp_path / "lib.db"
    write_tone(sounds / "birds" / "old" / "robin.wav", 1.0, freq=1200)
    write_tone(sounds / "birds" / "wren.wav", 1.0, freq=1500)
    assert index(sounds, db, tiny_model_dir).exit_code == 0
    for path in (sounds / "dogs").iterdir():
        path.unlink()
    (sounds / "dogs" / "notes.txt").write_text("not audio\n")  # a folder without audio, not only an empty one
    (sounds / "birds" / "old" / "robin.wav").unlink()
    (sounds / "birds" / "old").rmdir()  # a folder deleted: a deletion, not a drive away

    result = index(sounds, db, tiny_model_dir, "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 0 and summary["pruned"] == 1
    [note] = summary["unseen_roots"]
    assert note["path"] == str(sounds / "dogs") and "2 indexed files were kept" in note["note"]
    assert "pengi-search remove" in index(sounds, db, tiny_model_dir).stderr
    listed = {json.loads(line)["path"] for line in run("export", "--db", db).stdout.splitlines()}
    assert str(sounds / "dogs" / "bark.wav") in listed and str(sounds / "birds" / "old" / "robin.wav") not in listed


def test_the_remove_an_empty_mount_point_suggests_names_its_folder_and_pasted_forgets_only_its_files(
    tiny_model_dir, sounds, tmp_path, monkeypatch
):
    """The warning's command is whole: `remove` needs the path, so it names the emptied folder (and the library given
    with --db, both shell-quoted), and pasted as it is it forgets that folder's files and nothing else."""
    monkeypatch.chdir(tmp_path)
    (sounds / "dogs").rename(sounds / "my dogs")  # a name the shell must have quoted
    assert index(sounds, "my lib.db", tiny_model_dir).exit_code == 0
    for path in (sounds / "my dogs").iterdir():
        path.unlink()

    result = index(sounds, "my lib.db", tiny_model_dir)
    command = f"pengi-search remove '{sounds / 'my dogs'}' --db 'my lib.db'"
    assert result.exit_code == 0 and f"`{command}` forgets them" in result.stderr
    assert run(*shlex.split(command)[1:]).exit_code == 0
    listed = [json.loads(line)["path"] for line in run("export", "--db", "my lib.db").stdout.splitlines()]
    assert listed == [str(sounds / "rain.wav")]


def test_another_model_is_refused_in_one_line_with_what_built_the_library_and_the_command_that_reindexes_it(
    tiny_model_dir, sounds, tmp_path, monkeypatch
):
    """It said the model twice (and the text embedder, which is the model's own), then two re-index hints."""
    monkeypatch.chdir(tmp_path)
    sounds.rename("my sounds")
    assert index("my sounds", "lib.db", tiny_model_dir).exit_code == 0
    other = make_tiny_model_dir(tmp_path / "other", seed=3)
    result = index("my sounds", "lib.db", "other")
    assert result.exit_code == EXIT_FAILED
    built, uses = (
        json.loads((model / "config.json").read_text())["weights_sha256"] for model in (tiny_model_dir, other)
    )
    assert result.stderr.splitlines() == [
        f"error: lib.db: the library was built with model 'tiny-base' (fingerprint {built[:16]}), but this run uses "
        f"model 'tiny-base' (fingerprint {uses[:16]}): `pengi-search index 'my sounds' --model other --device cpu "
        "--workers 0 --beam 2 --max-len 3 --quiet --reindex --db lib.db` indexes it anew (every caption and vector "
        "made again)"
    ]


def test_the_reindex_command_for_another_model_keeps_every_option_given_and_pasted_stores_what_was_asked(
    tiny_model_dir, sounds, tmp_path, monkeypatch
):
    """The command kept the paths, --model, --text-embedder and --db only: pasted, it indexed with the default
    prompts and every file of every extension. It is the run's own command with --reindex (in the long names), so
    the library it writes has the prompts, extensions and decoding asked for; only what --reindex cannot take
    (--watch, --shard) is left out."""
    monkeypatch.chdir(tmp_path)
    assert index(sounds, "lib.db", tiny_model_dir).exit_code == 0
    make_tiny_model_dir(tmp_path / "other", seed=3)
    asked = ("-p", "what animal is this", "-p", "is it raining", "--ext", ".wav", "--stop", "original", "--strict")
    result = index(sounds, "lib.db", "other", *asked)
    assert result.exit_code == EXIT_FAILED
    command = re.search(r"`(pengi-search index [^`]*)` indexes it anew", result.stderr)[1]
    assert "--prompt 'what animal is this' --prompt 'is it raining'" in command
    assert all(word in shlex.split(command) for word in ("--ext", ".wav", "--stop", "original", "--strict"))

    assert run(*shlex.split(command)[1:]).exit_code == 0
    rows = [json.loads(line) for line in run("export", "--db", "lib.db").stdout.splitlines()]
    indexed = sorted(Path(row["path"]).name for row in rows if row["windows"])
    assert indexed == ["bark.wav", "rain.wav"]  # --ext .wav: growl.flac is left waiting (pending)
    texts = [text for row in rows for window in row["windows"] for text in window["texts"]]
    assert {text["decoding"] for text in texts} == {"beam=2 max_len=3 stop=original"}
    prompts = {text["prompt"] for text in texts}
    assert prompts == {"what animal is this", "is it raining"}


def test_stats_gives_a_sqlite_files_size_and_no_size_for_a_server_database():
    """A server's database has no file of its own: no "(no file)" after its URL."""
    from pengi_search.cli.library import _database_line

    assert _database_line("lib/index.db", "sqlite:////lib/index.db", 2048) == "database: lib/index.db (2.0 KiB)"
    server = "postgresql+psycopg://me:***@db.example/pengi"
    assert _database_line(server, server, None) == f"database: {server}"

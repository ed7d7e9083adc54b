"""How the commands that take audio files and folders (describe, ask, classify, similar, eval classify, index,
remove) name a file.

A file given is named as typed; a file found inside a given folder, as ripgrep and fd name it: the folder as typed
joined with the path inside it (`sounds/dog.wav`, `./sounds/dog.wav`, `/home/me/sounds/dog.wav`). The same name in
text, CSV and JSON output and in `skipped PATH: reason` (`index`: `failed PATH: reason`) lines. What the name is
matched on (the library, a truth file, the query file left out of `similar`'s hits) is the file's absolute path,
whatever the spelling.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.cli.common import EXIT_OK, EXIT_PARTIAL

from .indexing import write_tone

runner = CliRunner()
FOLDER = "field [2024] recordings"
INSIDE = ["dog bark [take 1].wav", "more/rain drops.flac"]  # sorted, as a folder's files come
BROKEN = "broken (copy).wav"
UNREADABLE = "not a readable audio file (unknown format or corrupt data)"
QUICK = ("--device", "cpu", "--beam", "1", "--max-len", "2")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def recordings(tmp_path, monkeypatch) -> Path:
    """A folder whose names hold spaces and brackets (no Rich markup, no glob), the current folder its parent."""
    folder = tmp_path / FOLDER
    for seed, name in enumerate(INSIDE):
        write_tone(folder / name, 1.0 + seed, freq=300.0 + 200 * seed)
    (folder / BROKEN).write_bytes(b"RIFF not really audio")
    monkeypatch.chdir(tmp_path)
    return folder


TYPED = {"relative": FOLDER, "dotted": f"./{FOLDER}", "absolute": "{tmp}/" + FOLDER}


def typed_folder(form: str, tmp_path: Path) -> str:
    return TYPED[form].format(tmp=tmp_path)


def names(folder: str) -> list[str]:
    return [os.path.join(folder, name) for name in INSIDE]


def skipped_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("skipped ")]


@pytest.mark.parametrize("form", TYPED)
def test_describe_names_a_folders_files_after_the_folder_as_typed(form, recordings, tmp_path, tiny_model_dir):
    folder = typed_folder(form, tmp_path)
    described = run("describe", folder, "--model", tiny_model_dir, *QUICK, "--json")
    assert described.exit_code == EXIT_PARTIAL, described.output
    data = json.loads(described.stdout)
    assert [entry["path"] for entry in data] == [f"{folder}/{BROKEN}", *names(folder)]
    assert skipped_lines(described.stderr) == [f"skipped {folder}/{BROKEN}: {UNREADABLE}"]
    text = run("describe", folder, "--model", tiny_model_dir, *QUICK)
    headings = [line.split("  (")[0] for line in text.stdout.splitlines() if not line.startswith(" ")]
    assert headings == names(folder), text.stdout


def test_ask_names_a_folders_files_after_the_folder_as_typed(recordings, tiny_model_dir):
    result = run("ask", f"./{FOLDER}", "is it a dog?", "--model", tiny_model_dir, *QUICK, "--json")
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert [entry["path"] for entry in json.loads(result.stdout)] == [f"./{FOLDER}/{BROKEN}", *names(f"./{FOLDER}")]


@pytest.fixture()
def labels(tmp_path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("a dog barks\nrain on a roof\n")
    return path


@pytest.mark.parametrize("form", TYPED)
def test_classify_names_a_folders_files_after_the_folder_as_typed(form, recordings, labels, tmp_path, tiny_model_dir):
    folder = typed_folder(form, tmp_path)
    common = ("-l", labels, "--model", tiny_model_dir, *QUICK)
    on_stdout = run("classify", folder, *common, "-q")
    assert on_stdout.exit_code == EXIT_PARTIAL, on_stdout.output
    assert [row["file"] for row in csv.DictReader(io.StringIO(on_stdout.stdout))] == names(folder)
    assert skipped_lines(on_stdout.stderr) == [f"skipped {folder}/{BROKEN}: {UNREADABLE}"]
    written = run("classify", folder, *common, "-o", tmp_path / "out.csv", "--json")
    data = json.loads(written.stdout)
    assert [entry["path"] for entry in data["results"]] == names(folder)
    assert [entry["path"] for entry in data["errors"]] == [f"{folder}/{BROKEN}"]
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as out:
        assert [row["file"] for row in csv.DictReader(out)] == names(folder)


def test_classify_heads_one_file_with_its_name_as_typed(recordings, labels, tiny_model_dir):
    """Never made relative or normalised: the `./` stays, as in every other message about the file."""
    typed = f"./{FOLDER}/{INSIDE[0]}"
    result = run("classify", typed, "-l", labels, "--model", tiny_model_dir, *QUICK)
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.splitlines()[0] == f"{typed}  (1 window)"


@pytest.fixture()
def in_captions(captions, monkeypatch):
    """The search tests' library, the current folder the one above its `sounds` folder."""
    monkeypatch.chdir(captions.root.parent)
    return captions


@pytest.mark.parametrize("form", ["relative", "dotted"])
def test_classify_truth_matches_the_files_by_absolute_path_relative_path_or_name(
    form, in_captions, labels, tmp_path, tiny_model_dir
):
    """A truth CSV written for absolute paths, for paths relative to its own folder or for bare names matches the
    files of a folder typed relative, as it matched them when they were named absolute."""
    captions = in_captions
    folder = {"relative": "sounds", "dotted": "./sounds"}[form]
    known = {"animals/dog.wav": "a dog barks", "weather/rain.flac": "rain on a roof"}
    spellings = {
        "absolute": lambda name: str(captions.files[name]),
        "relative": lambda name: os.path.relpath(captions.files[name], tmp_path),
        "name": lambda name: Path(name).name,
    }
    for spelling, spell in spellings.items():
        truth = tmp_path / f"truth-{spelling}.csv"
        truth.write_text("file,label\n" + "".join(f"{spell(name)},{label}\n" for name, label in known.items()))
        result = run("classify", folder, "-l", labels, "--db", captions.db, "--model", tiny_model_dir, "--truth", truth)
        assert result.exit_code == EXIT_OK, result.output
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert {row["file"] for row in rows} == {f"{folder}/{name}" for name in captions.files}
        assert "accuracy 1.0000 (2/2 files)" in result.stderr, (spelling, result.stderr)


def test_classify_names_a_file_reached_twice_as_given_directly(in_captions, labels, tiny_model_dir):
    """Inside a given folder and given itself, after the folder: classified once, in the folder's order, under the
    name given directly (the one the user wrote for that file)."""
    common = ("-l", labels, "--db", in_captions.db, "--model", tiny_model_dir)
    result = run("classify", "./sounds/animals", "sounds/animals/dog.wav", "sounds/animals/../animals/dog.wav", *common)
    assert result.exit_code == EXIT_OK, result.output
    files = [row["file"] for row in csv.DictReader(io.StringIO(result.stdout))]
    assert files == ["./sounds/animals/cat.flac", "sounds/animals/dog.wav"]


@pytest.mark.parametrize("folder", ["sounds", "./sounds/"])
def test_similar_names_a_folders_files_as_typed_and_leaves_each_out_of_its_own_hits(
    folder, in_captions, tiny_model_dir
):
    """The library holds absolute paths: a query file named relative still uses its stored vectors and is still
    left out of its hits."""
    captions = in_captions
    result = run("similar", folder, "--db", captions.db, "--model", tiny_model_dir, "--json")
    assert result.exit_code == EXIT_OK, result.output
    searched = json.loads(result.stdout)
    assert [item["path"] for item in searched] == [os.path.join(folder, name) for name in sorted(captions.files)]
    for item in searched:
        own = str(captions.files[os.path.relpath(item["path"], folder)])
        assert item["source"] == "index" and item["hits"], item
        assert own not in [hit["path"] for hit in item["hits"]]
        assert len(item["hits"]) == len(captions.files) - 1
    text = run("similar", folder, "--db", captions.db, "--model", tiny_model_dir)
    headings = [line for line in text.stdout.splitlines() if line.startswith(folder)]
    assert headings == [os.path.join(folder, name) for name in sorted(captions.files)], text.stdout


@pytest.mark.parametrize("form", ["relative", "absolute"])
def test_similar_names_odd_files_of_a_folder_as_typed(form, recordings, captions, tmp_path, tiny_model_dir):
    folder = typed_folder(form, tmp_path)
    common = ("--db", captions.db, "--model", tiny_model_dir, "--device", "cpu")
    result = run("similar", folder, *common, "--json")
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert [item["path"] for item in json.loads(result.stdout)] == [f"{folder}/{BROKEN}", *names(folder)]
    assert skipped_lines(result.stderr) == [f"skipped {folder}/{BROKEN}: {UNREADABLE}"]
    text = run("similar", folder, *common)
    assert [line for line in text.stdout.splitlines() if line.startswith(folder)] == names(folder)


def test_eval_classify_names_the_files_as_classify_does(recordings, tmp_path, tiny_model_dir):
    truth = tmp_path / "truth.csv"
    truth.write_text(f"file,label\n{INSIDE[0]},dog\nrain drops.flac,rain\n{BROKEN},noise\n")
    out = tmp_path / "report"
    result = run("eval", "classify", FOLDER, "--truth", truth, "--model", tiny_model_dir, *QUICK, "-o", out)
    assert result.exit_code == EXIT_PARTIAL, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [item["path"] for item in report["files"]] == names(FOLDER)
    assert report["skipped"] == [{"path": f"{FOLDER}/{BROKEN}", "error": UNREADABLE}]
    assert report["evaluated"]["files"] == 2  # matched to the truth by name
    with open(out / "predictions.csv", newline="", encoding="utf-8") as rows:
        assert [row["file"] for row in csv.DictReader(rows)] == names(FOLDER)


def failed_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("failed ")]


@pytest.mark.parametrize("form", TYPED)
def test_index_names_a_folders_files_after_the_folder_as_typed(form, recordings, tmp_path, tiny_model_dir):
    """The library still holds each file by its absolute path."""
    folder, db = typed_folder(form, tmp_path), tmp_path / "lib.db"
    common = ("--db", db, "--model", tiny_model_dir, "--workers", "0", *QUICK, "--quiet")
    indexed = run("index", folder, *common, "--json")
    assert indexed.exit_code == EXIT_PARTIAL, indexed.output
    failed = json.loads(indexed.stdout)["failed"]
    assert [(item["path"], item["error"]) for item in failed] == [(f"{folder}/{BROKEN}", UNREADABLE)]
    again = run("index", folder, *common, "--retry-errors")
    assert failed_lines(again.stderr) == [f"failed {folder}/{BROKEN}: {UNREADABLE}"]
    exported = [json.loads(line)["path"] for line in run("export", "--db", db).stdout.splitlines()]
    assert exported == [str(recordings / name) for name in sorted([BROKEN, *INSIDE])]


def test_index_names_a_file_reached_twice_as_given_directly(recordings, tmp_path, tiny_model_dir):
    broken = f"{FOLDER}/../{FOLDER}/{BROKEN}"
    common = ("--db", tmp_path / "lib.db", "--model", tiny_model_dir, "--workers", "0", *QUICK, "--quiet")
    indexed = run("index", f"./{FOLDER}", broken, *common)
    assert indexed.exit_code == EXIT_PARTIAL, indexed.output
    assert failed_lines(indexed.stderr) == [f"failed {broken}: {UNREADABLE}"]


def test_remove_names_the_path_as_typed(recordings, tmp_path, tiny_model_dir):
    db = tmp_path / "lib.db"
    run("index", recordings, "--db", db, "--model", tiny_model_dir, "--workers", "0", *QUICK, "--quiet")
    typed = f"./{FOLDER}/more"
    removed = run("remove", typed, "--db", db, "--json")
    assert removed.exit_code == EXIT_OK, removed.output
    assert json.loads(removed.stdout) == {"path": typed, "removed_files": 1}
    again = run("remove", typed, "--db", db)
    assert again.stderr.strip() == f"error: {typed}: nothing in the index at or under this path"
    forgotten = run("remove", f"{FOLDER}/{INSIDE[0]}", "--db", db)
    assert forgotten.stdout.strip() == f"removed 1 file at or under {FOLDER}/{INSIDE[0]}"


@pytest.mark.parametrize("command", ["describe", "classify", "similar"])
def test_a_missing_file_is_named_as_typed(command, recordings, labels, tiny_model_dir):
    extra = {"classify": ("-l", labels), "similar": ("--db", "none.db")}.get(command, ())
    result = run(command, f"./{FOLDER}/gone [1].wav", "--model", tiny_model_dir, *extra)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: ./{FOLDER}/gone [1].wav: no such file or folder"


def test_a_folder_given_under_two_spellings_holds_each_file_once(recordings) -> None:
    """A symbolic link to a folder and the folder itself are one folder: each file (and each unreadable entry, here
    a broken link) once, named as first reached."""
    from pengi_search.cli.inputs import audio_inputs

    os.symlink("nowhere.wav", recordings / "gone.wav")
    os.symlink(FOLDER, "link")
    files, unreadable = audio_inputs(["link", FOLDER])
    assert files == [os.path.join("link", name) for name in sorted([BROKEN, *INSIDE])]
    assert [name for name, _ in unreadable] == [os.path.join("link", "gone.wav")]

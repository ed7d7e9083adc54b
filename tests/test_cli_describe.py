"""`pengi-search describe`, `ask` and `model info` on a tiny model, as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.cli.common import EXIT_FAILED, EXIT_PARTIAL

runner = CliRunner()
UNREADABLE = "not a readable audio file (unknown format or corrupt data)"


@pytest.fixture()
def clips(tmp_path):
    sr = 22_050
    t = np.arange(int(sr * 9.5)) / sr  # 9.5 s: two windows, the second covering the tail
    tone = tmp_path / "tone.wav"
    sf.write(tone, 0.3 * np.sin(2 * np.pi * 440 * t), sr)
    noise = tmp_path / "noise.flac"
    sf.write(noise, np.random.default_rng(0).uniform(-0.2, 0.2, (sr * 2, 2)), sr)
    return tone, noise


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_a_folder_stands_for_its_audio_files(tiny_model_dir, clips, tmp_path):
    (tmp_path / "notes.txt").write_text("not audio, not listed")
    quick = ("--model", tiny_model_dir, "--device", "cpu", "--beam", "1", "--max-len", "2", "--json")
    folder = run("describe", tmp_path, *quick)
    files = run("describe", *clips, *quick)
    assert folder.exit_code == files.exit_code == 0, folder.output
    assert sorted(json.loads(folder.stdout), key=lambda r: r["path"]) == sorted(
        json.loads(files.stdout), key=lambda r: r["path"]
    )


def test_describe_json_gives_every_window_the_default_answers(tiny_model_dir, clips):
    tone, noise = clips
    result = run("describe", tone, noise, "--model", tiny_model_dir, "--json", "--beam", 2, "--max-len", 4)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["path"] for d in data] == [str(tone), str(noise)]
    tone_windows = data[0]["windows"]
    assert [(w["start_s"], w["end_s"]) for w in tone_windows] == [(0.0, 7.0), (2.5, 9.5)]
    for entry in data:
        assert entry["error"] is None
        for window in entry["windows"]:
            assert set(window["answers"]) == {"caption", "metadata", "sound_event"}
            assert all(isinstance(t, str) for t in window["answers"].values())
            assert all(s <= 0 for s in window["scores"].values())


def test_describe_is_deterministic(tiny_model_dir, clips):
    args = ("describe", clips[0], "--model", tiny_model_dir, "--json", "--max-len", 4)
    assert run(*args).stdout == run(*args).stdout


def test_describe_with_own_prompts_and_answer_prefix(tiny_model_dir, clips):
    result = run(
        "describe",
        clips[1],
        "--model",
        tiny_model_dir,
        "--json",
        "--max-len",
        3,
        "-p",
        "this acoustic scene is",
        "--answer-prefix",
        "a dog",
    )
    assert result.exit_code == 0, result.output
    (window,) = json.loads(result.stdout)[0]["windows"]
    assert list(window["answers"]) == ["this acoustic scene is"]
    assert window["answers"]["this acoustic scene is"].startswith("a dog")


@pytest.mark.parametrize("command", ["describe", "ask"])
def test_a_corrupt_file_is_reported_with_its_reason_and_the_others_still_described(
    command, tiny_model_dir, clips, tmp_path
):
    """Its `error` is the reason alone, as in `similar` and `classify`: the path is a field of its own; its duration
    is not known (null, not a 0.0 that reads as an empty file's)."""
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....garbage")
    question = ("is it a dog?",) if command == "ask" else ()
    result = run(command, bad, clips[1], *question, "--model", tiny_model_dir, "--json", "--max-len", 2)
    assert result.exit_code == EXIT_PARTIAL
    data = json.loads(result.stdout)
    assert data[0] == {"path": str(bad), "duration_s": None, "windows": [], "error": UNREADABLE}
    assert data[1]["error"] is None and data[1]["windows"]


@pytest.mark.parametrize("command", ["describe", "ask"])
def test_a_file_reached_twice_is_described_once_named_as_given(command, tiny_model_dir, clips, monkeypatch):
    """Inside a given folder, given itself and under another spelling: one result, as `classify` gives, where the
    folder put it, named as first given directly (a folder's other files are named after the folder as typed)."""
    tone, noise = clips
    monkeypatch.chdir(tone.parent)
    question = ("is it a dog?",) if command == "ask" else ()
    args = (".", noise.name, f"./{noise.name}", noise.name, *question)
    result = run(command, *args, "--model", tiny_model_dir, "--json", "--max-len", 2)
    assert result.exit_code == 0, result.output
    assert [entry["path"] for entry in json.loads(result.stdout)] == [noise.name, "./tone.wav"]


def test_ask_json_of_a_folder_is_a_list_even_of_one_file(tiny_model_dir, clips, tmp_path):
    """One file given is answered with its object; a folder with a list, however many files it holds."""
    folder = tmp_path / "one"
    folder.mkdir()
    noise = shutil.copy(clips[1], folder / "noise.flac")
    result = run("ask", folder, "is there a dog?", "--model", tiny_model_dir, "--json", "--max-len", 2)
    assert result.exit_code == 0, result.output
    (answered,) = json.loads(result.stdout)
    assert answered["path"] == str(noise) and answered["windows"]


def test_a_very_short_clip_shows_its_length_and_window_without_reading_as_empty(tiny_model_dir, tmp_path):
    clip = tmp_path / "click.wav"
    sf.write(clip, np.full(441, 0.1), 44_100)  # 0.01 s
    result = run("describe", clip, "--model", tiny_model_dir, "--max-len", 2, "-p", "this is a sound of")
    assert result.exit_code == 0, result.output
    header, window = result.stdout.splitlines()
    assert header == f"{clip}  (0.01 s)" and window.startswith("    0.00-0.01s  ")


def test_ask_answers_a_question(tiny_model_dir, clips):
    result = run("ask", clips[1], "is there a dog?", "--model", tiny_model_dir, "--json", "--max-len", 3)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data["windows"][0]["answers"]) == ["answer"]


def test_without_a_model_the_error_is_one_line_naming_the_fix(clips):
    result = run("describe", clips[0])
    assert result.exit_code == EXIT_FAILED
    assert "pengi-search model fetch base" in result.stderr
    assert "Traceback" not in result.output


def test_model_info_json(tiny_model_dir):
    result = run("model", "info", "--model", tiny_model_dir, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["variant"] == "base" and info["tokenizers"] == {"gpt2": True, "clip": True}


def test_model_info_shows_the_path_as_it_is_one_fact_a_line(tiny_model_dir, tmp_path):
    """A folder named with brackets is no markup; the 64-digit sha256 has a line of its own, under 80 columns."""
    odd = tmp_path / "[red]models" / "tiny"
    shutil.copytree(tiny_model_dir, odd)
    result = run("model", "info", "--model", odd)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1:] == [
        f"  path       {odd}",
        "  weights    " + lines[2].split(maxsplit=1)[1],
        "  sha256     " + json.loads(run("model", "info", "--model", odd, "--json").stdout)["weights_sha256"],
        "  tokenizers gpt2 yes, clip yes",
    ]
    assert lines[2].endswith(" MiB") and max(map(len, lines[2:])) < 80


def test_stderr_holds_only_the_messages_when_it_is_not_a_terminal(tiny_model_dir, clips, tmp_path):
    """A script that keeps stderr gets no stray blank line from the (invisible) progress bar: nothing for a clean
    run, and exactly one line per file that could not be decoded."""
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio\n")
    base = [sys.executable, "-m", "pengi_search", "describe", "--model", str(tiny_model_dir), "--max-len", "2"]
    clean = subprocess.run([*base, str(clips[0]), "--json"], capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0 and json.loads(clean.stdout), clean.stderr
    assert clean.stderr == ""
    partial = subprocess.run([*base, str(clips[0]), str(broken)], capture_output=True, text=True, timeout=300)
    assert partial.returncode == EXIT_PARTIAL
    assert partial.stderr.splitlines() == [f"skipped {broken}: {UNREADABLE}"]


def test_a_librarys_warning_reads_as_the_commands_own(tiny_model_dir, clips):
    """A prompt cut to the model's length (a warning logged by the tokenizer) printed bare, with no `warning:`."""
    command = [sys.executable, "-m", "pengi_search", "describe", "--model", str(tiny_model_dir), "--max-len", "2"]
    run = subprocess.run([*command, str(clips[0]), "-p", "is it " * 30], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("warning: prompt of ") and "tokens cut to its first" in run.stderr, run.stderr

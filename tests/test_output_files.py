"""Where `-o FILE` writes, as a script gives it: a new or existing file is written aside and renamed into place, but
a named pipe, a device or one of the process's streams (`-o /dev/null`, `-o /dev/stdout`) is written into, and a
symbolic link's target gets the content while the link stays. A rename there would put a plain file in place of the
pipe, the link or (as root) /dev/null."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.written_aside import written_in_place

QUICK = ("--beam", "2", "--max-len", "3", "--device", "cpu")


def exported(captions, output: Path) -> list[str]:
    return ["export", "--db", captions.db, "-o", str(output)]


def classified(captions, output: Path, model: Path, labels: Path) -> list[str]:
    files = [str(path) for path in captions.files.values()]
    return ["classify", *files, "-l", str(labels), "-m", str(model), *QUICK, "-o", str(output)]


@pytest.fixture
def labels(tmp_path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("dog\nrain\n")
    return path


def command(name: str, captions, output: Path, model: Path, labels: Path) -> list[str]:
    return exported(captions, output) if name == "export" else classified(captions, output, model, labels)


@pytest.mark.parametrize("name", ["export", "classify"])
def test_an_output_into_a_named_pipe_goes_through_it_and_the_pipe_stays(
    name, captions, tiny_model_dir, labels, tmp_path
):
    pipe = tmp_path / "out.fifo"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # a reader is there: the command's open does not wait
    try:
        result = CliRunner().invoke(app, command(name, captions, pipe, tiny_model_dir, labels))
        received = os.read(reader, 1 << 16).decode()
    finally:
        os.close(reader)
    assert result.exit_code == 0, result.output
    assert pipe.is_fifo()
    assert len(received.splitlines()) == len(captions.files) + (name == "classify")  # the CSV's header


@pytest.mark.parametrize("name", ["export", "classify"])
def test_an_output_that_is_a_symbolic_link_fills_its_target_and_the_link_stays(
    name, captions, tiny_model_dir, labels, tmp_path
):
    target = tmp_path / "kept" / "latest.txt"
    target.parent.mkdir()
    target.write_text("the last one\n")
    link = tmp_path / "latest"
    link.symlink_to(target)
    result = CliRunner().invoke(app, command(name, captions, link, tiny_model_dir, labels))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == target
    assert len(target.read_text().splitlines()) == len(captions.files) + (name == "classify")
    assert sorted(path.name for path in target.parent.iterdir()) == ["latest.txt"]  # no partial file left


def test_devices_pipes_and_the_process_s_streams_are_written_in_place(tmp_path):
    """/dev/stdout of a command run `> out.txt` leads to a regular file, which the shell opened: written into."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "plain.txt").write_text("")
    assert written_in_place(Path("/dev/null")) and written_in_place(Path("/dev/stdout"))
    assert written_in_place(tmp_path / "fifo")
    assert not written_in_place(tmp_path / "plain.txt")
    assert not written_in_place(tmp_path / "new.txt")


def test_an_output_device_is_checked_writable_not_its_folder(captions, tmp_path, monkeypatch):
    """A user may not write /dev itself, only /dev/null: `export -o /dev/null` is no permission error."""
    sink = tmp_path / "sink.fifo"
    os.mkfifo(sink)
    reader = os.open(sink, os.O_RDONLY | os.O_NONBLOCK)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path and real_access(path, mode))
    try:
        result = CliRunner().invoke(app, exported(captions, sink))
    finally:
        os.close(reader)
    assert result.exit_code == 0, result.output

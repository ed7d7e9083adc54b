"""Output as scripts and files read it: off a terminal every row is one line, never folded nor cut, however long its
path and caption; on a terminal tables fit its width and lose nothing; a width set in COLUMNS holds everywhere."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from pengi_search.cli import app

from .search_library import CaptionLibrary, caption_library

# A folder with brackets (no markup) and spaces, nested deep: far past 80 columns, as real libraries' paths are.
LONG_NAME = (
    "field recordings [2024] from the walk along the river/the morning of the second day, near the old mill/"
    "a dog barking at the far bank while the water runs over the weir.wav"
)
LONG_CAPTION = (
    "a dog barks several times at a distance while water runs steadily over a weir and birds sing in the trees "
    "nearby, with wind in the microphone"
)
TERMINAL_COLUMNS = 70  # not Rich's 80 off a terminal: a table this wide was sized by the terminal
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model_dir) -> CaptionLibrary:
    root = tmp_path_factory.mktemp("wide")
    captioned = {LONG_NAME: (3.0, [LONG_CAPTION]), "bell.wav": (2.0, ["a bell rings"])}
    return caption_library(str(root / "index.db"), root / "sounds", tiny_model_dir, captioned)


def _query(library: CaptionLibrary, tiny_model_dir: Path) -> list[str]:
    return ["query", LONG_CAPTION, "--db", library.db, "--model", str(tiny_model_dir), "-k", "2"]


def _row(stdout: str, start: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(start))


def test_query_off_a_terminal_writes_each_hit_on_one_line(library, tiny_model_dir):
    result = CliRunner().invoke(app, _query(library, tiny_model_dir))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3  # the header and two hits
    row = _row(result.stdout, "1 ")
    assert str(library.files[LONG_NAME]) in row and LONG_CAPTION in row


def test_similar_off_a_terminal_writes_each_hit_on_one_line(library, tiny_model_dir):
    bell = library.files["bell.wav"]
    result = CliRunner().invoke(app, ["similar", str(bell), "--db", library.db, "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    row = _row(result.stdout, "1 ")
    assert str(library.files[LONG_NAME]) in row and LONG_CAPTION in row


def test_classify_and_describe_off_a_terminal_keep_the_path_and_the_label_on_their_lines(
    library, tiny_model_dir, tmp_path
):
    labels = tmp_path / "labels.txt"
    labels.write_text(f"{LONG_CAPTION}\na bell rings\n")
    clip = str(library.files[LONG_NAME])
    model = ("--model", str(tiny_model_dir))
    ranked = CliRunner().invoke(app, ["classify", clip, "-l", str(labels), *model, "--max-len", "3"])
    assert ranked.exit_code == 0, ranked.output
    assert ranked.stdout.splitlines()[0] == f"{clip}  (1 window)"
    assert any(line.split("  ")[1:2] == [LONG_CAPTION] for line in ranked.stdout.splitlines())
    described = CliRunner().invoke(app, ["describe", clip, *model, "--max-len", "3"])
    assert described.exit_code == 0, described.output
    assert described.stdout.splitlines()[0] == f"{clip}  (3.0 s)"


def test_no_line_written_off_a_terminal_ends_in_spaces(library, tiny_model_dir, tmp_path):
    """Rich pads each cell to its column's widest, the last column's too: `a bell rings` was followed by as many
    spaces as the long caption has characters more, in `query x > hits.txt`."""
    labels = tmp_path / "labels.txt"
    labels.write_text("a bell rings\na dog barks several times at a distance\n")
    model = ("--model", str(tiny_model_dir))
    clips = [str(path) for path in library.files.values()]
    for args in (
        _query(library, tiny_model_dir),
        ["classify", clips[1], "-l", str(labels), *model, "--max-len", "3"],
        ["stats", "--db", library.db],
    ):
        for env in ({}, {"COLUMNS": "60"}):
            result = CliRunner().invoke(app, args, env=env)
            assert result.exit_code == 0, result.output
            padded = [line for line in result.stdout.splitlines() if line != line.rstrip()]
            assert not padded, (args[0], env, padded)


def test_on_a_terminal_tables_are_drawn_as_rich_draws_them(monkeypatch):
    """Each row's cells keep their padding there: what was on the screen before stays as it was."""
    from rich.console import Console
    from rich.table import Table

    from pengi_search.consoles import make_console

    class Screen(io.StringIO):
        def isatty(self) -> bool:
            return True

    table = Table("path", "caption", box=None)
    table.add_row("a/long/path/to/a/dog.wav", "a dog barks")
    table.add_row("bell.wav", "a bell rings at a distance")
    drawn = []
    for console in (lambda: make_console(highlight=False), lambda: Console(highlight=False)):
        monkeypatch.setattr(sys, "stdout", Screen())
        console().print(table)
        drawn.append(sys.stdout.getvalue())
    ours, rich = drawn
    assert ours == rich and any(line != line.rstrip() for line in ours.splitlines())


def test_columns_set_by_the_user_holds_off_a_terminal_and_nothing_is_cut(library, tiny_model_dir):
    result = CliRunner().invoke(app, _query(library, tiny_model_dir), env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(cell_len, lines)) <= 60
    assert _column_text(lines, "caption") == _squeezed(LONG_CAPTION)


def test_a_script_redirecting_stdout_gets_one_line_per_hit_though_stdin_is_a_terminal(library, tiny_model_dir):
    """`pengi-search query x > hits.txt` typed in a terminal: Rich took the width of the terminal on stdin."""
    terminal, keyboard = _terminal(TERMINAL_COLUMNS)
    try:
        done = subprocess.run(
            _command(library, tiny_model_dir), stdin=keyboard, capture_output=True, text=True, env=_env(), timeout=300
        )
    finally:
        os.close(keyboard)
        os.close(terminal)
    assert done.returncode == 0, done.stderr
    row = _row(done.stdout, "1 ")
    assert str(library.files[LONG_NAME]) in row and LONG_CAPTION in row


def test_on_a_terminal_the_table_fits_its_width_and_loses_nothing(library, tiny_model_dir):
    """The path keeps up to half the width and the caption wraps beside it: no line is cut at the right edge."""
    terminal, screen = _terminal(TERMINAL_COLUMNS)
    try:
        process = subprocess.Popen(
            _command(library, tiny_model_dir), stdin=subprocess.DEVNULL, stdout=screen, stderr=screen, env=_env()
        )
        os.close(screen)
        shown = _read_all(terminal)
        assert process.wait(timeout=300) == 0, shown
    finally:
        os.close(terminal)
    lines = ANSI.sub("", shown).replace("\r\n", "\n").splitlines()
    # The query is longer than the text tower reads: that warning is one line however long (messages.print_warning),
    # which the terminal folds; the table is what must fit.
    lines = [line for line in lines if not line.startswith("warning: query of ")]
    assert max(map(cell_len, lines)) <= TERMINAL_COLUMNS, shown
    assert max(map(cell_len, lines)) > TERMINAL_COLUMNS - 10  # sized by the terminal, not as narrow as it could be
    assert _column_text(lines, "path", "time") == _squeezed(str(library.files[LONG_NAME]))
    assert _column_text(lines, "caption") == _squeezed(LONG_CAPTION)


def _column_text(lines: list[str], name: str, next_name: str | None = None) -> str:
    """The first hit's text in column `name` (up to column `next_name`), its wrapped pieces joined, spaces left out
    (a wrap drops the space it breaks at)."""
    header = next(i for i, line in enumerate(lines) if line.startswith("#"))
    start = lines[header].index(name)
    end = lines[header].index(next_name) if next_name else None
    second = next(i for i, line in enumerate(lines) if line.startswith("2 "))
    return _squeezed("".join(line[start:end] for line in lines[header + 1 : second]))


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _command(library: CaptionLibrary, tiny_model_dir: Path) -> list[str]:
    return [sys.executable, "-m", "pengi_search", *_query(library, tiny_model_dir)]


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    return env | {"TERM": "xterm"}


def _terminal(columns: int) -> tuple[int, int]:
    """A pseudo-terminal `columns` wide: its (controller, terminal) ends."""
    controller, end = pty.openpty()
    fcntl.ioctl(end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return controller, end


def _read_all(controller: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: every process holding the terminal end has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")

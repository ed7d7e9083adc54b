"""`--help` off a terminal, written as every other output is: the Typer app and command classes every command group
is made with (`App`).

Typer draws a command's help with Rich straight onto stdout, through a console of its own, from inside click's
`format_help` (which click means to fill a formatter, whose text the caller then writes). Into a pipe nobody reads
(`pengi-search query --help | head -1`) that console ended the process itself, with exit code 1, before our
closed-output handling could see it; and it padded each line with spaces to its width. Off a terminal the help is
drawn into a buffer instead and handed back to click as text, which click writes like any other output: a reader gone
ends the command quietly (141, `closed_output`), and no line ends in spaces. On a terminal, where neither happens,
Typer draws it as before, in colour.

Off a terminal Rich takes 80 columns, so `--help > help.txt` had every option's help folded over several lines. Where
nothing gives a width (no terminal on any standard stream, as `--help | less` has, and no COLUMNS), the help is
drawn as wide as its widest line, so nothing folds, as `gh` and `rg` write theirs into a pipe (80 at the least).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.cells import cell_len
from rich.console import Console
from typer import rich_utils
from typer.core import TyperCommand, TyperGroup

from ..consoles import is_a_terminal


class HelpAsText:
    """A Typer command or group whose help, off a terminal, comes back from `get_help` as text."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if is_a_terminal(sys.stdout):
            super().format_help(ctx, formatter)  # type: ignore[misc]
            return
        drawn = io.StringIO()
        with contextlib.redirect_stdout(drawn):  # where Typer's console writes: sys.stdout, as it is when it writes
            if _width_given():
                super().format_help(ctx, formatter)  # type: ignore[misc]
            else:
                measuring = _Measuring()
                with _typer_consoles(lambda stderr=False: measuring):  # draws nothing: measures what it is given
                    super().format_help(ctx, formatter)  # type: ignore[misc]
                with _typer_consoles(_of_width(measuring.unfolded_width())):
                    super().format_help(ctx, formatter)  # type: ignore[misc]
        formatter.write("\n".join(line.rstrip(" ") for line in drawn.getvalue().splitlines()))


MIN_HELP_WIDTH = 80  # Rich's width off a terminal: a help that fits it is drawn as it always was
_WIDEST_HELP = 1 << 13  # columns; a help line longer than this (a paragraph of 8 thousand characters) folds
_LINE_ENDS = " │╮╯─"  # what follows a line's text at its right: spaces, a box's border


def _width_given() -> bool:
    """Whether Rich finds a width for the help: COLUMNS (or Typer's TERMINAL_WIDTH), or a terminal's on a standard
    stream, as Rich looks for one (`--help | less` keeps the width of the terminal `less` shows it on)."""
    if os.environ.get("COLUMNS", "").isdigit() or os.environ.get("TERMINAL_WIDTH", "").isdigit():
        return True
    for descriptor in (0, 1, 2):
        with contextlib.suppress(OSError, ValueError):
            if os.get_terminal_size(descriptor).columns:
                return True
    return False


class _Measuring(Console):
    """A console that prints nothing: it keeps what it is given, to find the width that draws it unfolded."""

    def __init__(self) -> None:
        super().__init__(file=io.StringIO(), width=MIN_HELP_WIDTH)
        self.given: list[Any] = []

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.given.extend(objects)

    def unfolded_width(self) -> int:
        """The narrowest width (`MIN_HELP_WIDTH` at the least) at which what it was given takes as few lines as at
        the widest: a folded line adds lines, and a wider one never does. Rich cannot measure it (a cell of Typer's
        tables claims any width), so it is read off the drawing at the widest, where each table column but the last
        is as wide as its text, and checked: the right edge of the text of every line, with its padding and border."""
        fewest = len(widest := self._drawn(_WIDEST_HELP))
        low = max(MIN_HELP_WIDTH, *(cell_len(line.rstrip(_LINE_ENDS)) + 2 for line in widest))
        if len(self._drawn(low)) == fewest:  # the text's right edge is where it was read (all but always)
            return low
        high = _WIDEST_HELP
        while low < high:  # as few lines at `high` as at the widest, throughout
            middle = (low + high) // 2
            low, high = (low, middle) if len(self._drawn(middle)) == fewest else (middle + 1, high)
        return high

    def _drawn(self, width: int) -> list[str]:
        options = self.options.update_width(width)
        drawn = [self.render_lines(renderable, options, pad=False) for renderable in self.given]
        return ["".join(segment.text for segment in line) for lines in drawn for line in lines]


def _of_width(width: int) -> Callable[..., Console]:
    """Typer's help console, `width` columns wide."""
    make = rich_utils._get_rich_console

    def console(stderr: bool = False) -> Console:
        made = make(stderr=stderr)
        made.width = width
        return made

    return console


@contextlib.contextmanager
def _typer_consoles(make: Callable[..., Console]) -> Iterator[None]:
    """Typer's help drawn on the consoles `make` makes. Typer makes its console within the drawing, and takes no
    console or width from its caller (but from TERMINAL_WIDTH, read once, when it is imported)."""
    original = rich_utils._get_rich_console
    rich_utils._get_rich_console = make
    try:
        yield
    finally:
        rich_utils._get_rich_console = original


class Command(HelpAsText, TyperCommand):
    """A command whose help off a terminal is written as click writes it (`HelpAsText`)."""


class Group(HelpAsText, TyperGroup):
    """A group of commands whose help off a terminal is written as click writes it (`HelpAsText`)."""


class App(typer.Typer):
    """`typer.Typer` whose group and commands are `Group` and `Command` unless a subclass of theirs is given."""

    def __init__(self, *, cls: type[Group] = Group, **kwargs: Any) -> None:
        super().__init__(cls=cls, **kwargs)

    def command(self, *args: Any, cls: type[Command] = Command, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls, **kwargs)

"""`--help` off a terminal, written as every other output is: the Typer app and command classes every command group
is made with (`App`).

Typer draws a command's help with Rich straight onto stdout, through a console of its own, from inside click's
`format_help` (which click means to fill a formatter, whose text the caller then writes). Into a pipe nobody reads
(`pengi-search query --help | head -1`) that console ended the process itself, with exit code 1, before our
closed-output handling could see it; and it padded each line with spaces to its width. Off a terminal the help is
drawn into a buffer instead and handed back to click as text, which click writes like any other output: a reader gone
ends the command quietly (141, `closed_output`), and no line ends in spaces. On a terminal, where neither happens,
Typer draws it as before, in colour.
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any

import typer
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
            super().format_help(ctx, formatter)  # type: ignore[misc]
        formatter.write("\n".join(line.rstrip(" ") for line in drawn.getvalue().splitlines()))


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

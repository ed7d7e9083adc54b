"""The Rich consoles that commands print through: on a terminal, lines fit its width; elsewhere, each as long as it is.

Off a terminal Rich assumes 80 columns (or the width of whichever of stdin, stdout and stderr is one), so `query x >
hits.txt` or `stats | grep` got every table row folded over several lines and paths broken mid-name. A file or a
pipe has no width: there a row is one line, never folded nor cut, as `gh` and `ripgrep` write theirs. A width that
was asked for (COLUMNS, or the console's `width`) still holds wherever the output goes, down to `NARROWEST`: below
it (`COLUMNS=20`) a table's path and caption came out one character per line and its score as `…`, so a width
under it is taken as `NARROWEST` (as `ls -C` never breaks a name, however small COLUMNS is, lines stay readable;
a terminal folds a line wider than itself whole).

Rich also pads every cell of a table column to the column's widest, the last column's too, so rows ended in runs of
spaces: off a terminal no line does (`grep 'dog$'`, diffs and `cut` see the text and nothing after it).

Nor does any console read Rich's emoji codes: a file, label or caption with `:fire:` in it is printed so, not as a
flame (every message here is the user's data or this program's plain words).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, TextIO

from rich.console import Console, ConsoleDimensions, ConsoleOptions, ConsoleRenderable, RenderHook, RenderResult
from rich.segment import Segment

__all__ = [
    "NARROWEST",
    "UNBOUNDED_WIDTH",
    "Console",
    "is_a_terminal",
    "is_watched",
    "make_console",
    "writes_plain_lines",
]  # Console: what make_console makes

# Rich renders a table to its content's width when the console is wider, and never pads a line out to the
# console's width, so a width nothing reaches is as good as none (and costs nothing).
UNBOUNDED_WIDTH = sys.maxsize
# The narrowest width lines are laid out to: a table of hits (rank, path, time, score, caption) still shows each cell
# in pieces of several characters.
NARROWEST = 40


class _FittingConsole(Console):
    """Rich's console, with no width off a terminal, and no line ending in spaces there."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.push_render_hook(_UnpaddedOffATerminal(self))

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self._writes_to_a_terminal() or self._width_asked():
            return ConsoleDimensions(max(size.width, NARROWEST), size.height)
        return ConsoleDimensions(UNBOUNDED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def on_broken_pipe(self) -> None:
        # Rich exits with 1 when the reader of its stream has gone; raised instead, that ends a command as any
        # other write's does (`cli.common.handle_errors`: exit code 141, quietly).
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    def _writes_to_a_terminal(self) -> bool:
        # The console's own stream: Rich's `is_terminal` also holds where FORCE_COLOR asks for colours in a log,
        # and its size comes from any standard stream that is a terminal, stdin included.
        return is_a_terminal(self.file)

    def _width_asked(self) -> bool:
        # Rich keeps a width given to it (or found in COLUMNS when it was made) in `_width`, and reads COLUMNS again
        # on each use.
        return self._width is not None or os.environ.get("COLUMNS", "").isdigit()


class _UnpaddedOffATerminal(RenderHook):
    """What a console prints, each line without the spaces it ends in, where it writes to a file or a pipe (on a
    terminal they are invisible, and a progress bar redraws over them)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        if is_a_terminal(self.console.file):
            return renderables
        return [_Unpadded(renderable) for renderable in renderables]


class _Unpadded:
    """A renderable drawn as Rich draws it, each line without the spaces it ends in."""

    def __init__(self, renderable: ConsoleRenderable) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        line: list[Segment] = []
        for segment in console.render(self.renderable, options):
            if segment.control or "\n" not in segment.text:
                line.append(segment)
                continue
            # A segment may end several lines (a text's own line breaks, a table row's end).
            *ends, rest = segment.text.split("\n")
            for end in ends:
                yield from _without_trailing_spaces([*line, Segment(end, segment.style)])
                yield Segment.line()
                line = []
            line.append(Segment(rest, segment.style))
        yield from _without_trailing_spaces(line)


def _without_trailing_spaces(line: list[Segment]) -> list[Segment]:
    """A line's segments without the spaces it ends in, styled ones too (off a terminal a style is at most a colour
    code around them). A control segment (a cursor move) ends the stripping: none is written off a terminal."""
    while line and not line[-1].control and not line[-1].text.rstrip(" "):
        line = line[:-1]
    if line and not line[-1].control:
        line = [*line[:-1], Segment(line[-1].text.rstrip(" "), line[-1].style)]
    return line


def is_a_terminal(stream: TextIO | None) -> bool:
    """Whether `stream` writes to a terminal (False for a closed stream, and for one without `isatty`)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def is_watched(console: Console) -> bool:
    """Whether a person watches what `console` writes, as a progress bar needs: its own stream is a terminal that
    redraws a line in place (not TERM=dumb). Not Rich's `is_terminal`, which also holds where FORCE_COLOR asks for
    colours in a log: a bar drawn there leaves its frames and a blank line in the log."""
    return is_a_terminal(console.file) and not console.is_dumb_terminal


def writes_plain_lines(console: Console) -> bool:
    """Whether `console` lays nothing out: no width to fit (a file or a pipe, no COLUMNS) and no colours, so that
    text written as lines reads exactly as Rich's layout of it would."""
    return console.width >= UNBOUNDED_WIDTH and console.color_system is None


def make_console(*, stderr: bool = False, highlight: bool = True) -> Console:
    """A console on stdout (or stderr) whose lines fit a terminal, and are never folded in a file or a pipe; no emoji
    codes read."""
    return _FittingConsole(stderr=stderr, highlight=highlight, emoji=False)

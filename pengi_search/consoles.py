"""The Rich consoles that commands print through: on a terminal, lines fit its width; elsewhere, each as long as it is.

Off a terminal Rich assumes 80 columns (or the width of whichever of stdin, stdout and stderr is one), so `query x >
hits.txt` or `stats | grep` got every table row folded over several lines and paths broken mid-name. A file or a
pipe has no width: there a row is one line, never folded nor cut, as `gh` and `ripgrep` write theirs. A width that
was asked for (COLUMNS, or the console's `width`) still holds wherever the output goes.
"""

from __future__ import annotations

import errno
import os
import sys

from rich.console import Console, ConsoleDimensions

__all__ = ["UNBOUNDED_WIDTH", "Console", "make_console"]  # Console: the type of what make_console makes

# Rich renders a table to its content's width when the console is wider, and never pads a line out to the
# console's width, so a width nothing reaches is as good as none (and costs nothing).
UNBOUNDED_WIDTH = sys.maxsize


class _FittingConsole(Console):
    """Rich's console, with no width off a terminal."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self._writes_to_a_terminal() or self._width_asked():
            return size
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
        isatty = getattr(self.file, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False

    def _width_asked(self) -> bool:
        # Rich keeps a width given to it (or found in COLUMNS when it was made) in `_width`, and reads COLUMNS again
        # on each use.
        return self._width is not None or os.environ.get("COLUMNS", "").isdigit()


def make_console(*, stderr: bool = False, highlight: bool = True) -> Console:
    """A console on stdout (or stderr) whose lines fit a terminal, and are never folded in a file or a pipe."""
    return _FittingConsole(stderr=stderr, highlight=highlight)

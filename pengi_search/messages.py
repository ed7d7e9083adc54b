"""How a message for the user that is not a result looks, wherever it is printed from.

The command line (`cli.common.warn`, `cli.common.report_skipped`) and the trainer (which does not import the
command line) print their errors through `print_error`, their warnings through `print_warning` and the inputs they
went on without through `print_skipped`, so each reads the same from `describe`, `train init`, a dry run or a
training run.

A user's text (a file name, a label, a caption, a reason naming either) reaches Rich as `Text`, never as markup:
escaped markup still doubled a trailing backslash (`dog\\` shown as `dog\\\\`), and only `Text` is free of both
markup and emoji codes (`consoles.make_console` turns the latter off for plain strings too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.text import Text

from .pathnames import shown
from .stop_signals import interruption

Notify = Callable[[str], Any]  # receives one-line notices for the person running the command (`log.warning`, `warn`)
SHOWN_CHARACTERS = 40  # of a long text a message names: enough to recognise it, and the line stays readable


def shortened(text: str, characters: int = SHOWN_CHARACTERS) -> str:
    """`text`, or its first `characters` and "..." when longer: a user's long text (a prompt, a label, a query) as a
    one-line message names it."""
    return text if len(text) <= characters else text[:characters] + "..."


def print_error(console: Console, message: str) -> None:
    """`error: message` on `console`, as a command that stops says why (escaped and on one line, as a warning)."""
    console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)


def print_warning(console: Console, message: str) -> None:
    """`warning: message` on `console`: the label in yellow, the message as written (a path or a label with
    brackets keeps them), on one line however long (a log read later keeps each warning on the line that can be
    searched for)."""
    console.print(Text.assemble(("warning:", "yellow"), " ", message), soft_wrap=True)


def print_skipped(console: Console, path: str, reason: str) -> None:
    """`skipped PATH: reason` on `console`: an input a command went on without (its exit code, 3, says so too). The
    path is shown escaped (`pathnames.shown`), the reason as written, on one line."""
    print_problem(console, "skipped", path, reason)


def print_problem(console: Console, label: str, path: str, reason: str) -> None:
    """`label PATH: reason` on `console`, the label in red: a file or folder a command could not use (`skipped`,
    `index`'s `failed`). The path is shown escaped (`pathnames.shown`), the reason as written, on one line."""
    console.print(Text.assemble((label, "red"), " ", shown(path), ": ", reason), soft_wrap=True)


def print_interrupted(console: Console, kept: str = "") -> None:
    """`interrupted` on `console`: Ctrl-C, SIGTERM or SIGHUP stopped the command (its exit code, 130, 143 or 129,
    says which; under torchrun, said as torchrun's stop when another process of the run had ended first:
    `stop_signals.interruption`); then, for work that a stop does not lose, `: kept`, what was kept and how to go
    on, on one line."""
    what = interruption()
    console.print(Text(f"{what}: {kept}" if kept else what), soft_wrap=True)

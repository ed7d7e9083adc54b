"""How a message for the user that is not a result looks, wherever it is printed from.

The command line (`cli.common.warn`) and the trainer (which does not import the command line) print their warnings
through `print_warning`, so a warning reads the same from `describe`, `train init`, a dry run or a resumed run.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def print_warning(console: Console, message: str) -> None:
    """`warning: message` on `console`: the label in yellow, the message as written (escaped: a path or a label with
    brackets keeps them, where Rich would read them as markup), on one line however long (a log read later keeps
    each warning on the line that can be searched for)."""
    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False)

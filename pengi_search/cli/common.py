"""What every command shares: options, error handling with meaningful exit codes, and output helpers.

Nothing here imports torch: `--help` and quick commands stay fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import sys
import time
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ..choices import Device
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, PengiSearchError, UsageError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "UsageError"]

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model name or directory \\[env: PENGI_SEARCH_MODEL; default: installed base]"),
]
DeviceOption = Annotated[
    Device, typer.Option("--device", help="Where the model runs: auto is CUDA when there is a GPU (bf16 autocast).")
]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="Windows decoded together.")]
AutoBatchOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help="Windows decoded together \\[default: the device's: 32 (window, prompt) pairs on CPU, 256 on CUDA]",
    ),
]
BeamOption = Annotated[int, typer.Option("--beam", min=1, help="Beam width (the paper uses 5, its example 3).")]
MaxLenOption = Annotated[int, typer.Option("--max-len", min=1, help="Most tokens generated per answer.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Database URL or SQLite file \\[env: PENGI_SEARCH_DB; default: index.db in the data dir]"
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
FastOption = Annotated[
    bool,
    typer.Option(
        "--fast",
        help="Faster, not bit-identical: bf16 (or int8) and greedy decoding; see the README for the agreement.",
    ),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="CPU threads the model uses \\[default: one per core, PyTorch's choice]"),
]


F = TypeVar("F", bound=Callable[..., Any])
DEBUG_ENV = "PENGI_SEARCH_DEBUG"  # set it to see tracebacks instead of one-line errors


def handle_errors(func: F) -> F:
    """Turn expected failures into one line on stderr and an exit code, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:
            if os.environ.get(DEBUG_ENV) or not isinstance(err, PengiSearchError | OSError | ValueError):
                raise
            fail(_one_line(err), err.exit_code if isinstance(err, PengiSearchError) else EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


def options_from(group: type, parameter: str) -> Callable[[F], F]:
    """Give a command the fields of the dataclass `group` as its own options, declared once on the dataclass.

    Typer reads a command's options from its signature: the signature shown to it has `group`'s fields in place of
    the command's `parameter`, and the command is called with one `group` instance there. The fields' annotations
    are Typer `Annotated` options, their defaults the options' defaults.
    """
    hints = typing.get_type_hints(group, include_extras=True)
    fields = dataclasses.fields(group)
    names = [field.name for field in fields]

    def as_parameters(kind: Any) -> list[inspect.Parameter]:
        return [
            inspect.Parameter(
                field.name,
                kind,
                default=inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default,
                annotation=hints[field.name],
            )
            for field in fields
        ]

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        parameters: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            parameters += as_parameters(param.kind) if param.name == parameter else [param]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return command(**kwargs, **{parameter: group(**values)})

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {param.name: param.annotation for param in parameters}
        return wrapper  # type: ignore[return-value]

    return decorate


def shown_path(path: str) -> str:
    """Paths below the current folder are shown relative to it (shorter tables); JSON keeps them absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def fail(message: str, code: int = EXIT_FAILED) -> None:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def apply_threads(threads: int | None) -> None:
    """`--threads`: the CPU threads PyTorch computes with; None keeps its default (one per core) and does not even
    import torch (an unchanged library's `index` never needs it)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def show_progress(quiet: bool, json_output: bool = False) -> bool:
    """Progress bars only for a person watching a terminal."""
    return not quiet and not json_output and err_console.is_terminal


def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


class WindowProgress:
    """A run over files on a progress bar: windows done of all, files done, windows per second and time left.

    A file's number of windows is known once it is decoded; until every file is, the total is the known counts plus
    the files still to come at the mean so far (so the time left firms up as the run goes).
    """

    def __init__(self, bar: Any, description: str, visible: bool) -> None:
        self.bar = bar
        self.task = bar.add_task(description, total=None, rate="", visible=visible)
        self.files = self.files_done = self.counted_files = self.counted_windows = self.windows_done = 0
        self.started = 0.0

    def start(self, files: int) -> None:
        self.files = files
        self.started = time.monotonic()
        self._show()

    def counted(self, windows: int) -> None:
        self.counted_files += 1
        self.counted_windows += windows
        self._show()

    def advance(self, files: int = 0, windows: int = 0) -> None:
        self.files_done += files
        self.windows_done += windows
        self._show()

    def _show(self) -> None:
        mean = self.counted_windows / self.counted_files if self.counted_files else None
        total = None if mean is None else self.counted_windows + round(mean * (self.files - self.counted_files))
        total = None if total is None else max(total, self.windows_done)
        rate = self.windows_done / max(time.monotonic() - self.started, 1e-9)
        text = f"{self.files_done}/{self.files} files, {rate:.2f} windows/s"
        self.bar.update(self.task, total=total, completed=self.windows_done, rate=text)

"""What every command shares: options, error handling with meaningful exit codes, and output helpers.

Progress bars are in `progress_bars`, the first-use model download in `first_use`.

Nothing here imports torch: `--help` and quick commands stay fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import gc
import inspect
import os
import sys
import typing
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ..choices import Device, LongPrompt, StopRule, device_unavailable
from ..consoles import make_console
from ..errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    PengiSearchError,
    UsageError,
    first_line,
    not_found,
)
from ..messages import print_error, print_interrupted, print_skipped, print_warning
from ..pathnames import json_text, shown, writes_utf8
from ..paths import GivenPath, file_in_the_way, refuse_unexpanded_home, shown_path
from ..stop_signals import interrupted_by_stop_signals, interrupted_exit_code
from ..torchrun_env import SaidByTheMachinesFirstProcess
from .closed_output import output_closed, output_failure, quiet_when_output_closed, whole_writes

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "UsageError", "not_found"]

err_console = make_console(stderr=True, highlight=False)
out_console = make_console(highlight=False)

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model name or directory \\[env: PENGI_SEARCH_MODEL; default: installed base]"),
]


def _available_device(device: Device) -> Device:
    """`--device`, checked as the command line is read, before any work: every command that takes it refuses CUDA
    on a machine without it (exit 2), even a run that turns out to need no model."""
    if reason := device_unavailable(device):
        raise typer.BadParameter(reason)
    return device


DeviceOption = Annotated[
    Device,
    typer.Option(
        "--device",
        callback=_available_device,
        help="Where the model runs: auto is CUDA when there is a GPU (bf16 autocast).",
    ),
]
BatchOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help="Windows decoded together, each with every prompt \\[default: as many as fill the device's 32 (window, "
        "prompt) pairs on CPU, 256 on CUDA]",
    ),
]
BeamOption = Annotated[int, typer.Option("--beam", min=1, help="Beam width (the paper uses 5, its example 3).")]
MaxLenOption = Annotated[int, typer.Option("--max-len", min=1, help="Most tokens generated per answer.")]
StopOption = Annotated[
    StopRule,
    typer.Option(
        "--stop",
        help="When an answer ends: both (on the space or <|endoftext|>) or original (on the space only, exactly "
        "as the original Pengi, which writes on past <|endoftext|>).",
    ),
]
LongPromptsOption = Annotated[
    LongPrompt,
    typer.Option(
        "--long-prompts", help="A prompt over 40 tokens: cut to its first 40 as the original does (warns), or refuse."
    ),
]


def json_option(prints: str) -> Any:
    """The `--json` flag of a command, its help saying what the command prints: `prints` starts with the shape
    ("a list ...", "an object ...") as the README documents it, since the shapes differ from command to command and
    a script is written against one."""
    return Annotated[bool, typer.Option("--json", help=f"JSON on stdout: {prints}")]


def given_db(value: str) -> str:
    """A --db's parser: an empty one is refused. Taken as no --db, `--db "$UNSET"` would search, index or remove
    in the default library (PENGI_SEARCH_DB's, else the data folder's), not the one the script meant."""
    if not value:
        raise typer.BadParameter("the library is empty; give a database file or URL, or leave --db out")
    return value


DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL or SQLite file \\[env: PENGI_SEARCH_DB; default: index.db in the data dir]",
        parser=given_db,
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
# Every command that writes a library beside which no `index` run may write (`db.run_lock.indexing_lock`).
WaitOption = Annotated[
    bool, typer.Option("--wait", help="When an index run is writing to the library, wait for it to end.")
]
HiddenOption = Annotated[  # every command that walks folders (`pengi_search.scan`)
    bool,
    typer.Option(
        "--hidden",
        help="Walk folders into hidden files and folders too (names starting with '.'); AppleDouble '._*' files are "
        "never audio. A path given here is used, hidden or not.",
    ),
]
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


@dataclass(frozen=True)
class UsingOptions:
    """The library a command works on and the model it runs, on which device (`query`, `similar`, `classify`,
    `index`); the eval commands declare their own `--db`, whose help says what their library is for."""

    db: DbOption = None
    model: ModelOption = None
    device: DeviceOption = Device.auto


@dataclass(frozen=True)
class ExactComputeOptions:
    """How a command that runs the model on audio computes, its results unchanged: windows per batch, CPU threads.
    `eval classify` takes these alone: it has no `--fast`."""

    batch_size: BatchOption = None
    threads: ThreadsOption = None


@dataclass(frozen=True)
class ComputeOptions(ExactComputeOptions):
    """The compute options of a command that also offers `--fast` (results not bit-identical): the dataclass puts
    the inherited fields first, so the options keep their order in `--help`."""

    fast: FastOption = False


F = TypeVar("F", bound=Callable[..., Any])
DEBUG_ENV = "PENGI_SEARCH_DEBUG"  # set it to see tracebacks instead of one-line errors


def handle_errors(func: F) -> F:
    """Turn expected failures into one line on stderr and an exit code, instead of a traceback; and end the command
    the way a shell asks: SIGTERM stops it as Ctrl-C does (exit code 143, Ctrl-C's 130), and a reader of its output
    that went away (`| head`) ends it quietly (141)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with whole_writes():
            _tolerant_output()
            # A reader gone ends it quietly, found by its output or by saying "interrupted" or an error on stderr.
            with interrupted_by_stop_signals(), quiet_when_output_closed():
                return _reported(func, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _reported(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`func`'s result; its expected failures and interruptions as a line on stderr and an exit code."""
    try:
        return _flushed(func, *args, **kwargs)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (`stop_signals`): the exit code says which
        print_interrupted(err_console)
        raise typer.Exit(interrupted_exit_code()) from None
    except (typer.Exit, typer.Abort):
        raise
    except SaidByTheMachinesFirstProcess:  # under torchrun, before the processes connect: the first process says it
        return None
    except Exception as err:
        if isinstance(err, BrokenPipeError) and output_closed():
            raise  # no failure of the command's: `handle_errors` ends it quietly
        if (shortage := _out_of_memory(err)) and not os.environ.get(DEBUG_ENV):
            fail(shortage)
        if os.environ.get(DEBUG_ENV) or not isinstance(err, PengiSearchError | OSError | ValueError):
            raise
        fail(
            output_failure(err) or first_line(err), err.exit_code if isinstance(err, PengiSearchError) else EXIT_FAILED
        )


def _out_of_memory(err: Exception) -> str | None:
    """How a command says that memory ran out (Python's MemoryError, PyTorch's CUDA or MPS out-of-memory error),
    with what to do; None for another error. Not a bug of the command's, whose traceback would help: the batch did
    not fit this machine, or another program held the memory. PyTorch's error is checked only where torch is loaded
    (the only place it can come from)."""
    torch = sys.modules.get("torch")
    torch_error = getattr(torch, "OutOfMemoryError", None)
    if not isinstance(err, MemoryError) and not (torch_error is not None and isinstance(err, torch_error)):
        return None
    said = str(err).strip()
    what = f"out of memory ({said.splitlines()[0]})" if said else "out of memory"
    return f"{what}: a smaller batch needs less (--batch-size; `train`: data.batch_size), or free the memory"


def _flushed(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`func`'s result, with what it left in stdout's buffer written: a reader gone is found here, where the exit
    code can say so, not at interpreter exit (exit code 120, and an "Exception ignored" message)."""
    try:
        result = func(*args, **kwargs)
    except (typer.Exit, typer.Abort):
        sys.stdout.flush()
        raise
    sys.stdout.flush()
    return result


def _tolerant_output() -> None:
    """Text that cannot be encoded for stdout or stderr comes out escaped rather than ending the command.

    Every file name printed goes through `shown` (and JSON through `json_text`) first; this is the net under
    them, for a name that reaches the output some other way.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(Exception):  # a stream that cannot change: leave it as it is
                reconfigure(errors="backslashreplace")


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


def given_prompt(value: str) -> str:
    """A --prompt's parser: a blank one is refused. It asks the model nothing (a `-p "$UNSET"`), and its answers
    would be named by an empty string."""
    if not value.strip():
        raise typer.BadParameter('the prompt is empty; write what to ask, e.g. "this acoustic scene is"')
    return value


def given_separator(value: str) -> str:
    """A --label-separator's parser: an empty one would split no cell, or every character of it."""
    if not value:
        raise typer.BadParameter("the separator is empty; write what separates a cell's labels, e.g. ','")
    return value


def check_output_file(output: Path, kind: str) -> None:
    """Refuse an --output file of `kind` ("CSV") that cannot be written, before the work rather than after it (and
    before a half-written copy is left beside it). A device or pipe (`/dev/stdout`) is written in place: only it
    must be writable; a symbolic link's target is replaced: its folder must be."""
    from ..written_aside import written_in_place

    if output.is_dir():
        raise UsageError(output, f"a folder; --output takes the {kind} file's name")
    if written_in_place(output):
        if not os.access(output, os.W_OK):
            raise UsageError(output, f"cannot write the {kind}: permission denied")
        return
    folder = Path(os.path.realpath(output)).parent if output.is_symlink() else output.parent
    if not folder.is_dir():
        # `folder` itself or a part above it may be a file: name it so, not as a folder that is missing
        if (in_the_way := file_in_the_way(folder)) is not None:
            raise UsageError(output, f"cannot write the {kind}: {shown_path(in_the_way)} is a file, not a folder")
        raise UsageError(output, f"cannot write the {kind}: no folder {shown(os.fspath(folder))}")
    if not os.access(folder, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise UsageError(output, f"cannot write the {kind}: permission denied")


def check_output_folder(output: Path) -> None:
    """Refuse an --output folder that cannot be made or written in, before the work rather than after it."""
    if output.exists() and not output.is_dir():
        raise UsageError(output, "a file, not a folder; --output takes a folder for the report and its figures")
    existing = next(parent for parent in (output, *output.parents) if parent.exists())  # the root, at the latest
    if not existing.is_dir():
        raise UsageError(output, f"cannot make this folder: {shown(os.fspath(existing))} is a file")
    if not os.access(existing, os.W_OK):
        raise UsageError(output, f"cannot write in {shown(os.fspath(existing))}: permission denied")
    refuse_unexpanded_home(output)


def given_input(value: str) -> str:
    """The parser of every argument that names files and folders (index, remove, describe, ask, similar, classify,
    eval classify): the text kept as typed, since the files are named after it (a Path would drop a leading `./`).
    An empty one is refused: Path("") is the current folder, so `remove "$UNSET"` would forget all of it and
    `index "$UNSET"` or `classify "$UNSET"` work through it."""
    if not value:
        raise typer.BadParameter("the path is empty (write . for the current folder)")
    if value == "-" and not os.path.lexists(value):  # a script's habit: here `-` would be said as a missing file
        raise typer.BadParameter("- is no file here (standard input is not read); give the path of a file or folder")
    return value


def given_path(value: str | os.PathLike[str]) -> GivenPath:
    """The parser of every other option and argument that takes a path (`--labels`, `--output`, a configuration;
    set on each by `cli._paths_as_typed`): the path, whose messages name it as typed (`GivenPath`: `./labels.txt`
    keeps its `./`), as every command names the files it is given. Empty, refused as `given_input` refuses it."""
    if os.fspath(value) == "-" and not os.path.lexists("-"):
        raise typer.BadParameter("- is no file here: give a file's path (/dev/stdin or /dev/stdout for a pipe)")
    return GivenPath.typed(given_input(os.fspath(value)))


@contextlib.contextmanager
def output_failures_said() -> Iterator[None]:
    """Around what writes to stdout outside a command's run (`--help`): stdout that cannot take it (`> /dev/full`)
    is one line and exit code 1, not a traceback."""
    try:
        yield
    except OSError as err:
        if (message := output_failure(err)) is None:
            raise
        fail(message)


def given_options(context: typer.Context, *, leaving_out: Collection[str] = ()) -> list[str]:
    """The options the user gave the running command (`context`) on its command line, as the words of a command
    to paste: each under its long name, with its value as given (a repeated one repeated), a flag alone; in the
    order the command declares them. A command that a message suggests instead of this one (`index --reindex` for
    `index`) starts from them, so that every option that shapes what it does carries over, the ones added later
    too; `leaving_out`: the long names it cannot take."""
    words: list[str] = []
    for param in context.command.params:
        if param.param_type_name != "option" or param.name is None:
            continue
        name = max(param.opts, key=len)  # `--prompt`, not `-p`: a pasted command reads better long
        # Typer's own copy of Click's ParameterSource: compared by name, not imported from Typer's private module.
        source = context.get_parameter_source(param.name)
        if name in leaving_out or source is None or source.name != "COMMANDLINE":
            continue
        words += _option_words(param, name, context.params[param.name])
    return words


def _option_words(param: Any, name: str, value: Any) -> list[str]:
    """An option given with `value`, as command-line words: a flag by the name that sets it, a repeated option
    once per value, a choice by its text."""
    if param.is_flag:
        return [name] if value else param.secondary_opts[:1]
    values = value if param.multiple else [value]
    return [word for one in values for word in (name, str(one.value if isinstance(one, enum.Enum) else one))]


def fail(message: str, code: int = EXIT_FAILED) -> None:
    """Print `message` (plain text: a file name with brackets is no markup) as an error and exit with `code`."""
    print_error(err_console, message)
    raise typer.Exit(code)


def warn(message: str) -> None:
    print_warning(err_console, message)


def report_skipped(path: str, reason: str) -> None:
    """An input that a command went on without (its result, or the exit code, says so too), by every command.

    The path is shown as the command was given it (escaped by `pathnames.shown`, never made relative), so that it
    matches what the user typed, as ripgrep's messages do; a file found inside a given folder, after the folder as
    typed (`reached_name`).
    """
    print_skipped(err_console, path, reason)


def print_json(data: Any, *, line: bool = False) -> None:
    """`data` as indented JSON, or with `line` as one line of a JSON-lines stream (`index --watch --json`),
    flushed at once: a reader on a pipe gets each line as it is written, not when a buffer fills."""
    sys.stdout.write(json_text(data, indent=None if line else 2, ascii_only=not writes_utf8(sys.stdout)) + "\n")
    if line:
        sys.stdout.flush()


def plain_table() -> Table:
    """The table every command prints its rows in: no borders, no padding at its edges, bold column names; rows
    read as columns of text, which `cut` and `awk` split."""
    from rich.table import Table

    return Table(show_edge=False, pad_edge=False, box=None, header_style="bold")


def apply_threads(threads: int | None) -> None:
    """`--threads`: the CPU threads PyTorch computes with; None keeps its default (one per core) and does not even
    import torch (an unchanged library's `index` never needs it)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@contextlib.contextmanager
def lasting_objects() -> Iterator[None]:
    """Around a command's imports and model loading, whose millions of objects live until the process exits: the
    cyclic garbage collector pauses while they are made, then leaves them be (`gc.freeze`) in every later full
    collection and in the one at exit. Together ~1.5 s of `describe`'s fixed cost (benchmarks/README.md)."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()

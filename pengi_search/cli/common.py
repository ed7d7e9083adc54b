"""What every command shares: options, error handling with meaningful exit codes, and output helpers.

Nothing here imports torch: `--help` and quick commands stay fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import inspect
import os
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ..choices import Device, LongPrompt, StopRule, device_unavailable
from ..consoles import Console, make_console
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
from ..pathnames import json_text, shown
from ..paths import GivenPath, as_typed, refuse_unexpanded_home
from ..stop_signals import interrupted_by_stop_signals, interrupted_exit_code
from .closed_output import output_closed, quiet_when_output_closed, whole_writes

if TYPE_CHECKING:
    from ..releases import Release

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
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Database URL or SQLite file \\[env: PENGI_SEARCH_DB; default: index.db in the data dir]"
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
HiddenOption = Annotated[  # every command that walks folders (`pengi_search.scan`)
    bool,
    typer.Option(
        "--hidden",
        help="Walk folders into hidden files and folders too (names starting with '.'); AppleDouble '._*' files are "
        "never audio. A path given here is used, hidden or not.",
    ),
]
AUTO_FETCH_ENV = "PENGI_SEARCH_AUTO_FETCH"
YesOption = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="No model installed: download it without asking \\[env: PENGI_SEARCH_AUTO_FETCH=1]."
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
class ComputeOptions:
    """How a command that runs the model on audio computes: windows per batch, CPU threads, and `--fast`."""

    batch_size: BatchOption = None
    threads: ThreadsOption = None
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
    except Exception as err:
        if isinstance(err, BrokenPipeError) and output_closed():
            raise  # no failure of the command's: `handle_errors` ends it quietly
        if os.environ.get(DEBUG_ENV) or not isinstance(err, PengiSearchError | OSError | ValueError):
            raise
        fail(first_line(err), err.exit_code if isinstance(err, PengiSearchError) else EXIT_FAILED)


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


def fetches_model(command: F) -> F:
    """Give a command `--yes` and the first-use download: a model it needs but finds missing is offered.

    The offer comes when the command finds the model missing, so that mistakes in its inputs are reported first
    and commands that need no model for the library at hand (`query` on a sentence-transformers index) never ask.
    After the download the command runs again from the start: what it did before it needed the model (checking
    its inputs, scanning folders; `index` records that stopped run as failed, having indexed nothing) is repeated.
    """
    signature = inspect.signature(command, eval_str=True)
    yes = inspect.Parameter("yes", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=YesOption)
    parameters = [*signature.parameters.values(), yes]

    @functools.wraps(command)
    def wrapper(*args: Any, yes: bool = False, **kwargs: Any) -> Any:
        from ..model_dir import ModelNotFoundError, release_to_fetch

        try:
            return command(*args, **kwargs)
        except ModelNotFoundError:
            if release_to_fetch(kwargs.get("model")) is None:
                raise
        ensure_model(kwargs.get("model"), assume_yes=yes)
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {param.name: param.annotation for param in parameters}
    return wrapper  # type: ignore[return-value]


def ensure_model(spec: str | None, *, assume_yes: bool) -> None:
    """Install the release that `--model spec` (or the default) names when no model is found, with consent.

    In a terminal the person is told what would be downloaded and asked once; elsewhere only `--yes` or
    `PENGI_SEARCH_AUTO_FETCH=1` allow it, and offline mode never does. Refusals are one-line errors (exit 1).
    """
    from ..hub import offline_setting
    from ..paths import models_dir
    from ..releases import RELEASES

    name = refuse_blocked_install(spec)
    if name is None:
        return
    missing = f"the Pengi model {name} is not installed"
    if setting := offline_setting():
        fail(f"{missing} and {setting} forbids downloading it: `pengi-search model import PATH` installs a copy")
    hint = f"`pengi-search model fetch {name}` installs it"
    if not (assume_yes or os.environ.get(AUTO_FETCH_ENV, "").strip() == "1"):
        if not can_ask():
            fail(f"{missing}: {hint}, or pass --yes to fetch it now")
        err_console.print(f"{missing}. It can be downloaded now:", soft_wrap=True)
        err_console.print(release_details(RELEASES[name], models_dir() / name), markup=False, soft_wrap=True)
        if not _confirm("Download it now?"):
            fail(f"nothing was downloaded; {hint}")
    else:
        release = RELEASES[name]
        err_console.print(f"{missing}: fetching it ({release.approx_size}) from {release.url}", soft_wrap=True)
    from ..models import fetch_model

    target, _ = fetch_model(name, notify=warn)
    err_console.print(f"installed {target}", markup=False, soft_wrap=True)


def refuse_blocked_install(spec: str | None) -> str | None:
    """The release that would install the model `--model spec` (or the default) names but finds missing (None when
    one is found, or none would), refused as `paths.refuse_blocked_folder` says it when a file stands where the data
    folder should be: no download could land there, so fetching is no advice."""
    from ..model_dir import release_to_fetch
    from ..paths import models_dir, refuse_blocked_folder

    name = release_to_fetch(spec)
    if name is not None:
        refuse_blocked_folder(models_dir() / name)
    return name


def release_details(release: Release, target: Path) -> str:
    """What a download of `release` fetches, from where, under which terms, and where it goes."""
    from ..releases import RELEASE_LICENCE, TOKENIZERS

    hub_names = ", ".join(TOKENIZERS[key] for key in release.tokenizers)
    rows = {
        release.name: f"{release.summary}, {release.approx_size}",
        "from": release.url,
        "tokenizers": f"{hub_names}, from the Hugging Face hub (a few MB)",
        "licence": RELEASE_LICENCE,
        "into": str(target),
    }
    return "\n".join(f"  {label:<11} {text}" for label, text in rows.items())


def can_ask() -> bool:
    """Whether a person can answer a question: stdin and stderr are terminals (not a script, a pipe or CI)."""
    return sys.stdin is not None and sys.stdin.isatty() and err_console.is_terminal


def _confirm(question: str) -> bool:
    try:
        return typer.confirm(question, default=True, err=True)
    except typer.Abort:  # end of input or Ctrl-C at the prompt: no consent
        return False


def shown_path(path: str) -> str:
    """Paths below the current folder are shown relative to it (shorter tables), escaped where they are not
    UTF-8 (`pathnames.shown`); JSON keeps them absolute and as they are."""
    return shown(os.fspath(as_typed(path)))


def given_prompt(value: str) -> str:
    """A --prompt's parser: a blank one is refused. It asks the model nothing (a `-p "$UNSET"`), and its answers
    would be named by an empty string."""
    if not value.strip():
        raise typer.BadParameter('the prompt is empty; write what to ask, e.g. "this acoustic scene is"')
    return value


def check_output_file(output: Path, kind: str) -> None:
    """Refuse an --output file of `kind` ("CSV") that cannot be written, before the work rather than after it (and
    before a half-written copy is left beside it)."""
    folder = output.parent
    if output.is_dir():
        raise UsageError(output, f"a folder; --output takes the {kind} file's name")
    if not folder.is_dir():
        # `folder` itself or a part above it may be a file: name it so, not as a folder that is missing
        blocking = next((part for part in (folder, *folder.parents) if part.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise UsageError(output, f"cannot write the {kind}: {shown(os.fspath(blocking))} is a file, not a folder")
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
    return value


def given_path(value: str | os.PathLike[str]) -> GivenPath:
    """The parser of every other option and argument that takes a path (`--labels`, `--output`, a configuration;
    set on each by `cli.paths_as_typed`): the path, whose messages name it as typed (`GivenPath`: `./labels.txt`
    keeps its `./`), as every command names the files it is given. Empty, refused as `given_input` refuses it."""
    return GivenPath.typed(given_input(os.fspath(value)))


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
    sys.stdout.write(json_text(data, indent=None if line else 2) + "\n")
    if line:
        sys.stdout.flush()


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


def show_progress(quiet: bool, json_output: bool = False) -> bool:
    """Progress bars only for a person watching a terminal."""
    return not quiet and not json_output and err_console.is_terminal


def progress_bar(console: Console | None = None):
    """A transient progress bar on stderr (or `console`), each task counted in its unit (`progress.CountColumn`).
    Off where stderr is no terminal: it would show nothing there, and Rich ends a bar on such a stream with a blank
    line, which scripts keeping stderr would read as a message."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..progress import CountColumn

    console = console or err_console
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        CountColumn(),
        TextColumn(" {task.fields[files]}"),  # two spaces from the rate, as the rate from the count
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_interactive,
    )


class WindowProgress:
    """A run over files on a progress bar, counted in windows: windows done of all and per second, files done, time
    left (`describe`, `classify`, `similar`, and each pass of `index`).

    A file's number of windows is known once it is decoded; until every file is, the total is the known counts plus
    the files still to come at the mean so far (so the time left firms up as the run goes). A total known from the
    start (`windows`) is shown as it is.
    """

    def __init__(self, bar: Any, description: str, visible: bool, windows: int | None = None) -> None:
        from ..progress import Rate

        self.bar = bar
        self.task = bar.add_task(description, total=windows, unit="windows", rate=None, files="", visible=visible)
        self.windows = windows
        self.files = self.files_done = self.counted_files = self.counted_windows = self.windows_done = 0
        self.rate = Rate()

    def start(self, files: int) -> None:
        self.files = files
        self.rate.restart()
        self._show()

    def counted(self, windows: int) -> None:
        self.counted_files += 1
        self.counted_windows += windows
        self._show()

    def advance(self, files: int = 0, windows: int = 0) -> None:
        self.files_done += files
        self.windows_done += windows
        self._show()

    def _total(self) -> int | None:
        if self.windows is not None:
            return max(self.windows, self.windows_done)
        if not self.counted_files:
            return None
        mean = self.counted_windows / self.counted_files
        return max(self.counted_windows + round(mean * (self.files - self.counted_files)), self.windows_done)

    def _show(self) -> None:
        files = f"{self.files_done}/{self.files} files" if self.files else ""
        rate = self.rate.of(self.windows_done)
        self.bar.update(self.task, total=self._total(), completed=self.windows_done, rate=rate, files=files)


class FileProgress:
    """Files done of a known number, and per second, on a progress bar (`index` hashing the files that may be
    copies of others)."""

    def __init__(self, bar: Any, description: str, visible: bool, files: int) -> None:
        from ..progress import Rate

        self.bar = bar
        self.task = bar.add_task(description, total=files, unit="files", rate=None, files="", visible=visible)
        self.done = 0
        self.rate = Rate()

    def advance(self, files: int = 0, windows: int = 0) -> None:
        self.done += files
        self.bar.update(self.task, completed=self.done, rate=self.rate.of(self.done))


class IndexProgress:
    """An indexing run's progress on a Rich bar (`index`, and `eval` indexing its set): the files hashed to find
    identical ones ("hashing", in files), then in windows, as `WindowProgress` counts them: pass 1 ("audio
    embeddings") the windows of the files to index, with files done beside; pass 2 ("captions") the windows waiting
    for captions."""

    def __init__(self, bar: Any, visible: bool) -> None:
        self.bar = bar
        self.visible = visible
        self.current: WindowProgress | FileProgress | None = None

    def start_hashing(self, files: int) -> None:
        self._hide()
        self.current = FileProgress(self.bar, "hashing", self.visible, files)

    def start(self, files: int) -> None:
        self._begin("audio embeddings").start(files)

    def counted(self, windows: int) -> None:
        assert isinstance(self.current, WindowProgress)
        self.current.counted(windows)

    def start_captions(self, windows: int | None) -> None:
        self._begin("captions", windows)

    def _begin(self, label: str, windows: int | None = None) -> WindowProgress:
        self._hide()
        self.current = WindowProgress(self.bar, label, self.visible, windows)
        return self.current

    def _hide(self) -> None:
        """The bar of the step before goes: one bar at a time."""
        if self.current is not None:
            self.bar.update(self.current.task, visible=False)

    def advance(self, files: int = 0, windows: int = 0) -> None:
        assert self.current is not None
        self.current.advance(files, windows)

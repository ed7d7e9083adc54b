"""The `pengi-search` command line. Each command lives in the module named for what it does."""

from __future__ import annotations

import inspect
import logging
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, get_args, get_origin

import typer

from . import classify, describe, doctor, index, library, model, search, serve, train
from .closed_output import quiet_when_output_closed, whole_writes
from .common import fail, given_input, given_path, output_failures_said
from .eval import app as eval_app
from .help_text import App, Group

# Typer exports no UsageError. BadParameter derives from the UsageError of the Click that Typer runs on (its own copy
# since Typer 0.2x): the base of every mistake the option parser catches.
ParserUsageError: type[Exception] = typer.BadParameter.__base__


class _OneLineUsageErrors(Group):
    """The root command. A mistake the option parser catches (an unknown option or command, a missing argument, a
    value out of range) is one line on stderr, like every other error of this tool, with where to read the usage;
    Typer would draw a box under the usage. Exit code 2, as before.

    The option parser writes that line, and `--help`, before any command runs: into a pipe nobody reads they end
    the process quietly with 141, as a command's output does (`closed_output`); Typer exited with 1. Into an output
    that cannot take them (`> /dev/full`) they are one line on stderr and exit code 1, not a traceback."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        _plain_value_names(self)
        _paths_as_typed(self)
        with whole_writes(), quiet_when_output_closed(), output_failures_said():
            try:  # the root's own options (and no command at all)
                return super().make_context(info_name, args, parent, **extra)
            except ParserUsageError as err:
                _usage_error(err, args)

    def invoke(self, ctx: Any) -> Any:
        tokens = [*ctx.args]  # the command and its arguments: Click empties the list as it hands them on
        with whole_writes(), quiet_when_output_closed(), output_failures_said():
            try:  # every subcommand's arguments are parsed in here
                return super().invoke(ctx)
            except ParserUsageError as err:
                if err.ctx is None and ctx.invoked_subcommand:  # the option parser's own errors carry no context
                    err.ctx = _bare_context(ctx, ctx.invoked_subcommand)  # for the hint: which --help to read
                _usage_error(err, tokens)


def _bare_context(parent: Any, name: str) -> Any:
    """A context of `parent`'s subcommand `name`, with no arguments parsed: its command path is the hint's."""
    command = parent.command.get_command(parent, name)
    return command.context_class(command, info_name=name, parent=parent)


_VALUE_NAMES = {int: "<int>", float: "<float>", str: "<text>", Path: "<path>"}


def _plain_value_names(command: Any) -> None:
    """What `--help` shows an option takes, in a user's words: Typer names it as Python would (`<list[str]>` for a
    repeatable option, `<int range>`) and shows a flag as taking a `<bool>`, which it does not (`--json true` is an
    error). Choices are listed (`<file|window>`), repeatable or not; ranges are still shown beside (`<int> [x>=1]`)."""
    # --help itself is made apart from the params, once per command (a context without arguments makes it here).
    help_option = command.get_help_option(command.context_class(command))
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if param.param_type_name == "argument" and param.metavar is None:
            param.metavar = _argument_name(param)
        if param.param_type_name != "option" or param.metavar is not None:
            continue
        if param.is_flag:
            param.metavar = ""
            continue
        annotation = param.type_descriptor.annotation
        element = get_args(annotation)[0] if get_origin(annotation) is list else annotation
        if isinstance(element, type) and issubclass(element, Enum):
            param.metavar = f"<{'|'.join(choice.value for choice in element)}>"
        else:
            param.metavar = _VALUE_NAMES.get(element)  # None: Typer's own
    for sub in getattr(command, "commands", {}).values():
        _plain_value_names(sub)


def _paths_as_typed(command: Any) -> None:
    """Give every option and argument that takes a `Path` (one, optional or repeated) the parser `given_path`,
    whose value keeps the path's text as typed for messages (Typer's plain Path says `./labels.txt` as
    `labels.txt`); set here, once for all commands, so that no option is missed. Audio inputs are text already
    (`given_input`)."""
    for param in command.params:
        annotation = param.type_descriptor.annotation
        element = get_args(annotation)[0] if get_origin(annotation) is list else annotation
        if element is Path and param.type_descriptor.parameter_info.parser is None:
            param.type_descriptor.parameter_info.parser = given_path
    for sub in getattr(command, "commands", {}).values():
        _paths_as_typed(sub)


def _argument_name(argument: Any) -> str:
    """An argument as a usage line names it, in capitals as man pages do (`{TEXT}`, `[QUESTION]`); any number of files
    and folders (kept as typed by `given_input`) as `PATH`, which Typer follows with `...` (`{PATH}...`), as the
    README and the messages write it.

    Typer named them as in Python (`{files}...`). Its Arguments panel still shows the Python type beside the name
    (`PATH  <list[str]>`): it shows an argument's type whatever the argument is named (typer#1410), from methods
    of its own argument class, which a command cannot choose.
    """
    if argument.nargs != 1 and argument.type_descriptor.parameter_info.parser is given_input:
        return "PATH"
    return argument.name.upper()


def _usage_error(err: Any, tokens: list[str]) -> NoReturn:
    """Say the parser's mistake in one line; `tokens`: the command line it parsed (for a file named like an option)."""
    if not _says_usage_errors():
        raise typer.Exit(0)
    # Typer tells this one by its name too: its "message" is the help, which Typer has drawn on a terminal, and which
    # comes as text elsewhere (`help_text`) for us to write.
    if type(err).__name__ == "NoArgsIsHelpError":
        if help_text := err.format_message():
            typer.echo(help_text)
    else:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        # Typer checks values with pydantic, whose messages start "Value error, " (a Python class name, not words).
        message = " ".join(err.format_message().replace("Value error, ", "").split())
        fail(message + _dashed_file_hint(err, tokens) + hint, err.exit_code)
    raise typer.Exit(err.exit_code)


def _says_usage_errors() -> bool:
    """Under torchrun every process meets the option parser's mistake, before the processes connect: the first
    process of each machine says it, the others end well, saying nothing (`torchrun_env.said_once_per_machine`). An
    environment that cannot be torchrun's does not keep any process quiet: each says the mistake."""
    from ..errors import UsageError
    from ..torchrun_env import ends_after_the_machines_others, first_on_machine

    try:
        first = first_on_machine()
    except UsageError:
        return True
    if first:
        ends_after_the_machines_others()
    return first


def _dashed_file_hint(err: Any, tokens: list[str]) -> str:
    """For a file whose name starts with `-`, taken for options (`describe -take1.wav`: "No such option: -t"), how to
    give it as a file, as `rm` and `ls` are given one; else nothing."""
    if type(err).__name__ != "NoSuchOption":
        return ""
    given = tokens[: tokens.index("--")] if "--" in tokens else tokens
    for token in given:
        if len(token) > 1 and token.startswith("-") and os.path.lexists(token):
            return f"; {token} is a file here: give it as ./{token}, or after --"
    return ""


app = App(
    cls=_OneLineUsageErrors,
    name="pengi-search",
    help="Search, describe and classify sound libraries with Pengi, the audio language model.",
    # What a script branches on, where it looks first (the README's "Exit codes" table says more).
    epilog="Exit codes: 0 done (a search with no results too); 1 the command could not do its work; 2 bad usage or "
    "input, nothing done; 3 done, but some audio could not be decoded; 129 the terminal closed (SIGHUP); 130 "
    "Ctrl-C; 141 the output's reader went away; 143 SIGTERM. --json writes only JSON on stdout (index --watch "
    "--json: a line per run); messages go to stderr.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _show_version(asked: bool) -> None:
    if asked:
        from .. import __version__

        typer.echo(f"pengi-search {__version__}")
        raise typer.Exit()


class _LibraryMessages(logging.Formatter):
    """A library's warning (a prompt cut to 40 tokens, a damaged FAISS file rebuilt) as the command's own are
    written, `warning: message`; logging's fallback printed the bare message."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


@app.callback()
def _every_command(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    from ..hub import OFFLINE_ENV, offline_setting

    if logging.lastResort is not None:  # what logs warnings when nothing configured logging (a command line)
        logging.lastResort.setFormatter(_LibraryMessages())

    setting = offline_setting()
    if setting and setting.startswith(OFFLINE_ENV):
        # The Hugging Face libraries (tokenizers, sentence-transformers) read their own switch, at import.
        os.environ["HF_HUB_OFFLINE"] = "1"


app.command()(describe.describe)
app.command()(describe.ask)
app.add_typer(model.app, name="model")
app.command()(search.query)
app.command()(search.similar)
app.command()(classify.classify)
app.command()(index.index)
app.command("rebuild-index")(library.rebuild_index)
app.command()(library.tune)
app.command()(library.stats)
app.command()(library.remove)
app.command()(library.export)
app.add_typer(train.app, name="train")
app.add_typer(eval_app, name="eval")
app.command()(serve.serve)
app.command()(doctor.doctor)


def _flowing_help(group: typer.Typer) -> None:
    """Each paragraph of a command's docstring as one line, for Rich to wrap to the terminal: Typer keeps the
    source's line breaks after the first paragraph, which left ragged lines at every width but the source's."""
    for info in group.registered_commands:
        text = info.help or inspect.getdoc(info.callback)
        if text:
            info.help = "\n\n".join(" ".join(paragraph.split("\n")) for paragraph in text.split("\n\n"))
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _flowing_help(sub.typer_instance)


_flowing_help(app)

"""What `--help` shows: every help text as written (no bracket taken for markup), the same words for the same
option wherever it means the same."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from rich.text import Text
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.cli.common import ComputeOptions, ExactComputeOptions, UsingOptions, given_input, options_from
from pengi_search.cli.search import ResultOptions

ROOT = typer.main.get_command(app)


def _commands(command: Any, name: str = "pengi-search") -> Iterator[tuple[str, Any]]:
    yield name, command
    if hasattr(command, "commands"):  # a group (Typer brings its own Click: no isinstance)
        for sub_name, sub in command.commands.items():
            yield from _commands(sub, f"{name} {sub_name}")


COMMANDS = dict(_commands(ROOT))


def _option(command: str, flag: str) -> Any:
    return next(param for param in COMMANDS[command].params if flag in param.opts)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_text_is_shown_as_written(name):
    """Rich reads `[default: x]` as a style tag and drops it; written `\\[default: x]`, it shows."""
    command = COMMANDS[name]
    texts = [command.help or ""] + [getattr(param, "help", None) or "" for param in command.params]
    for text in texts:
        assert Text.from_markup(text).plain == text.replace("\\[", "["), f"{name}: {text!r}"


@pytest.mark.parametrize("name", COMMANDS)
def test_each_paragraph_of_a_command_help_is_one_line(name):
    """Rich wraps each paragraph to the terminal; a line break kept from the docstring would leave a ragged line."""
    for paragraph in (COMMANDS[name].help or "").split("\n\n"):
        assert "\n" not in paragraph, f"{name}: {paragraph!r}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_off_a_terminal_has_no_line_ending_in_spaces(name):
    """Typer's console padded each line to its width (`--help > help.txt`); every command is made by `help_text.App`,
    whose help off a terminal comes back as text, written as every other output."""
    result = CliRunner().invoke(app, [*name.split()[1:], "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    assert [line for line in result.stdout.splitlines() if line != line.rstrip()] == []


def test_eval_classify_batches_as_classify_does():
    """`eval classify` runs classify's pipeline, so its --batch-size means what classify's means."""
    assert (
        _option("pengi-search eval classify", "--batch-size").help
        == _option("pengi-search classify", "--batch-size").help
    )


def test_an_option_group_that_extends_another_shows_the_others_options_first():
    """`ComputeOptions` is `ExactComputeOptions` with --fast: a command taking it lists the inherited options first,
    as written there (so `classify` and `eval classify` show --batch-size and --threads alike), and gets one
    `ComputeOptions` holding what was typed."""
    received: list[ComputeOptions] = []

    @options_from(ComputeOptions, "compute")
    def command(*, compute: ComputeOptions) -> None:
        received.append(compute)

    one = typer.Typer(add_completion=False)
    one.command()(command)
    shown = [param.name for param in typer.main.get_command(one).params]
    assert shown == [field.name for field in dataclasses.fields(ExactComputeOptions)] + ["fast"]
    result = CliRunner().invoke(one, ["--threads", "2", "--fast"])
    assert result.exit_code == 0, result.output
    assert received == [ComputeOptions(batch_size=None, threads=2, fast=True)]


@pytest.mark.parametrize("command", ["pengi-search query", "pengi-search similar"])
def test_a_search_lists_the_options_of_its_results_before_the_library_and_model(command):
    """`SearchOptions` takes the fields of two groups: `ResultOptions`' come first (--limit ... --max-duration), then
    `UsingOptions`' (--db, --model, --device), as the search commands listed them before the groups were shared."""
    grouped = [field.name for group in (ResultOptions, UsingOptions) for field in dataclasses.fields(group)]
    options = [param.name for param in COMMANDS[command].params if param.param_type_name == "option"]
    assert options[: len(grouped)] == grouped


@pytest.mark.parametrize("command", ["pengi-search classify", "pengi-search eval classify"])
def test_each_option_only_one_method_reads_says_which(command):
    """--method loglik refuses the caption decoding options (--beam, --max-len, --stop), whose help named no method
    where --prompt's said loglik; describe's, which always decodes captions, name none."""
    for flag in ("--text-embedder", "--beam", "--max-len", "--stop"):
        assert _option(command, flag).help.startswith("text: "), flag
    for flag in ("--prompt", "--loglik-score"):
        assert _option(command, flag).help.startswith("loglik: "), flag
    assert _option("pengi-search describe", "--beam").help.startswith("Beam width")


@pytest.mark.parametrize("name", COMMANDS)
def test_an_option_read_from_the_environment_says_so_in_one_style(name):
    """`[env: NAME]` in the help text, as --db and --model write it, not Typer's own `[env var: NAME]` beside it."""
    for param in COMMANDS[name].params:
        if getattr(param, "envvar", None):
            assert not param.show_envvar and f"[env: {param.envvar}" in param.help, f"{name} {param.opts}"


@pytest.mark.parametrize("name", [name for name, command in COMMANDS.items() if not hasattr(command, "commands")])
def test_options_show_the_value_a_user_types_and_flags_none(name):
    """Typer showed `--json <bool>` (a flag takes no value: `--json true` is an error), `--prompt <list[str]>` and
    `--beam <int range>`: Python's names for the types, not what is typed."""
    result = CliRunner().invoke(app, [*name.split()[1:], "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for line in result.output.splitlines():
        if line.lstrip("│ *").startswith("-"):  # an option's row, a required one's too (marked *)
            assert "<bool>" not in line and "list[" not in line and " range>" not in line, line


def test_a_numbers_option_shows_its_type_and_range():
    result = CliRunner().invoke(app, ["describe", "--help"], env={"COLUMNS": "200"})
    assert re.search(r"--beam +<int> \[x>=1\]", result.output), result.output


def _usage_arguments(name: str) -> list[str]:
    result = CliRunner().invoke(app, [*name.split()[1:], "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    return usage.split("[OPTIONS]", 1)[1].split()


ARGUMENTS = {
    name: [param for param in command.params if param.param_type_name == "argument"]
    for name, command in COMMANDS.items()
}


@pytest.mark.parametrize("name", [name for name, arguments in ARGUMENTS.items() if arguments])
def test_usage_names_arguments_in_capitals_and_files_and_folders_as_path(name):
    """Typer wrote `describe [OPTIONS] {files}...`, Python's names; the README and the messages write `PATH...`.
    (Typer still shows the Python type beside an argument in its panel, `<list[str]>`: it cannot be named.)"""
    shown = _usage_arguments(name)
    assert len(shown) == len(ARGUMENTS[name])
    for param, text in zip(ARGUMENTS[name], shown, strict=True):
        several_paths = param.nargs != 1 and param.type_descriptor.parameter_info.parser is given_input
        expected = "PATH" if several_paths else param.name.upper()
        ends = "{}" if param.required else "[]"
        assert text == ends[0] + expected + ends[1] + "..." * (param.nargs != 1), (name, param.name)


def test_the_file_commands_usage_reads_as_the_readme_writes_it():
    assert _usage_arguments("pengi-search describe") == ["{PATH}..."]
    assert _usage_arguments("pengi-search ask") == ["[PATH]...", "[QUESTION]"]
    assert _usage_arguments("pengi-search index") == ["{PATH}..."]
    assert _usage_arguments("pengi-search eval compare") == ["{FIRST}", "{SECOND}"]


def test_version_is_shown_and_nothing_else_runs():
    from pengi_search import __version__

    result = CliRunner().invoke(app, ["--version", "index", "/no/such/folder"])
    assert result.exit_code == 0 and result.output == f"pengi-search {__version__}\n"


def test_serve_help_and_the_readme_say_one_thing_of_its_folders_and_of_its_upload_limits_unit():
    """`--root`'s default is the same true sentence in both (the folder that held the file, not the folder given to
    `index`); `--max-upload-mb` counts the MiB that the server's messages name."""
    from .test_readme import README

    readme = " ".join(README.read_text(encoding="utf-8").split())
    default = "default: the folder that held each file when it was indexed"
    assert default in _option("pengi-search serve", "--root").help and default in readme
    assert "in MiB (2^20 bytes" in _option("pengi-search serve", "--max-upload-mb").help
    assert "(`--max-upload-mb`, 64, in MiB of 2^20 bytes" in readme


def test_the_root_help_lists_every_exit_code_of_the_readme_for_scripts():
    """A script's author reads `pengi-search --help` before the README: each code of its "Exit codes" table is
    there, with what --json puts on stdout."""
    from .test_readme import README

    table = README.read_text(encoding="utf-8").split("## Exit codes and environment", 1)[1].split("\n\n", 2)[1]
    codes = re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)
    assert codes == ["0", "1", "2", "3", "129", "130", "141", "143"]
    shown = " ".join(CliRunner().invoke(app, ["--help"]).stdout.split())
    said = re.search(r"Exit codes: (.*)", shown)
    assert said is not None and re.findall(r"\b(\d+) ", said[1])[: len(codes)] == codes
    assert "--json writes only JSON on stdout" in said[1]

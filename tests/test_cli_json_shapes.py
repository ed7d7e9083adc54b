"""What `--json` prints, as each command's `--help` says it: the shapes differ (`describe` always a list, `ask` an
object for one file, `index` an object), so a script's author reads the shape there before parsing it. Within the
shapes, one name for each thing across all commands (README, "JSON output"; `json_conventions`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.cli.common import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL
from pengi_search.evaluation.report import write_report

from .indexing import write_tone
from .json_conventions import breaches
from .search_library import index_folder
from .test_cli_help import COMMANDS
from .test_eval import retrieval_report

# The words every --json help starts with, and what `json.loads` gives for them.
SHAPES = {"a list": list, "an object": dict}
SHAPE_WORDS = re.compile(r"JSON on stdout: (a list|an object)\b")
HELP_FIELDS = re.compile(r"\{([a-z_]+(?:, [a-z_]+)*)\}")  # the fields a help lists: {path, duration_s, ...}


def _json_help(command: Any) -> str | None:  # a Click command (Typer brings its own Click: no annotation)
    return next((param.help for param in command.params if "--json" in param.opts), None)


JSON_HELPS = {name: text for name, command in COMMANDS.items() if (text := _json_help(command)) is not None}


@dataclass(frozen=True)
class Inputs:
    """What the tiny cases run on: a captioned library and a tiny model, one short tone, files for eval."""

    db: str
    model: Path
    tone: Path
    folder: Path  # holding `tone` only
    broken: Path  # a folder holding a file that does not decode and a copy of `tone`
    labels: Path
    truth: Path
    out: Path
    removable_db: str  # a library of its own, so that `remove` leaves the shared one whole
    reports: tuple[Path, Path]


def _quick(inputs: Inputs) -> list[object]:
    return ["--model", inputs.model, "--device", "cpu", "--beam", 1, "--max-len", 2]


# One cheap invocation of each command with --json: the help's first shape is what it gives for that case.
CASES: dict[str, Callable[[Inputs], list[object]]] = {
    "pengi-search describe": lambda i: [i.tone, *_quick(i)],
    "pengi-search ask": lambda i: [i.tone, "is it loud?", *_quick(i)],
    "pengi-search classify": lambda i: [i.tone, "-l", i.labels, *_quick(i)],
    "pengi-search query": lambda i: ["a dog barks", "--db", i.db, "--model", i.model],
    "pengi-search similar": lambda i: [i.tone, "--db", i.db, "--model", i.model],
    "pengi-search index": lambda i: [i.folder, "--db", i.out / "index.db", "--model", i.model, "--captions", "later"],
    "pengi-search rebuild-index": lambda i: ["--db", i.db],
    "pengi-search tune": lambda i: ["--db", i.db],
    "pengi-search stats": lambda i: ["--db", i.db],
    "pengi-search remove": lambda i: [i.folder, "--db", i.removable_db],
    "pengi-search model info": lambda i: ["--model", i.model],
    "pengi-search doctor": lambda i: ["--db", i.db, "--model", i.model],
    "pengi-search eval classify": lambda i: [i.folder, "--truth", i.truth, "-o", i.out / "report", *_quick(i)],
    "pengi-search eval compare": lambda i: list(i.reports),
}
# Too slow for a check of the shape: they index a captioned set first. They print the report as `eval classify`.
NOT_RUN = {"pengi-search eval retrieval", "pengi-search eval caption"}
# The commands that meet files, on a folder where one does not decode (exit code 3): what they print for it.
BROKEN_CASES: dict[str, Callable[[Inputs], list[object]]] = {
    "pengi-search describe": lambda i: [i.broken, *_quick(i)],
    "pengi-search ask": lambda i: [i.broken / "broken.wav", "is it loud?", *_quick(i)],
    "pengi-search classify": lambda i: [i.broken, "-l", i.labels, *_quick(i)],
    "pengi-search similar": lambda i: [i.broken, "--db", i.db, "--model", i.model],
    "pengi-search index": lambda i: [i.broken, "--db", i.out / "broken.db", "--model", i.model, "--captions", "later"],
    "pengi-search eval classify": lambda i: [i.broken, "--truth", i.truth, "-o", i.out / "broken", *_quick(i)],
}
# Run after BROKEN_CASES, on the library that `index` made of the broken folder: its failed file, as each reads it.
AFTER_BROKEN: dict[str, list[object]] = {"pengi-search stats": ["--json"], "pengi-search export": []}


@dataclass(frozen=True)
class Printed:
    """What a command printed on stdout, parsed (JSON lines: a list of them), and its exit code."""

    exit_code: int
    data: Any
    output: str


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, captions, tiny_model_dir) -> Inputs:
    root = tmp_path_factory.mktemp("json-shapes")
    tone = write_tone(root / "clips" / "tone.wav", 1.0)
    (broken := root / "broken").mkdir()
    (broken / "broken.wav").write_bytes(b"RIFF, but no audio in it")
    write_tone(broken / "tone.wav", 1.0)
    removable_db = str(root / "removable.db")
    index_folder(removable_db, root / "clips", tiny_model_dir)
    (labels := root / "labels.txt").write_text("a tone\nrain\n")
    (truth := root / "truth.csv").write_text("file,label\ntone.wav,a tone\n")
    reports = (root / "base", root / "tuned")
    for folder, r1 in zip(reports, (0.25, 0.5), strict=True):
        write_report(retrieval_report(r1), folder)
    return Inputs(captions.db, tiny_model_dir, tone, tone.parent, broken, labels, truth, root, removable_db, reports)


def _run(args: list[object]) -> Printed:
    result = CliRunner().invoke(app, list(map(str, args)))
    try:
        data = json.loads(result.stdout)
    except ValueError:  # JSON lines (`export`)
        data = [json.loads(line) for line in result.stdout.splitlines()]
    return Printed(result.exit_code, data, result.output)


@pytest.fixture(scope="module")
def printed(inputs) -> dict[str, Printed]:
    """Each case's output, run once for all the checks: `NAME` for CASES, `NAME (broken)` for BROKEN_CASES."""
    runs = {name: _run([*name.split()[1:], *make(inputs), "--json"]) for name, make in CASES.items()}
    for name, make in BROKEN_CASES.items():
        runs[f"{name} (broken)"] = _run([*name.split()[1:], *make(inputs), "--json"])
    for name, args in AFTER_BROKEN.items():
        runs[f"{name} (broken)"] = _run([*name.split()[1:], *args, "--db", inputs.out / "broken.db"])
    return runs


@pytest.mark.parametrize("name", sorted(JSON_HELPS))
def test_every_json_help_starts_with_the_shape_it_prints(name):
    """Not "Machine-readable JSON" everywhere: "a list ..." or "an object ...", then what it holds."""
    assert SHAPE_WORDS.match(JSON_HELPS[name]), f"{name}: {JSON_HELPS[name]!r}"


def test_every_command_with_json_has_a_case_that_checks_its_shape():
    assert set(JSON_HELPS) == set(CASES) | NOT_RUN


@pytest.mark.parametrize("name", sorted(CASES))
def test_what_json_prints_is_the_shape_its_help_names(name, printed):
    result = printed[name]
    healthy_or_not = (EXIT_OK, EXIT_FAILED) if name == "pengi-search doctor" else (EXIT_OK,)
    assert result.exit_code in healthy_or_not, result.output
    said = SHAPE_WORDS.match(JSON_HELPS[name])
    assert said is not None
    assert type(result.data) is SHAPES[said[1]], (name, result.output[:200])


@pytest.mark.parametrize("name", sorted(BROKEN_CASES))
def test_a_file_that_does_not_decode_is_reported_in_the_shape_its_help_names(name, printed):
    result = printed[f"{name} (broken)"]
    assert result.exit_code == EXIT_PARTIAL, result.output
    said = SHAPE_WORDS.match(JSON_HELPS[name])
    assert said is not None and type(result.data) is SHAPES[said[1]], (name, result.output[:200])


def test_every_command_names_each_thing_one_way(printed):
    """`path` for a file, `error` for why it failed, `windows` a list and `window_count` a number, null for what is
    not known, times in ISO 8601 (UTC), seconds to 3 decimals and scores to 4: in every command's output."""
    found = {name: breaches(result.data) for name, result in printed.items()}
    assert {name: where for name, where in found.items() if where} == {}


def test_a_file_that_does_not_decode_has_an_error_and_no_duration_in_every_command(printed, inputs):
    failed = str(inputs.broken / "broken.wav")
    described = printed["pengi-search ask (broken)"].data
    assert (described["path"], described["duration_s"], described["windows"]) == (failed, None, [])
    for name in ("describe", "classify", "similar", "index", "eval classify", "stats", "export"):
        data = printed[f"pengi-search {name} (broken)"].data
        assert [failed] == [item["path"] for item in _failed_files(data)], name


def _failed_files(data: Any) -> list[dict[str, Any]]:
    """Every object in `data` that names a file and says why it failed."""
    if isinstance(data, list):
        return [item for value in data for item in _failed_files(value)]
    if not isinstance(data, dict):
        return []
    own = [data] if isinstance(data.get("path"), str) and isinstance(data.get("error"), str) else []
    return own + [item for value in data.values() for item in _failed_files(value)]


@pytest.mark.parametrize("name", sorted(name for name in JSON_HELPS if HELP_FIELDS.search(JSON_HELPS[name])))
def test_every_field_a_help_names_is_printed(name, printed):
    """The help's `{a, b}` lists are what the command prints: a key renamed in the output is renamed there too."""
    named = {field for fields in HELP_FIELDS.findall(JSON_HELPS[name]) for field in fields.split(", ")}
    keys = set().union(*(_keys(result.data) for case, result in printed.items() if case.startswith(name)))
    assert named - keys == set()


def _keys(data: Any) -> set[str]:
    if isinstance(data, list):
        return set().union(*map(_keys, data))
    if isinstance(data, dict):
        return set(data).union(*map(_keys, data.values()))
    return set()

"""What `--json` prints, as each command's `--help` says it: the shapes differ (`describe` always a list, `ask` an
object for one file, `index` an object), so a script's author reads the shape there before parsing it."""

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
from pengi_search.cli.common import EXIT_FAILED, EXIT_OK
from pengi_search.evaluation.report import write_report

from .indexing import write_tone
from .search_library import index_folder
from .test_cli_help import COMMANDS
from .test_eval import retrieval_report

# The words every --json help starts with, and what `json.loads` gives for them.
SHAPES = {"a list": list, "an object": dict}
SHAPE_WORDS = re.compile(r"JSON on stdout: (a list|an object)\b")


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
    "pengi-search stats": lambda i: ["--db", i.db],
    "pengi-search remove": lambda i: [i.folder, "--db", i.removable_db],
    "pengi-search model info": lambda i: ["--model", i.model],
    "pengi-search doctor": lambda i: ["--db", i.db, "--model", i.model],
    "pengi-search eval classify": lambda i: [i.folder, "--truth", i.truth, "-o", i.out / "report", *_quick(i)],
    "pengi-search eval compare": lambda i: list(i.reports),
}
# Too slow for a check of the shape: they index a captioned set first. They print the report as `eval classify`.
NOT_RUN = {"pengi-search eval retrieval", "pengi-search eval caption"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, captions, tiny_model_dir) -> Inputs:
    root = tmp_path_factory.mktemp("json-shapes")
    tone = write_tone(root / "clips" / "tone.wav", 1.0)
    removable_db = str(root / "removable.db")
    index_folder(removable_db, root / "clips", tiny_model_dir)
    (labels := root / "labels.txt").write_text("a tone\nrain\n")
    (truth := root / "truth.csv").write_text("file,label\ntone.wav,a tone\n")
    reports = (root / "base", root / "tuned")
    for folder, r1 in zip(reports, (0.25, 0.5), strict=True):
        write_report(retrieval_report(r1), folder)
    return Inputs(captions.db, tiny_model_dir, tone, tone.parent, labels, truth, root, removable_db, reports)


@pytest.mark.parametrize("name", sorted(JSON_HELPS))
def test_every_json_help_starts_with_the_shape_it_prints(name):
    """Not "Machine-readable JSON" everywhere: "a list ..." or "an object ...", then what it holds."""
    assert SHAPE_WORDS.match(JSON_HELPS[name]), f"{name}: {JSON_HELPS[name]!r}"


def test_every_command_with_json_has_a_case_that_checks_its_shape():
    assert set(JSON_HELPS) == set(CASES) | NOT_RUN


@pytest.mark.parametrize("name", sorted(CASES))
def test_what_json_prints_is_the_shape_its_help_names(name, inputs):
    result = CliRunner().invoke(app, [*name.split()[1:], *map(str, CASES[name](inputs)), "--json"])
    healthy_or_not = (EXIT_OK, EXIT_FAILED) if name == "pengi-search doctor" else (EXIT_OK,)
    assert result.exit_code in healthy_or_not, result.output
    said = SHAPE_WORDS.match(JSON_HELPS[name])
    assert said is not None
    assert type(json.loads(result.stdout)) is SHAPES[said[1]], (name, result.stdout[:200])

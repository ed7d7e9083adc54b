"""Names, labels and captions are printed exactly as written, by every command.

Rich reads markup (`[bold]`, and a stray `[/]` ends the command with a MarkupError) and emoji codes (`:fire:`
becomes a flame) in what it prints, and escaping markup doubles a trailing backslash. A user's text reaches Rich as
`Text` (or, unstyled, with markup off), and no console reads emoji codes. (`query`'s table:
tests/test_hits_table.py.)
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from pengi_search.classify import Prediction
from pengi_search.cli import app
from pengi_search.cli import classify as cli_classify
from pengi_search.cli import describe as cli_describe
from pengi_search.cli import eval as cli_eval
from pengi_search.cli import search as cli_search
from pengi_search.cli.common import EXIT_PARTIAL
from pengi_search.consoles import make_console
from pengi_search.messages import print_error, print_interrupted, print_problem, print_skipped, print_warning
from pengi_search.similar import SimilarResult
from trainer.data import Example
from trainer.dry_run import DryRunReport, ManifestCheck, print_dry_run
from trainer.reporting import TrainingProgress

from .indexing import write_tone

# An emoji code, markup, a stray closing tag, a backslash before a bracket, a trailing backslash: each as it is.
NAMES = [":fire:", "[bold]loud[/bold]", "a [/] b", "C:\\sounds\\[x]", "ends in \\"]
# All of them in one path, for the commands run whole: a folder `...x[` holding a file `] ...` (no name holds a `/`).
NAME = ":fire: [bold]x[/] C:\\[y] z\\"

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> Console:
    """The command line's stdout console, writing to a string (as into a file)."""
    console = make_console(highlight=False)
    console.file = io.StringIO()
    for module in (cli_describe, cli_search, cli_classify, cli_eval):
        monkeypatch.setattr(module, "out_console", console)
    return console


def lines(console: Console) -> list[str]:
    return console.file.getvalue().splitlines()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", NAMES)
def test_errors_warnings_and_skipped_inputs_name_it_as_written(name):
    """On any console: the trainer's tests hand their own."""
    console = Console(file=io.StringIO())
    print_error(console, name)
    print_warning(console, name)
    print_skipped(console, name, name)
    print_problem(console, "failed", name, name)
    print_interrupted(console, name)
    assert lines(console) == [
        f"error: {name}",
        f"warning: {name}",
        f"skipped {name}: {name}",
        f"failed {name}: {name}",
        f"interrupted: {name}",
    ]


@pytest.mark.parametrize("asked", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_describe_and_ask_show_the_file_and_the_answers_as_written(console, name, asked):
    window = {"start_s": 0.0, "end_s": 7.0, "answers": {name: name}}
    result = cli_describe.FileResult(path=f"/lib/{name}", duration_s=7.0, windows=[window])
    cli_describe._print_text([result], show_keys=not asked)
    answer = name if asked else f"{name}: {name}"
    assert lines(console) == [f"/lib/{name}  (7.0 s)", f"     0.0-7.0s  {answer}"]


@pytest.mark.parametrize("name", NAMES)
def test_similar_heads_each_query_files_hits_with_its_name_as_written(console, name):
    results = [SimilarResult(f"/q/{name}", [], "index"), SimilarResult("/q/other.wav", [], "index")]
    cli_search._show_similar(results, json_output=False, one_file=False)
    assert lines(console)[0] == f"/q/{name}"


def test_similar_of_several_files_leaves_a_blank_line_before_each_next_files_name(console):
    results = [SimilarResult(f"/q/{name}.wav", [], "index") for name in ("a", "b", "c")]
    results.insert(1, SimilarResult("/q/broken.wav", [], None, "not audio"))  # said on stderr as it happened
    cli_search._show_similar(results, json_output=False, one_file=False)
    assert lines(console) == ["/q/a.wav", "", "/q/b.wav", "", "/q/c.wav"]


@pytest.mark.parametrize("name", NAMES)
def test_classify_shows_the_file_and_the_labels_as_written(console, name):
    cli_classify._print_ranked(Prediction(f"/lib/{name}", [(name, 0.75)], 1, "decoded"), top=5)
    per_class = {name: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}}
    metrics = {"accuracy": 1.0, "correct": 1, "files": 1, "per_class": per_class, "unmatched": []}
    cli_classify._print_metrics(metrics, console)
    shown = lines(console)
    assert shown[0] == f"/lib/{name}  (1 window)"
    assert shown[2].split()[0] == "1" and " ".join(shown[2].split()[1:-1]) == name  # rank, label, score
    assert " ".join(shown[-1].split()[:-4]) == name  # label, precision, recall, f1, support


@pytest.mark.parametrize("name", NAMES)
def test_eval_compare_names_the_reports_as_written(console, name):
    """Its columns are named after the reports' folders."""
    comparison = {
        "reports": {name: {}, "b": {}},
        "setup_differences": {"labels": [name, "b"]},
        "rows": [{"metric": "accuracy", "a": 0.5, "b": 0.75, "delta": 0.25}],
    }
    cli_eval._print_comparison(comparison)
    shown = lines(console)
    assert shown[0] == f"labels: {name} -> b"
    assert shown[1].split(maxsplit=1)[1].startswith(name)


@pytest.mark.parametrize("name", NAMES)
def test_a_training_dry_run_and_its_run_show_paths_and_answers_as_written(name):
    out, errors = make_console(), make_console(stderr=True)
    out.file, errors.file = io.StringIO(), io.StringIO()
    example = Example(Path(name), "this is a sound of", "dog", "caption", None, None, 1)
    check = ManifestCheck("train", Path(name), 2, [(example, name)], Counter({"caption": 2}))
    print_dry_run(DryRunReport([check], model_problems=[name], run_problems=[name]), out, errors)
    shown = lines(out)
    assert shown[:2] == [f"train {name}: 2 examples, 1 usable, 0 missing, 1 unreadable", f"  row 1: {name}: {name}"]
    assert f"model: {name}" in shown and f"run: {name}" in shown
    with TrainingProgress(total=1, done=0, enabled=True, console=errors) as progress:
        progress.print(name)
    assert name in lines(errors)


def test_index_and_stats_name_a_file_that_failed_as_written(tiny_model_dir, tmp_path):
    root = tmp_path / "sounds"
    write_tone(root / "tone.wav", 1.0)
    (root / NAME).parent.mkdir()
    (root / f"{NAME}.wav").write_bytes(b"")
    db = tmp_path / "lib.db"
    quick = ("--model", tiny_model_dir, "--workers", "0", "--beam", "1", "--max-len", "2", "--device", "cpu")
    indexed = run("index", root, "--db", db, *quick)
    assert indexed.exit_code == EXIT_PARTIAL, indexed.output
    assert any(line.startswith(f"failed {root}/{NAME}.wav: ") for line in indexed.stderr.splitlines())
    stats = run("stats", "--db", db)
    assert any(line.startswith(f"  {root}/{NAME}.wav: ") for line in stats.stdout.splitlines()), stats.output


def test_doctor_and_model_info_show_names_and_paths_as_written(tiny_model_dir, tmp_path):
    """A model's name is the user's (`model import --name`)."""
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / NAME))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"name": NAME}))
    info = run("model", "info", "--model", model)
    assert info.exit_code == 0, info.output
    assert info.stdout.splitlines()[:2] == [f"{NAME} (base)", f"  path       {model}"]
    doctor = run("doctor", "--db", tmp_path / "db" / f"{NAME}.db", "--model", tmp_path / "absent" / NAME)
    shown = doctor.stdout.splitlines()
    assert f"- models: --model {tmp_path}/absent/{NAME} names no model" in shown, doctor.stdout
    assert any(line.startswith(f"  state          neither {tmp_path}/db/{NAME}.db ") for line in shown), doctor.stdout


@pytest.mark.parametrize("asked", [False, True])
def test_describe_starts_every_answer_of_a_file_in_one_column_however_long_its_window_times(console, asked):
    starts = [0.0, 7.0, 98.0, 112.9]
    windows = [{"start_s": s, "end_s": s + 7.0, "answers": {"caption": "rain"}} for s in starts]
    result = cli_describe.FileResult(path="/lib/long.ogg", duration_s=119.9, windows=windows)
    cli_describe._print_text([result], show_keys=not asked)
    answer = "rain" if asked else "caption: rain"
    assert lines(console)[1:] == [
        f"     0.0-7.0s    {answer}",
        f"     7.0-14.0s   {answer}",
        f"    98.0-105.0s  {answer}",
        f"   112.9-119.9s  {answer}",
    ]

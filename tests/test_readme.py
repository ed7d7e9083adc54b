"""What the README (and the training example's comments) show a user still works: the Python example runs with the
tiny model, and every `pengi-search` command line in a code block parses with the options it uses; and the READMEs'
sizes are in the binary units the benchmarks print."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import typer

from pengi_search.cli import app

ROOT_DIR = Path(__file__).resolve().parents[1]
README = ROOT_DIR / "README.md"


def _code_blocks(text: str, language: str | None = None) -> list[str]:
    fence = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
    return [body for lang, body in fence.findall(text) if language is None or lang == language]


def test_the_python_example_runs(captions, tiny_model_dir, monkeypatch, capsys):
    """README, "From Python": the tiny model stands for `base`, a file of the test library for `clip.wav`, and the
    test library is the default one (`PENGI_SEARCH_DB`), as a user's would be."""
    clip = captions.files["animals/dog.wav"]
    code = _python_example(tiny_model_dir, clip)
    monkeypatch.setenv("PENGI_SEARCH_DB", captions.db)
    monkeypatch.setenv("PENGI_SEARCH_MODEL", str(tiny_model_dir))
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("0.0-3.0 s {'caption': ")  # the clip's one window and its default answers
    assert printed[1].startswith("0.0 s ")  # the window's answer to the question
    assert printed[2].split()[0] in ("dog", "rain", "speech")  # the best label, then all of them ranked
    assert len(printed) == 3 + len(captions.files)  # one hit per file of the library
    assert str(clip) in "\n".join(printed[3:])
    assert scope["source"] == "index" and all(hit.path != str(clip) for hit in scope["hits"])


def _python_example(model_dir: Path, clip: Path) -> str:
    """README's "From Python" example, with the tiny model for `base` and `clip` for `clip.wav`."""
    [example] = [block for block in _code_blocks(README.read_text(), "python") if "pengi_search" in block]
    assert example.count('"base"') == 1 and '"clip.wav"' in example
    return example.replace('"base"', repr(str(model_dir))).replace('"clip.wav"', repr(str(clip)))


def test_the_python_example_leaves_nothing_unclosed(captions, tiny_model_dir):
    """Run as a script in development mode with ResourceWarning an error (`python -X dev -W error::ResourceWarning`):
    no file, socket or database connection is left for the interpreter to close, at exit neither."""
    code = _python_example(tiny_model_dir, captions.files["animals/dog.wav"])
    env = {**os.environ, "PENGI_SEARCH_DB": captions.db, "PENGI_SEARCH_MODEL": str(tiny_model_dir)}
    command = [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ResourceWarning" not in done.stderr and "unclosed" not in done.stderr, done.stderr


def _documented_command_lines() -> list[tuple[str, str]]:
    """(where, command line) of each `pengi-search`, `-m indexer` or `-m trainer` line in a code block of the READMEs,
    and in the comments of trainer/example.yaml, without its comment."""
    sources = {
        "README.md": _code_blocks(README.read_text()),
        "benchmarks/README.md": _code_blocks((ROOT_DIR / "benchmarks" / "README.md").read_text()),
        "trainer/example.yaml": [
            line.removeprefix("#")
            for line in (ROOT_DIR / "trainer" / "example.yaml").read_text().splitlines()
            if line.startswith("#")
        ],
    }
    found = []
    for where, blocks in sources.items():
        text = "\n".join(blocks).replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].split(" > ", 1)[0].strip()
            if re.match(r"(pengi-search|python -m pengi_search|(torchrun|python) .*-m (indexer|trainer)) ", line):
                found.append((where, line))
    return found


def _parse(line: str) -> None:
    """Parse `line` as the shell would pass it to the command (nothing runs); raise what the parser says."""
    words = shlex.split(line)
    if "-m" in words and words[words.index("-m") + 1] in ("indexer", "trainer"):
        module = words.index("-m") + 1
        words = ["index" if words[module] == "indexer" else "train", *words[module + 1 :]]
    else:
        words = words[3:] if words[0] == "python" else words[1:]
    assert not {"--help", "--install-completion", "--show-completion"} & set(words), "would run"
    command = typer.main.get_command(app)
    ctx = command.make_context("pengi-search", list(words))
    while hasattr(command, "commands"):  # a group: descend to the command it names
        rest = [*(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])), *ctx.args]
        name, command, rest = ctx.command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    assert not ctx.args, f"unexpected {ctx.args}"


def test_each_documented_command_line_parses(monkeypatch):
    """The command exists and takes every option given, with a value it accepts (on a machine with the GPU that
    `--device cuda` asks for: this one may have none)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    lines = _documented_command_lines()
    assert len(lines) > 60
    failures = []
    for where, line in lines:
        try:
            _parse(line)
        except (Exception, SystemExit) as err:  # the root command's own mistakes exit (one line on stderr)
            failures.append(f"{where}: {line}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


def test_ci_runs_the_readmes_install_and_test_commands():
    """A new user's two commands (install, test) are the ones CI proves: `.ci/run` runs the README's install command
    and its test command, as written."""
    [install, test] = next(
        block.splitlines()
        for block in _code_blocks(README.read_text())
        if block.startswith("pip install") and "pytest" in block
    )
    ci_lines = (ROOT_DIR / ".ci" / "run").read_text().splitlines()
    assert install in ci_lines and test in ci_lines


def _heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (hyphens kept), spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_readme_section_leads_to_one():
    """The contents line and the cross-references (`see [Fidelity](#fidelity)`) survive a section's renaming."""
    text = README.read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    anchors = {_heading_anchor(heading) for heading in re.findall(r"^#+ (.+)$", prose, re.MULTILINE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", prose))
    assert links and links <= anchors, sorted(links - anchors)


# A size written in decimal units on purpose: the release's size as its publisher shows it.
_PUBLISHED_SIZE = re.compile(r"\d+(?:\.\d+)? GB as Zenodo publishes it")
_DECIMAL_SIZE = re.compile(r"\b\d+(?:\.\d+)? ?[kKMGT]B\b")


def test_the_readmes_sizes_are_in_the_binary_units_the_scripts_print():
    """The benchmarks print MiB (a size / 2^20; `ru_maxrss` KiB / 1024; `torch.cuda.max_memory_allocated` / 2^20),
    and the project names its sizes KiB/MiB/GiB: a figure read off them and written as MB or GB is 4.9% (MB)
    or 7.4% (GB) off one way or the other (a run's 3818 MiB peak is 4.0 GB, or 3.7 GiB)."""
    found = []
    for readme in (README, ROOT_DIR / "benchmarks" / "README.md"):
        for number, line in enumerate(readme.read_text().splitlines(), start=1):
            found += [
                f"{readme.relative_to(ROOT_DIR)}:{number}: {size}"
                for size in _DECIMAL_SIZE.findall(_PUBLISHED_SIZE.sub("", line))
            ]
    assert not found, "\n".join(found)

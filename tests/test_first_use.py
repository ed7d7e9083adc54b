"""First use without a model: the offer to fetch it, `--yes`, scripts, offline mode, shell completion.

A local server on 127.0.0.1 plays Zenodo: it serves a tiny model in the released format as `base.pth`, the hub
tokenizers are local folders, and the released preset is the tiny model's configuration. Nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import json
import os
import pty
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer.completion
from typer.testing import CliRunner

from pengi_search.cli import app, first_use
from pengi_search.config import PengiConfig
from pengi_search.consoles import make_console
from pengi_search.db import Store
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir
from pengi_search.releases import RELEASES, TOKENIZERS
from pengi_search.tokenization import TOKENIZER_DIR

from .indexing import write_tone
from .test_models import released_checkpoint

pytestmark = pytest.mark.usefixtures("no_internet")

runner = CliRunner()
DESCRIBE = ("--beam", "1", "--max-len", "2", "--device", "cpu", "--json")


@dataclass
class Release:
    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture()
def release(tiny_model_dir, tmp_path, monkeypatch) -> Iterator[Release]:
    """`base` as released, served from 127.0.0.1; every request's path is recorded."""
    folder = tmp_path / "zenodo"
    folder.mkdir()
    released_checkpoint(Pengi.from_pretrained(tiny_model_dir), folder / "base.pth")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/base.pth"
    monkeypatch.setitem(RELEASES, "base", dataclasses.replace(RELEASES["base"], url=url))
    for kind in ("gpt2", "clip"):
        monkeypatch.setitem(TOKENIZERS, kind, str(tiny_model_dir / TOKENIZER_DIR / kind))
    config = ModelDir.read(tiny_model_dir).config
    monkeypatch.setattr(PengiConfig, "preset", classmethod(lambda cls, name: config))
    for variable in ("PENGI_SEARCH_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PENGI_SEARCH_AUTO_FETCH"):
        monkeypatch.setenv(variable, "")  # recorded, so that what the command sets is undone after the test
        monkeypatch.delenv(variable)
    yield Release(url, requests)
    server.shutdown()
    server.server_close()


@pytest.fixture()
def clip(tmp_path) -> Path:
    return write_tone(tmp_path / "clip.wav", 2.0)


@pytest.fixture()
def terminal(monkeypatch) -> None:
    """A person at a terminal (the runner's stdin is no tty)."""
    monkeypatch.setattr(first_use, "can_ask", lambda: True)


def _installed(home: Path) -> bool:
    return (home / "models" / "base" / "model.safetensors").is_file()


@pytest.mark.usefixtures("terminal")
def test_accepting_the_offer_fetches_the_model_and_the_command_goes_on(release, clip, isolated_home):
    result = runner.invoke(app, ["describe", str(clip), *DESCRIBE], input="\n")  # Enter takes the default: yes
    assert result.exit_code == 0, result.output
    offer = result.stderr
    assert "the Pengi model base is not installed. It can be downloaded now:" in offer
    for detail in ("about 2.2 GB", release.url, "gpt2", "licence", "zenodo.org/records/8387083", "into"):
        assert detail in offer
    assert "Download it now? [Y/n]" in offer
    assert release.requests == ["/base.pth"]
    assert _installed(isolated_home)
    described = json.loads(result.stdout)
    assert described[0]["error"] is None and described[0]["windows"]
    again = runner.invoke(app, ["describe", str(clip), *DESCRIBE])  # installed now: no question
    assert again.exit_code == 0 and "Download" not in again.stderr and release.requests == ["/base.pth"]


@pytest.mark.usefixtures("terminal")
@pytest.mark.parametrize("answer", ["n\n", ""], ids=["no", "end-of-input"])
def test_refusing_the_offer_writes_nothing(release, clip, isolated_home, answer):
    result = runner.invoke(app, ["describe", str(clip), *DESCRIBE], input=answer)
    assert result.exit_code == 1
    assert "error: nothing was downloaded; `pengi-search model fetch base` installs it" in result.stderr
    assert release.requests == [] and "windows" not in result.stdout  # (the runner echoes the answer to stdout)
    assert not (isolated_home / "models").exists()


@pytest.mark.usefixtures("terminal")
def test_mistakes_in_the_inputs_come_before_the_offer(release, tmp_path, isolated_home):
    result = runner.invoke(app, ["classify", str(tmp_path / "x.wav"), "--labels", str(tmp_path / "none.txt")])
    assert result.exit_code == 2 and "none.txt" in result.stderr and "Download" not in result.stderr
    assert release.requests == []


def test_a_script_gets_the_one_line_error_without_yes(release, clip, isolated_home):
    result = runner.invoke(app, ["describe", str(clip), *DESCRIBE])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: the Pengi model base is not installed: `pengi-search model fetch base` installs it, "
        "or pass --yes to fetch it now"
    )
    assert release.requests == [] and not (isolated_home / "models").exists()


def test_a_wrapper_capturing_stderr_from_a_terminal_is_not_asked_even_with_force_color(monkeypatch):
    """`subprocess.run([...], capture_output=True)` run from a terminal: stdin is the terminal, stderr a pipe. The
    question would go into the captured stderr, where nobody reads it, and the command would wait for an answer;
    FORCE_COLOR (colours wanted in a log) puts no person there."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    stderr = make_console(stderr=True)
    monkeypatch.setattr(first_use, "err_console", stderr)
    controller, terminal = pty.openpty()
    with open(os.ttyname(terminal)) as keyboard, open(os.ttyname(terminal), "w") as screen:
        monkeypatch.setattr(sys, "stdin", keyboard)
        stderr.file = io.StringIO()  # captured
        assert stderr.is_terminal  # as Rich sees it under FORCE_COLOR
        assert not first_use.can_ask()
        stderr.file = screen
        assert first_use.can_ask()
    os.close(controller)
    os.close(terminal)


@pytest.mark.parametrize("consent", ["--yes", "-y", "env"])
def test_yes_or_the_environment_fetch_without_asking(release, clip, isolated_home, monkeypatch, consent):
    if consent == "env":
        monkeypatch.setenv("PENGI_SEARCH_AUTO_FETCH", "1")
    flags = [] if consent == "env" else [consent]
    result = runner.invoke(app, ["describe", str(clip), *DESCRIBE, *flags])
    assert result.exit_code == 0, result.output
    assert f"the Pengi model base is not installed: fetching it (about 2.2 GB) from {release.url}" in result.stderr
    assert "[Y/n]" not in result.stderr
    assert release.requests == ["/base.pth"] and _installed(isolated_home)
    assert json.loads(result.stdout)[0]["windows"]


@pytest.mark.usefixtures("terminal")
@pytest.mark.parametrize("name", ["new\nline", "red\x1b[31m"], ids=["newline", "escape-sequence"])
def test_the_model_folder_is_named_escaped_in_the_offer_and_once_installed(release, clip, tmp_path, monkeypatch, name):
    """A control character in the data folder's name would reach the terminal raw (a line broken in two, text
    turned red): it is shown escaped, as every path is."""
    home = tmp_path / name
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(home))
    result = runner.invoke(app, ["describe", str(clip), *DESCRIBE], input="\n")
    assert result.exit_code == 0, result.output
    escaped = str(tmp_path / name.replace("\n", "\\n").replace("\x1b", "\\x1b") / "models" / "base")
    assert f"into        {escaped}\n" in result.stderr
    assert f"installed {escaped}\n" in result.stderr
    assert name not in result.stderr
    assert _installed(home)


@pytest.mark.usefixtures("terminal")
@pytest.mark.parametrize("variable", ["PENGI_SEARCH_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_refuses_to_fetch_and_says_why(release, clip, isolated_home, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    result = runner.invoke(app, ["describe", str(clip), *DESCRIBE, "--yes"], input="y\n")
    assert result.exit_code == 1
    assert f"the Pengi model base is not installed and {variable}=1 forbids downloading it" in result.stderr
    assert "[Y/n]" not in result.stderr
    result = runner.invoke(app, ["model", "fetch", "base"])
    assert result.exit_code == 1
    assert f"{variable}=1 forbids network access" in result.stderr
    assert release.requests == [] and not _installed(isolated_home)
    # The Hugging Face libraries (sentence-transformers) are offline too: ours is passed on to their switch.
    assert (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")) == "1"


def test_offline_mode_still_installs_from_local_files(release, tiny_model_dir, tmp_path, isolated_home, monkeypatch):
    monkeypatch.setenv("PENGI_SEARCH_OFFLINE", "1")
    checkpoint = released_checkpoint(Pengi.from_pretrained(tiny_model_dir), tmp_path / "base.pth")
    result = runner.invoke(app, ["model", "fetch", "base", "--url", str(checkpoint), "--quiet"])
    assert result.exit_code == 0, result.output
    assert _installed(isolated_home) and release.requests == []


def test_query_offers_the_model_only_when_it_needs_it(release, clip, tmp_path, isolated_home):
    db = tmp_path / "lib.db"
    empty = runner.invoke(app, ["query", "a dog", "--db", str(db)])
    assert empty.exit_code == 1 and "no index here yet" in empty.stderr  # no offer: no model was needed
    quick = ("--workers", "0", "--beam", "1", "--max-len", "2", "--device", "cpu", "--quiet")
    indexed = runner.invoke(app, ["index", str(clip.parent), "--db", str(db), *quick, "--yes"])
    assert indexed.exit_code == 0, indexed.output
    with Store.open(db) as store:  # the model is found (and fetched) before the run is recorded
        assert [(run.status, run.files_indexed) for run in store.runs()] == [("finished", 1)]
    for path in sorted((isolated_home / "models" / "base").rglob("*"), reverse=True):  # the model goes away,
        path.rmdir() if path.is_dir() else path.unlink()  # its verified download stays
    missing = runner.invoke(app, ["query", "a dog", "--db", str(db), "--json"])
    assert missing.exit_code == 1 and "pass --yes to fetch it now" in missing.stderr
    found = runner.invoke(app, ["query", "a dog", "--db", str(db), "--json", "--yes"])
    assert found.exit_code == 0, found.output
    assert [Path(hit["path"]).name for hit in json.loads(found.stdout)] == ["clip.wav"]
    assert release.requests == ["/base.pth"]  # installed again from the download already verified


def test_fetch_notices_reach_the_terminal(release, isolated_home):
    assert runner.invoke(app, ["model", "fetch", "base", "--quiet"]).exit_code == 0
    download = isolated_home / "models" / "downloads" / "base" / "base.pth"
    data = bytearray(download.read_bytes())
    data[len(data) // 2] ^= 0xFF
    download.write_bytes(bytes(data))
    result = runner.invoke(app, ["model", "fetch", "base", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "failed validation" in result.stderr
    assert "moved aside to base.pth.invalid" in result.stderr
    forced = runner.invoke(app, ["model", "fetch", "base", "--quiet", "--force"])
    assert forced.exit_code == 0 and "warning" not in forced.stderr
    assert release.requests == ["/base.pth"] * 3


def test_shell_completion_is_offered_and_completes(monkeypatch):
    assert "--install-completion" in runner.invoke(app, ["--help"]).stdout
    # `--show-completion` is a flag: Typer detects the shell by walking the process tree (shellingham), which fails
    # now and then while other processes come and go. The user's shell is bash here.
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    script = runner.invoke(app, ["--show-completion"], prog_name="pengi-search")
    assert "_PENGI_SEARCH_COMPLETE=complete_bash" in script.stdout

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        env = {"_PENGI_SEARCH_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
        return runner.invoke(app, [], prog_name="pengi-search", env=env).stdout.split()

    assert complete("pengi-search do") == ["doctor"]
    assert complete("pengi-search model fetch ba") == ["base", "base_no_text_enc"]


def test_every_command_that_runs_the_model_takes_yes_but_serve():
    """README, "Get the model": `--yes` on every command that runs the model, but `serve` (and `model info` and
    `doctor`, which only read the model's files: doctor changes nothing, and names the fetch as its fix)."""

    def commands(command: typer.core.TyperCommand, name: str) -> Iterator[tuple[str, set[str]]]:
        yield name, {flag for param in command.params for flag in param.opts}
        for sub_name, sub in getattr(command, "commands", {}).items():
            yield from commands(sub, f"{name} {sub_name}")

    with_model = {
        name: "--yes" in flags for name, flags in commands(typer.main.get_command(app), "") if "--model" in flags
    }
    assert {name for name, yes in with_model.items() if not yes} == {" serve", " model info", " doctor"}
    assert len(with_model) > 5

"""`pengi-search serve --workers N`: several processes answer on one port, stop together, and fail together; and
how SIGTERM, Ctrl-C and a hang-up stop a server, of one process or several, while it serves and while it starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import requests

from pengi_search.errors import EXIT_INTERRUPTED

from .indexing import write_tone
from .search_library import caption_library, index_folder
from .serving import ServeProcess

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need fork()")


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("workers")
    return caption_library(str(root / "index.db"), root / "sounds", tiny_model_dir)


def test_workers_answer_on_one_port_and_stop_together(library, tiny_model_dir, tmp_path):
    served = ServeProcess(
        "--db", library.db, "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "2", home=tmp_path
    )
    try:
        address = served.address()
        assert address is not None, served.rest_of_output()
        workers = children(served.process.pid)
        assert len(workers) == 2
        for _ in range(20):
            with urllib.request.urlopen(f"{address}/api/search?q=a+bell+rings&k=3", timeout=30) as response:
                assert response.status == 200 and len(json.loads(response.read())) == 3
    finally:
        code = served.stop()
    assert code == -signal.SIGTERM  # as a server of one process ends (below)
    assert not any(alive(pid) for pid in workers)  # the parent ends only once it has seen every worker end


def test_workers_say_their_start_up_warnings_once(library, tmp_path):
    """Every worker loads the same library and finds the same thing to warn of (here: its model is not installed, so
    text search is refused): the server says it once, as one process does (was: once per worker)."""
    served = ServeProcess("--db", library.db, "--device", "cpu", "--workers", "2", home=tmp_path)
    try:
        assert served.address() is not None, served.rest_of_output()
    finally:
        served.stop()
    said = served.rest_of_output()
    assert said.count("warning: text search needs the library's model: ") == 1, said


# Three workers that each warn while they start and once they serve: once all are ready (the parent then makes the
# file named by argv[1]; a worker that ended before would be a failure).
WARNING_WORKERS = """
import logging, os, sys, time
from pathlib import Path
from pengi_search.serve.workers import run_workers

def work(ready):
    log = logging.getLogger("pengi_search.serve")
    log.warning("starting: the same in every worker")
    ready()
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    log.warning("serving: this worker's own")

sys.exit(run_workers(3, work, Path(sys.argv[1]).touch))
"""


def test_only_the_first_worker_warns_while_it_starts_and_every_worker_once_it_serves(tmp_path):
    command = [sys.executable, "-c", WARNING_WORKERS, str(tmp_path / "all-ready")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(run.stderr.splitlines()) == ["serving: this worker's own"] * 3 + [
        "starting: the same in every worker"
    ]


@pytest.fixture
def server_tmp(tmp_path, monkeypatch) -> Path:
    """The temporary folder of the servers this test starts: its own, which other tests' servers (other pytest
    processes on this machine too) leave alone."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


def test_sigterm_shuts_a_server_of_one_process_down_and_it_ends_by_the_signal(
    library, tiny_model_dir, tmp_path, server_tmp
):
    """As a service manager expects of a server (systemd counts that a clean stop, exit code 143 a failure), not as
    other commands end on SIGTERM; the parent of several workers ends by it too (above)."""
    served = ServeProcess("--db", library.db, "--model", str(tiny_model_dir), "--device", "cpu", home=tmp_path)
    address = served.address()
    assert address is not None, served.rest_of_output()
    with urllib.request.urlopen(f"{address}/api/stats", timeout=30) as response:  # it answers: uvicorn runs
        assert response.status == 200
    assert len(kept_folders(server_tmp)) == 1  # its uploads' embeddings: gone with it, as the server stops
    assert served.stop() == -signal.SIGTERM
    assert "interrupted" not in served.rest_of_output()
    assert kept_folders(server_tmp) == set()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hang_up_shuts_a_serving_server_down_as_sigterm_does_and_it_ends_by_the_signal(
    library, tiny_model_dir, tmp_path, server_tmp, workers
):
    """The terminal it was started from closed (an ssh session dropped): the shell sends SIGHUP to the server and
    its workers. uvicorn shuts down gracefully on it too (its temporary folder removed), and every worker ends."""
    served = ServeProcess(
        "--db", library.db, "--model", str(tiny_model_dir), "--device", "cpu", "--workers", str(workers),
        home=tmp_path,
    )  # fmt: skip
    address = served.address()
    assert address is not None, served.rest_of_output()
    with urllib.request.urlopen(f"{address}/api/stats", timeout=30) as response:
        assert response.status == 200
    workers_running = children(served.process.pid) if workers > 1 else set()
    assert served.hang_up() == -signal.SIGHUP
    said = served.rest_of_output()
    assert "interrupted" not in said and "Traceback" not in said, said
    assert kept_folders(server_tmp) == set()
    assert not any(alive(pid) for pid in workers_running)


def test_the_printed_address_answers_at_once_and_a_sigterm_at_once_shuts_the_server_down(
    library, tiny_model_dir, tmp_path, server_tmp
):
    """The address is printed once the server serves and uvicorn has SIGTERM: a client that asks at once gets an
    answer, and a supervisor that stops it as soon as it reads the address its shutdown (its folder removed), not a
    kill."""
    for ask_first in (True, False):
        served = ServeProcess("--db", library.db, "--model", str(tiny_model_dir), "--device", "cpu", home=tmp_path)
        address = served.address()
        assert address is not None, served.rest_of_output()
        if ask_first:
            with urllib.request.urlopen(f"{address}/api/stats", timeout=5) as response:
                assert response.status == 200
        assert served.stop() == -signal.SIGTERM
        assert kept_folders(server_tmp) == set(), served.rest_of_output()


# `serve` with its start-up held where each process loads the library's indexes and text tower: it says so with a
# file named by its process id in the folder $LOADING names, and loads until the test stops it.
LOADING_SLOWLY = """
import os, time
from pathlib import Path
from pengi_search.cli import app
from pengi_search.serve.service import Service

def warm_up(self):
    (Path(os.environ["LOADING"]) / str(os.getpid())).touch()
    time.sleep(600)

Service.warm_up = warm_up
app()
"""


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("stop", "code", "said"),
    [("stop", -signal.SIGTERM, ""), ("interrupt", EXIT_INTERRUPTED, "interrupted\n"), ("hang_up", -signal.SIGHUP, "")],
    ids=["sigterm", "ctrl-c", "hang-up"],
)
def test_a_server_stopped_while_it_starts_stops_cleanly(
    library, tiny_model_dir, tmp_path, server_tmp, monkeypatch, workers, stop, code, said
):
    """SIGTERM, or Ctrl-C or a hang-up to it and its workers as a terminal sends them, at any moment of its start-up
    (here while the indexes load) stops it as when it serves: every worker ended, its temporary folders removed, no
    traceback; then it ends by SIGTERM (SIGHUP), as a service manager expects, or says `interrupted` (exit code
    130)."""
    loading = tmp_path / "loading"
    loading.mkdir()
    monkeypatch.setenv("LOADING", str(loading))
    served = ServeProcess(
        "--db", library.db, "--model", str(tiny_model_dir), "--device", "cpu", "--workers", str(workers),
        home=tmp_path, script=LOADING_SLOWLY,
    )  # fmt: skip
    served.wait_until(lambda: len(list(loading.iterdir())) == workers)
    assert kept_folders(server_tmp)  # made before the library loads: removed as it stops
    assert getattr(served, stop)() == code
    assert served.rest_of_output() == said
    assert set(server_tmp.glob("pengi-serve-*")) == set()  # uploads' embeddings and transcodes alike
    assert not any(alive(int(worker.name)) for worker in loading.iterdir())


def kept_folders(folder: Path) -> set[Path]:
    """The folders servers keep uploads' embeddings in (`serve/kept_clips.py`), in the temporary `folder`."""
    return set(folder.glob("pengi-serve-clips-*"))


def window_paths(address: str) -> set[str]:
    with urllib.request.urlopen(f"{address}/api/search?q=a+bell+rings&by=window&k=200", timeout=30) as response:
        return {hit["path"] for hit in json.loads(response.read())}


def test_every_worker_sees_windows_indexed_while_it_runs(tiny_model_dir, tmp_path):
    library = caption_library(str(tmp_path / "index.db"), tmp_path / "sounds", tiny_model_dir)
    served = ServeProcess(
        "--db", library.db, "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "2", home=tmp_path
    )
    try:
        address = served.address()
        assert address is not None, served.rest_of_output()
        before = window_paths(address)
        new = {str(write_tone(tmp_path / "new" / f"tone-{i}.wav", 2.0, freq=700.0 + 100 * i)) for i in range(2)}
        index_folder(library.db, tmp_path / "new", tiny_model_dir)
        time.sleep(1.0)  # past the workers' refresh interval (0.5 s)
        for _ in range(12):  # connections land on either worker: each answers with the new windows
            assert window_paths(address) == before | new
    finally:
        served.stop()


def test_an_uploads_next_pages_are_answered_by_every_worker(library, tiny_model_dir, tmp_path):
    """The worker that embedded the clip keeps its embedding where the others read it: its next pages are the
    same, whichever worker a connection lands on; and the folder goes with the server."""
    served = ServeProcess(
        "--db", library.db, "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "2", home=tmp_path
    )
    try:
        address = served.address()
        assert address is not None, served.rest_of_output()
        clip = {"file": ("bell.wav", (library.root / "bell.wav").read_bytes())}
        whole = requests.post(f"{address}/api/similar?k=4&by=window", files=clip, timeout=60).json()
        first = requests.post(f"{address}/api/similar?k=2&by=window", files=clip, timeout=60)
        token = first.headers["X-Pengi-Upload"]
        [folder] = [path.parent for path in Path(tempfile.gettempdir()).glob(f"pengi-serve-clips-*/{token}.npz")]
        next_page = {"upload": token, "k": 2, "by": "window", "offset": 2}
        for _ in range(12):  # a new connection each time: they land on either worker
            second = requests.get(f"{address}/api/similar", params=next_page, timeout=60)
            assert second.status_code == 200, second.text
            assert first.json() + second.json() == whole
    finally:
        served.stop()
    assert not folder.exists()


def test_a_worker_that_cannot_start_ends_the_server_with_its_error(library, tiny_no_text_model_dir, tmp_path):
    served = ServeProcess(
        "--db", library.db, "--model", str(tiny_no_text_model_dir), "--device", "cpu", "--workers", "2", home=tmp_path
    )
    assert served.address() is None
    output = served.rest_of_output()
    assert served.process.returncode == 1
    assert "start the server with the library's model (--model)" in output and "Traceback" not in output


# Two workers that fail alike: the first fails at once; the other is still saying why (its message takes a while)
# when the parent, seeing the first one end, stops it with SIGTERM.
FAILING_ALIKE = """
import os, sys, time
from pengi_search.cli.common import handle_errors
from pengi_search.serve.workers import run_workers

class SlowToSay(ValueError):
    waited = False

    def __str__(self):
        if not SlowToSay.waited:  # the first time only (a traceback would say it again)
            SlowToSay.waited = True
            time.sleep(60)  # until the parent's SIGTERM
        return "the second worker failed"

def work(ready):
    try:
        os.mkdir(sys.argv[1])
    except FileExistsError:
        raise SlowToSay() from None
    raise ValueError("the first worker failed")

sys.exit(run_workers(2, handle_errors(work), lambda: None))
"""


def test_a_worker_stopped_while_it_reports_its_failure_ends_without_a_traceback(tmp_path):
    """The parent stops the other workers once one fails to start; one that is reporting the same failure then
    ends quietly, leaving the first worker's one-line error as the server's output."""
    command = [sys.executable, "-c", FAILING_ALIKE, str(tmp_path / "first")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr == "error: the first worker failed\n"

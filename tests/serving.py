"""A small library for the server tests: known captions (one of them hostile), a format browsers cannot play, and
a failed file; plus the app over it."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from pengi_search.db import Store
from pengi_search.serve import ServeSettings, create_app

from .search_library import CaptionLibrary, caption_library

HOSTILE = "<script>alert('pengi')</script> a cat meows"
SERVED = {
    "animals/dog.wav": (3.0, ["a dog barks"]),
    "weather/rain.flac": (10.0, ["rain on a roof", "thunder rolls in the distance"]),
    "bell.wav": (2.0, ["a bell rings"]),
    "odd/<i>cat</i>.wav": (2.0, [HOSTILE]),
    "loops/hum.aiff": (4.0, ["a low hum"]),
}
BROKEN = "/nowhere/broken.wav"
BROKEN_REASON = "empty file (0 bytes)"
LOCAL = "http://127.0.0.1"  # TestClient's address (the loopback, as a browser on this machine would use)


def served_library(root: Path, model_dir: Path) -> CaptionLibrary:
    library = caption_library(str(root / "index.db"), root / "sounds", model_dir, SERVED)
    with Store.open(library.db) as store:
        store.record_file_error(BROKEN, BROKEN_REASON, size=0, mtime=1.0)
    return library


def settings_for(library: CaptionLibrary, model_dir: Path, **overrides: Any) -> ServeSettings:
    base = ServeSettings(db=library.db, model=str(model_dir), device="cpu", check_s=0.0, beam=1, max_len=4)
    return replace(base, **overrides)


def client_for(library: CaptionLibrary, model_dir: Path, **overrides: Any) -> TestClient:
    """A test client of a fresh app (use it in a `with` block so that the app is closed)."""
    return TestClient(create_app(settings_for(library, model_dir, **overrides)), base_url=LOCAL)


CLI = "from pengi_search.cli import app; app()"


class ServeProcess:
    """`pengi-search serve --port 0 ARGS` in its own process, as a user starts it; `address` once it listens. In a
    process group of its own, with its workers: the test's Ctrl-C (`interrupt`) reaches them alone. `script`: the
    Python code run as `python -c` (the command line by default; a test's may change something first)."""

    def __init__(self, *args: str, home: Path, script: str = CLI) -> None:
        root = Path(__file__).resolve().parents[1]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            "PENGI_SEARCH_HOME": str(home),
        }
        command = [sys.executable, "-c", script, "serve", "--port", "0", *args]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()  # None: the output has ended
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self._lines.put(line)
        self._lines.put(None)  # every process holding the pipe (the server, its workers) has ended

    def address(self, timeout_s: float = 120) -> str | None:
        """Where it serves, once it says so; None when its output ended first (its words are in `output`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the server did not start within {timeout_s} s: {''.join(self.output)}") from None
            if line is None:
                self._lines.put(None)  # for `rest_of_output`
                return None
            self.output.append(line)
            if line.startswith("pengi-search serves "):
                return line.split()[2].rstrip("/")

    def wait_until(self, condition: Callable[[], bool], timeout_s: float = 120) -> None:
        """Return once `condition()` holds (checked every 10 ms) while the server runs."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self.process.poll() is None, f"the server ended first: {self.rest_of_output()}"
            assert time.monotonic() < deadline, f"not so within {timeout_s} s: {''.join(self.output)}"
            time.sleep(0.01)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, as a service manager stops it; returns its exit code."""
        self.process.terminate()
        return self._ended(timeout_s)

    def interrupt(self, timeout_s: float = 60) -> int:
        """Ctrl-C, as a terminal sends it: to the server and its workers; returns its exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self._ended(timeout_s)

    def hang_up(self, timeout_s: float = 60) -> int:
        """SIGHUP, as the shell passes on a terminal's closing: to the server and its workers; its exit code."""
        os.killpg(self.process.pid, signal.SIGHUP)
        return self._ended(timeout_s)

    def _ended(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def rest_of_output(self, timeout_s: float = 60) -> str:
        """All it said, once it has ended (read to the end of its output, not for a while)."""
        self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=timeout_s)
        assert not self._reader.is_alive(), f"its output stayed open after it ended: {''.join(self.output)}"
        while (line := self._lines.get_nowait()) is not None:
            self.output.append(line)
        self._lines.put(None)  # for a later call
        return "".join(self.output)

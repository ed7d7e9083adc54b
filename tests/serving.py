"""A small library for the server tests: known captions (one of them hostile), a format browsers cannot play, and
a failed file; plus the app over it."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
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


class ServeProcess:
    """`pengi-search serve --port 0 ARGS` in its own process, as a user starts it; `address` once it listens."""

    def __init__(self, *args: str, home: Path) -> None:
        root = Path(__file__).resolve().parents[1]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            "PENGI_SEARCH_HOME": str(home),
        }
        command = [sys.executable, "-c", "from pengi_search.cli import app; app()", "serve", "--port", "0", *args]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(line) for line in self.process.stdout], daemon=True).start()  # type: ignore[union-attr]

    def address(self, timeout_s: float = 120) -> str | None:
        """Where it serves, once it says so; None when it ended first (its words are in `output`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is not None and self._lines.empty():
                    return None
                continue
            self.output.append(line)
            if line.startswith("pengi-search serves "):
                return line.split()[2].rstrip("/")
        raise AssertionError(f"the server did not start within {timeout_s} s: {''.join(self.output)}")

    def stop(self, timeout_s: float = 20) -> int:
        """SIGTERM, as a service manager stops it; returns its exit code."""
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def rest_of_output(self) -> str:
        self.process.wait(timeout=60)
        time.sleep(0.2)  # the reader thread drains the pipe
        while not self._lines.empty():
            self.output.append(self._lines.get())
        return "".join(self.output)

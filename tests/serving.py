"""A small library for the server tests: known captions (one of them hostile), a format browsers cannot play, and
a failed file; plus the app over it."""

from __future__ import annotations

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

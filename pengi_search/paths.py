"""Where pengi-search keeps its files: models and the default index, under the user data directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "pengi-search"


def data_dir() -> Path:
    """`PENGI_SEARCH_HOME`, else the platform's user data directory (e.g. ~/.local/share/pengi-search)."""
    return Path(os.environ.get("PENGI_SEARCH_HOME") or platformdirs.user_data_dir(APP_NAME)).expanduser()


def models_dir() -> Path:
    return data_dir() / "models"

"""Where pengi-search keeps its files: models and the default index, under the user data directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "pengi-search"


def home_expanded(path: str | os.PathLike[str]) -> Path:
    """`path` with a leading `~` or `~user` expanded; an unknown user's `~name` stays as written, as the shell leaves
    it (`Path.expanduser` raises RuntimeError there, which would reach the user as a traceback)."""
    return Path(os.path.expanduser(os.fspath(path)))


def data_dir() -> Path:
    """`PENGI_SEARCH_HOME`, else the platform's user data directory (e.g. ~/.local/share/pengi-search)."""
    return home_expanded(os.environ.get("PENGI_SEARCH_HOME") or platformdirs.user_data_dir(APP_NAME))


def models_dir() -> Path:
    return data_dir() / "models"

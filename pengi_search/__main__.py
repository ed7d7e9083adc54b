"""`python -m pengi_search COMMAND ...`: the same as `pengi-search COMMAND ...`, for an environment whose scripts
folder is not on PATH."""

from __future__ import annotations

from pengi_search.cli import app

if __name__ == "__main__":
    app(prog_name="python -m pengi_search")

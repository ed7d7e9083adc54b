"""`python -m indexer PATH... [options]`: the same as `pengi-search index` (handy under `torchrun -m indexer`)."""

from __future__ import annotations

import sys

from pengi_search.cli import app


def main() -> None:
    app(args=["index", *sys.argv[1:]], prog_name="pengi-search")  # usage and hints name a command that runs


if __name__ == "__main__":
    main()

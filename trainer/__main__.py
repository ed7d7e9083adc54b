"""`python -m trainer CONFIG.yaml [options]`: the same as `pengi-search train` (and what `torchrun ... -m trainer`
runs on every process)."""

from __future__ import annotations

import logging
import sys

from pengi_search.cli import app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app(args=["train", *sys.argv[1:]], prog_name="python -m trainer")


if __name__ == "__main__":
    main()

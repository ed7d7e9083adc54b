"""`python -m trainer CONFIG.yaml [options]`: the same as `pengi-search train` (and what `torchrun ... -m trainer`
runs on every process)."""

from __future__ import annotations

import logging
import sys

from pengi_search.cli import app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Named as the command it is the same as: its usage and error hints then read `pengi-search train ...`, which
    # runs; "python -m trainer train run" would not.
    app(args=["train", *sys.argv[1:]], prog_name="pengi-search")


if __name__ == "__main__":
    main()

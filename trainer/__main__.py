"""`python -m trainer CONFIG.yaml [--dry-run] [--resume [CHECKPOINT]]`, also under `torchrun ... -m trainer`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from trainer.config import ConfigError, parse_overrides
from trainer.loop import EXIT_USAGE, run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Train or fine-tune Pengi.")
    parser.add_argument("config", type=Path, help="training configuration (YAML; see trainer/example.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="check the data and model files, print the task mix")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        type=Path,
        metavar="CHECKPOINT",
        help="continue from the run's latest checkpoint, or from CHECKPOINT",
    )
    parser.add_argument("--quiet", action="store_true", default=None, help="no progress bar or sample printing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run_training(args.config, dry_run=args.dry_run, resume=args.resume, quiet=args.quiet, overrides=overrides)


if __name__ == "__main__":
    sys.exit(main())

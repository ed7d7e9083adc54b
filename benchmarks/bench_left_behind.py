"""Whether the files a run copied from lie outside its roots (`indexer.left_behind`), where `eval` gives each file
of its set as a root: a test against every root, and a walk up each path's folders (`indexer.roots.Roots`).

    python benchmarks/bench_left_behind.py                  # 2,000 sources, 20,000 roots
    python benchmarks/bench_left_behind.py --sources 200

Measured on this project's 2-core machine shared with other jobs (load average about 16): 2,000 sources against
20,000 roots took 68.2 s tested against every root (a set of 20,000 copied files: some 11 minutes), 0.003 s
walked.
"""

from __future__ import annotations

import argparse
import time

from indexer.roots import Roots
from pengi_search.scan import inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roots", type=int, default=20_000)
    parser.add_argument("--sources", type=int, default=2_000)
    args = parser.parse_args()
    roots = [f"/set/clip-{n:05d}.wav" for n in range(args.roots)]
    sources = [f"/old/clip-{n:05d}.wav" for n in range(args.sources)]
    started = time.perf_counter()
    every_root = [not any(inside(source, root) for root in roots) for source in sources]
    tested = time.perf_counter() - started
    walk = Roots(roots)
    started = time.perf_counter()
    walked = [not walk.covers(source) for source in sources]
    assert walked == every_root
    print(
        f"{args.sources:,} sources, {args.roots:,} roots: every root tested {tested:.2f} s, walked up "
        f"{time.perf_counter() - started:.4f} s"
    )


if __name__ == "__main__":
    main()

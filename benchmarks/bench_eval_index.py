"""The indexing step of `eval retrieval` and `eval caption` on a large, unchanged set: what a re-run pays before
it scores anything.

    python benchmarks/bench_eval_index.py                          # 20,000 files, every one a root, in a temp folder
    python benchmarks/bench_eval_index.py --workdir /tmp/bei --roots 500   # keep (and reuse) the library; 500 roots

`eval` hands the indexer each file of the set as a root of its own (a file outside the set must never be indexed
or pruned), so every query the run makes "below a root" is made for 20,000 roots. The library is a tree of tiny
WAV files (nothing is decoded when nothing changed) filled through the Store API as `bench_index.py` fills it
(one window with two texts and a text and an audio vector per file, `--dim` dimensions). It then times, in this
process:

- `stamps below a root`: `Store.all_file_stamps(under=root)`, the query a run made for each root, over the first
  `--sample` roots;
- `captions below a root`: `caption_counts(store, under=root)`, likewise (made 2-3 times a run for each root);
- `eval's index step`: the whole `run_index` over the first `--roots` files as roots, as `eval` calls it
  (scan, plan, prune check, caption counts, FAISS check, run record); nothing may be indexed or pruned.

Measured on this project's 2-core machine, shared with other jobs (load average about 8): before the run asked
about its roots in one query (`indexer.roots`), `--roots 200` took 40.7 s (203 ms a root, so about 68 minutes for
the 20,000; stamps 14.4 ms and captions 57.7 ms a root, each a read of the whole table); after, all 20,000 roots
3.75 s (stamps 5.3 ms and captions 15.9 ms a root, a search of the path index, though the run no longer asks
per root).

The script uses only what every version has, so that the version before a change can be timed with it:
`PYTHONPATH=OTHER_CHECKOUT python benchmarks/bench_eval_index.py --workdir /tmp/bei --roots 500`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_index import make_tree, populate

from indexer.pipeline import run_index
from indexer.run_report import IndexOptions
from pengi_search.db import Store, caption_counts


def per_root(roots: list[str], work: Callable[[], object]) -> str:
    """Wall time of `work` over `roots`, in total and per root."""
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    return f"{seconds:8.2f} s ({seconds / len(roots) * 1000:.3f} ms per root)"


def library(work: Path, files: int, dim: int) -> tuple[Path, list[str]]:
    """The tree and its database, made once per folder (`--workdir` keeps them)."""
    db = work / f"eval-{files}-{dim}.db"
    tree = sorted(str(path) for path in (work / "tree").rglob("*.wav")) if db.exists() else []
    if len(tree) != files:
        started = time.perf_counter()
        paths = make_tree(work, files)
        seconds = populate(db, paths, dim)
        print(f"made {files} files and their rows in {time.perf_counter() - started:.0f} s ({seconds:.0f} s rows)")
        tree = sorted(map(str, paths))
    return db, tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000, help="files in the library (and the set)")
    parser.add_argument("--roots", type=int, help="roots handed to the indexer, the first of the set [all]")
    parser.add_argument("--sample", type=int, default=500, help="roots the per-root queries are timed on")
    parser.add_argument("--dim", type=int, default=8, help="dimensions of both kinds of vectors")
    parser.add_argument("--workdir", type=Path, help="keep the library here (reused when present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        work = args.workdir or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        db, tree = library(work, args.files, args.dim)
        roots = tree[: args.roots]
        print(f"{len(tree)} files in the library, {len(roots)} of them roots")
        with Store.open(str(db)) as store:
            sample = roots[: args.sample]
            stamps = per_root(sample, lambda: [store.all_file_stamps(under=root) for root in sample])
            print(f"stamps below a root:   {stamps}")
            counts = per_root(sample, lambda: [caption_counts(store, under=root) for root in sample])
            print(f"captions below a root: {counts}")
        options = IndexOptions(roots=roots, db=str(db), workers=0)
        run_index(options)  # warm-up: imports, caches
        started = time.perf_counter()
        summary = run_index(options)
        seconds = time.perf_counter() - started
        assert summary.indexed == 0 and summary.pruned == 0 and not summary.failed, summary
        print(f"eval's index step:     {seconds:8.2f} s for {len(roots)} roots, {summary.unchanged} files unchanged")


if __name__ == "__main__":
    main()

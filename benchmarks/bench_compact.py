"""Time and peak memory (max RSS) of rebuilding a FAISS index from the database, of tuning its search knob, and of
compacting its tombstones away.

    python benchmarks/bench_compact.py                                    # 200,000 x 256-d, flat, HNSW and IVF-PQ
    python benchmarks/bench_compact.py --windows 1000000 --dim 1024 --types ivfpq --workdir /tmp/bc

A synthetic library of `--windows` audio vectors (random unit vectors, in files of 100 windows, in four folders) is
written in bulk, without a model. Each command then runs in its own process under `/usr/bin/time -v`:
`rebuild-index --index-type TYPE` (every vector read from the database into a new index); for HNSW and IVF-PQ,
`tune` of its search knob (the FAISS files' parameters rewritten, their vectors copied as bytes; before `tune`,
`rebuild-index --ef-search N` rebuilt); then `remove` of one of the four folders (a quarter of the windows: past the
fifth that compacts an HNSW or IVF-PQ index, so the index is re-filled without them). It prints, per command, the
wall time, max RSS, and the size of the vectors and of the FAISS file it leaves; the difference between max RSS and
the FAISS file is what the command held besides the index.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import WINDOWS_PER_FILE, file_row, window_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = 4
TUNED = {"hnsw": ["--ef-search", "128"], "ivfpq": ["--nprobe", "24"]}  # `tune`'s options, per index type
BULK_WINDOWS = 20_000  # windows per INSERT chunk


def build_library(db: Path, windows: int, dim: int) -> None:
    """`windows` windows with random unit audio vectors, in files of WINDOWS_PER_FILE spread over FOLDERS folders."""
    from sqlalchemy import insert

    from pengi_search.db import EmbedderInfo, ModelInfo, Store
    from pengi_search.db.schema import AudioFileRow, WindowRow, WindowVectorRow

    rng = np.random.default_rng(0)
    indexed_at = datetime.now(timezone.utc)
    store = Store.open(str(db))
    try:
        store.set_index_meta(ModelInfo("synthetic", "0" * 64), EmbedderInfo("synthetic-text", dim))
        for first in range(0, windows, BULK_WINDOWS):
            ids = np.arange(first, min(first + BULK_WINDOWS, windows))
            vectors = rng.standard_normal((len(ids), dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            file_ids = sorted(set((ids // WINDOWS_PER_FILE).tolist()))
            files = [file_row(f, f"/library/part-{f % FOLDERS}/sound-{f:06d}.wav", indexed_at) for f in file_ids]
            rows = window_rows(ids)
            blobs = [
                {"window_id": w + 1, "kind": "audio", "vector": vector.astype("<f4").tobytes()}
                for w, vector in zip(ids.tolist(), vectors, strict=True)
            ]
            with store.session(write=True) as session:
                session.execute(insert(AudioFileRow), files)
                session.execute(insert(WindowRow), rows)
                session.execute(insert(WindowVectorRow), blobs)
    finally:
        store.close()


def measured(args: list[str]) -> tuple[float, int]:
    """Run `python -m pengi_search ARGS` under /usr/bin/time -v: (wall seconds, max RSS in bytes)."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "pengi_search", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no max RSS in /usr/bin/time's output:\n{done.stderr}")
    return wall, int(found.group(1)) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--types", default="flat,hnsw,ivfpq", help="index types, comma-separated")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the libraries here (default: a temp folder)")
    args = parser.parse_args()
    from pengi_search.db import default_index_path, resolve_db_url

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-compact-"))
    print(f"{args.windows:,} x {args.dim}-d vectors: {args.windows * args.dim * 4 / 2**20:.0f} MiB as float32")
    print(f"{'type':<6} {'command':<14} {'wall s':>7} {'max RSS MiB':>12} {'FAISS file MiB':>15}")
    for index_type in args.types.split(","):
        db = workdir / f"library-{args.windows}-{args.dim}-{index_type}.db"
        for stale in workdir.glob(f"{db.name}*"):
            stale.unlink()
        build_library(db, args.windows, args.dim)
        commands = {"rebuild-index": ["rebuild-index", "--db", str(db), "--index-type", index_type]}
        if index_type in TUNED:
            commands["tune"] = ["tune", "--db", str(db), *TUNED[index_type]]
        commands["remove 1/4"] = ["remove", "/library/part-0", "--db", str(db)]
        for name, command in commands.items():
            wall, rss = measured(command)
            size = default_index_path(resolve_db_url(str(db)), "audio").stat().st_size / 2**20
            print(f"{index_type:<6} {name:<14} {wall:7.1f} {rss / 2**20:12.0f} {size:15.0f}", flush=True)


if __name__ == "__main__":
    main()

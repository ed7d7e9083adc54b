"""Opening a library: what every command that searches pays before its first search (`query`, `similar`, `serve`).

    python benchmarks/bench_open.py                       # 200,000 windows, 8-d vectors, in a temp folder
    python benchmarks/bench_open.py --windows 1000000 --workdir /tmp/bo   # keep (and reuse) the library

The script writes a SQLite library of `--windows` windows (files of 100), each with two texts and a text and an
audio vector of `--dim` dimensions, in bulk (the store's per-file path costs minutes at this size), and saves its
flat FAISS files once. Tiny vectors keep the FAISS files small, so that what is timed is the database's share.
It then times, best of `--repeat` in this process (wall and CPU time):

- `open`: `Library.open` read-only and both vector indexes brought in line with the database, as a command does;
- `ids`: reading every vector id of both kinds (`Store.vector_ids`), the check an open made before the FAISS files
  recorded the vectors' version;
- `caption_modes`: the `by_mode` count of `stats`, with every text in one mode, and again with every tenth window's
  texts in a --fast mode.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import insert, update

from pengi_search.db import VECTOR_KINDS, EmbedderInfo, ModelInfo, Store
from pengi_search.db.captions import caption_modes
from pengi_search.db.schema import AudioFileRow, GeneratedTextRow, WindowRow, WindowVectorRow
from pengi_search.library import Library

WINDOWS_PER_FILE = 100
BULK_WINDOWS = 20_000  # windows per INSERT chunk


def build_library(db: Path, windows: int, dim: int) -> None:
    """`windows` windows with random vectors, two exact-mode texts each, written in bulk; FAISS files saved."""
    rng = np.random.default_rng(0)
    now = datetime.now(timezone.utc)
    with Library.open(str(db)) as library:
        store = library.store
        store.set_index_meta(ModelInfo("bench", "0" * 64), EmbedderInfo("bench-text", dim))
        for first in range(0, windows, BULK_WINDOWS):
            ids = np.arange(first, min(first + BULK_WINDOWS, windows)).tolist()
            files = [
                {"id": f + 1, "path": f"/library/{f:06d}.wav", "size": 1, "mtime": 1.0, "status": "indexed"}
                | {"duration_s": 7.0 * WINDOWS_PER_FILE, "format": "wav", "indexed_at": now}
                for f in sorted({w // WINDOWS_PER_FILE for w in ids})
            ]
            rows = [
                {"id": w + 1, "file_id": w // WINDOWS_PER_FILE + 1, "index": w % WINDOWS_PER_FILE}
                | {"start_s": 7.0 * (w % WINDOWS_PER_FILE), "end_s": 7.0 * (w % WINDOWS_PER_FILE + 1)}
                for w in ids
            ]
            texts = [
                {"window_id": w + 1, "prompt": prompt, "text": f"sound {w}", "score": None, "mode": "exact"}
                for w in ids
                for prompt in ("generate audio caption", "this is a sound of")
            ]
            vectors = rng.standard_normal((2, len(ids), dim), dtype=np.float32).astype("<f4")
            blobs = [
                {"window_id": w + 1, "kind": kind, "vector": vector.tobytes()}
                for kind, kind_vectors in zip(VECTOR_KINDS, vectors, strict=True)
                for w, vector in zip(ids, kind_vectors, strict=True)
            ]
            with store.session(write=True) as session:
                for table, values in ((AudioFileRow, files), (WindowRow, rows), (GeneratedTextRow, texts)):
                    session.execute(insert(table), values)
                session.execute(insert(WindowVectorRow), blobs)
        library.sync_vector_indexes()


def best_of(repeat: int, work: Callable[[], object]) -> str:
    """The best wall time of `repeat` runs and the best CPU time of this process, which a machine busy with other
    work inflates less."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return f"{min(walls) * 1000:7.1f} ms ({min(cpus) * 1000:.1f} ms CPU)"


def open_library(db: Path) -> None:
    with Library.open(str(db), read_only=True) as library:
        for kind in VECTOR_KINDS:
            library.vector_index(kind)


def read_ids(db: Path) -> None:
    with Store.open(str(db), read_only=True) as store:
        for kind in VECTOR_KINDS:
            store.vector_ids(kind)


def modes(db: Path) -> None:
    with Store.open(str(db), read_only=True) as store:
        caption_modes(store)


def set_modes(db: Path, mode: str) -> None:
    """Every tenth window's texts as `mode` wrote them."""
    with Store.open(str(db)) as store, store.session(write=True) as session:
        tenth = GeneratedTextRow.window_id % 10 == 0
        session.execute(update(GeneratedTextRow).where(tenth).values(mode=mode))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=8, help="dimensions of both kinds of vectors")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measurement; the best is shown")
    parser.add_argument("--workdir", type=Path, help="keep the library here (reused when present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        db = (args.workdir or Path(temp)) / f"open-{args.windows}-{args.dim}.db"
        if not db.exists():
            db.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            build_library(db, args.windows, args.dim)
            print(f"built {args.windows} windows in {time.perf_counter() - start:.0f} s", flush=True)
        print(f"open (both kinds):   {best_of(args.repeat, lambda: open_library(db))}")
        print(f"ids (both kinds):    {best_of(args.repeat, lambda: read_ids(db))}")
        print(f"caption_modes, one:  {best_of(args.repeat, lambda: modes(db))}")
        set_modes(db, "bf16+greedy")
        print(f"caption_modes, two:  {best_of(args.repeat, lambda: modes(db))}")
        set_modes(db, "exact")


if __name__ == "__main__":
    main()

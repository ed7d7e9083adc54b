"""Indexer costs that do not depend on the model's speed: re-indexing an unchanged library, and streaming a long file.

    python benchmarks/bench_index.py                      # unchanged re-run of a 10,000-file tree (goal: <= 3 s)
    python benchmarks/bench_index.py --files 100000
    python benchmarks/bench_index.py --two-hours          # also: index one 2-hour file with the tiny test model

Unchanged re-run: the tree holds tiny WAV files (nothing is decoded when nothing changed). The database is filled
directly through the Store API, not by running the model 10,000 times: one upsert_file + replace_file_windows per
file with one window, two texts and random unit 'text' and 'audio' vectors of --dim dimensions, as a real library
of one-window files would hold; the FAISS files are then built by Library.sync_vector_indexes. The timed run is the
real `run_index` (scan, stat, compare with the database, prune check, FAISS check against the database, run
record), in this process after a warm-up, and the whole `pengi-search index` command in a fresh interpreter.

Two-hour file: an 8 kHz mono FLAC of silence and tones, first decoded alone (hash, resampling, windowing), then
indexed with the tiny random-weight model of `pengi_search.testing` (or --model); memory is the peak RSS of this
process.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from indexer.pipeline import run_index
from indexer.run_report import IndexOptions
from pengi_search.audio_workers import Job, Windows, decode_file
from pengi_search.db import EmbedderInfo, ModelInfo, TextRecord, WindowInput
from pengi_search.library import Library
from pengi_search.vectors import l2_normalise

PROMPTS = ("generate audio caption", "this is a sound of")


def make_tree(root: Path, files: int) -> list[Path]:
    """`files` copies of a 0.1 s WAV, 100 per folder."""
    template = root / "template.wav"
    sf.write(template, np.zeros(4_410, np.float32), 44_100)
    payload = template.read_bytes()
    template.unlink()
    paths = []
    for n in range(files):
        folder = root / "tree" / f"folder-{n // 100:04d}"
        if n % 100 == 0:
            folder.mkdir(parents=True)
        path = folder / f"clip-{n:06d}.wav"
        path.write_bytes(payload)
        paths.append(path)
    return paths


def populate(db: Path, paths: list[Path], dim: int) -> float:
    """Fill the database as if every file had been indexed (see the module docstring); returns seconds."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    with Library.open(str(db)) as library:
        store = library.store
        store.set_index_meta(
            ModelInfo("bench-model", "0" * 64), EmbedderInfo("pengi-text:bench-model@000000000000", dim)
        )
        for path in paths:
            info = path.stat()
            file_id = store.upsert_file(str(path), size=info.st_size, mtime=info.st_mtime_ns / 1e9)
            vectors = l2_normalise(rng.standard_normal((2, dim)))
            window = WindowInput(
                0,
                0.0,
                0.1,
                [TextRecord(p, "a quiet room", -0.5) for p in PROMPTS],
                {"text": vectors[0], "audio": vectors[1]},
            )
            store.replace_file_windows(file_id, [window])
        library.sync_vector_indexes()
    return time.perf_counter() - started


def time_rerun(root: Path, db: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        summary = run_index(IndexOptions(roots=[str(root)], db=str(db), workers=0))
        times.append(time.perf_counter() - started)
        assert summary.indexed == 0 and summary.pruned == 0 and not summary.failed, summary
    return times


def time_cli(root: Path, db: Path) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "indexer", str(root), "--db", str(db), "--quiet", "--json"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def bench_unchanged(work: Path, files: int, dim: int, repeats: int) -> None:
    started = time.perf_counter()
    paths = make_tree(work, files)
    print(f"created {files} files in {time.perf_counter() - started:.1f} s")
    db = work / "library.db"
    seconds = populate(db, paths, dim)
    how = f"upsert_file + replace_file_windows per file, vectors of dim {dim}"
    print(f"database filled through the Store API ({how}): {seconds:.1f} s")
    root = work / "tree"
    warm = time_rerun(root, db, 1)[0]
    times = time_rerun(root, db, repeats)
    print(f"unchanged re-run of {files} files (run_index in this process, after a {warm:.2f} s warm-up):")
    print(
        f"  median {statistics.median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s over {repeats} runs"
    )
    print(f"  whole command in a fresh interpreter (imports included): {time_cli(root, db):.2f} s")


def bench_two_hours(work: Path, model: str | None, batch_size: int, workers: int) -> None:
    sr, seconds = 8_000, 2 * 3600
    path = work / "long" / "two-hours.flac"
    path.parent.mkdir(parents=True)
    started = time.perf_counter()
    with sf.SoundFile(path, "w", sr, 1, format="FLAC") as out:
        for minute in range(seconds // 60):
            t = np.arange(60 * sr) / sr
            block = np.where((t % 20) < 10, 0.2 * np.sin(2 * np.pi * (200 + 10 * minute) * t), 0.0)
            out.write(block.astype(np.float32))
    flac_mib = path.stat().st_size / 2**20
    print(f"wrote a 2-hour 8 kHz mono FLAC ({flac_mib:.1f} MiB) in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    windows = sum(len(m.windows) for m in decode_file(Job(0, str(path))) if isinstance(m, Windows))
    print(f"decoding alone (hash, resample to 44.1 kHz, {windows} windows): {time.perf_counter() - started:.1f} s")
    if model is None:
        from pengi_search.testing import make_tiny_model_dir

        model = str(make_tiny_model_dir(work / "tiny-model"))
    options = IndexOptions(
        roots=[str(path.parent)], db=str(work / "long.db"), model=model, workers=workers, batch_size=batch_size
    )
    started = time.perf_counter()
    summary = run_index(options)
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        f"indexed the 2-hour file: {summary.windows} windows in {elapsed:.1f} s ({summary.windows / elapsed:.1f} "
        f"windows/s, batch {batch_size}, {workers} decoding worker(s)); peak RSS of this process {peak_mib:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1024, help="vector dimensions (Pengi's d_proj is 1024)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--two-hours", action="store_true", help="also index a 2-hour file")
    parser.add_argument("--model", help="model for --two-hours [default: the tiny random test model]")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pengi-bench-index-"))
    os.environ.setdefault("PENGI_SEARCH_HOME", str(work / "home"))
    print(f"work folder {work}; {os.cpu_count()} CPUs")
    try:
        bench_unchanged(work, args.files, args.dim, args.repeats)
        if args.two_hours:
            bench_two_hours(work, args.model, args.batch_size, args.workers)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

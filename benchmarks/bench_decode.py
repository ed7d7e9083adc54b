"""Decoding alone: how fast `audio_workers.decode_all` turns a folder of short files into windows, by worker count.

    python benchmarks/bench_decode.py                          # 100 files x 20 s, 0 / 1 / 2 / 4 workers
    python benchmarks/bench_decode.py --files 200 --workers 0,8

Writes `--files` mono 44.1 kHz 16-bit WAVs (noise) into a temp folder, then for each worker count reads every
message of every file (windows, hash and all, as `index` does) and prints windows/s and the time to the first
message (the workers' start). It tells whether the model of `bench_index_e2e.py` waits for decoding.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from pengi_search.audio_workers import Job, Windows, decode_all

RATE = 44_100


def write_files(folder: Path, count: int, seconds: float) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"clip-{i:05d}.wav"
        sf.write(path, 0.1 * rng.standard_normal(int(seconds * RATE)).astype(np.float32), RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def measure(paths: list[Path], workers: int) -> tuple[float, float, int]:
    """(seconds in all, seconds to the first message, windows) for one pass over `paths`."""
    began = time.perf_counter()
    first = None
    windows = 0
    for message in decode_all([Job(seq, str(path)) for seq, path in enumerate(paths)], workers):
        first = first if first is not None else time.perf_counter() - began
        if isinstance(message, Windows):
            windows += len(message.windows)
    return time.perf_counter() - began, first or 0.0, windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each file")
    parser.add_argument("--workers", default="0,1,2,4", help="worker counts, comma-separated (0: in this process)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as folder:
        paths = write_files(Path(folder), args.files, args.seconds)
        print(f"{args.files} files x {args.seconds:g} s, mono 44.1 kHz WAV")
        print(f"{'workers':>7} {'windows':>8} {'seconds':>8} {'windows/s':>10} {'first message s':>16}")
        for workers in (int(n) for n in args.workers.split(",")):
            seconds, first, windows = measure(paths, workers)
            print(f"{workers:>7} {windows:>8} {seconds:>8.2f} {windows / seconds:>10.1f} {first:>16.2f}")


if __name__ == "__main__":
    main()

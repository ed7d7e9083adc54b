"""Stream a long stereo recording through pengi_search.audio and report windows, wall time and peak memory.

    python benchmarks/bench_audio_stream.py                  # 2 h, stereo, 44.1 kHz FLAC
    python benchmarks/bench_audio_stream.py --format wav --rate 48000 --minutes 30

The file is written in a child process, so the parent's peak RSS covers only imports and streaming.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from pengi_search.audio import iter_windows

_BLOCK_SECONDS = 10


def write_recording(path: Path, minutes: float, rate: int) -> None:
    """A stereo tone with a little noise, written block by block so that writing stays small too."""
    rng = np.random.default_rng(0)
    t = np.arange(_BLOCK_SECONDS * rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    with sf.SoundFile(path, "w", rate, 2, subtype="PCM_16") as handle:
        for _ in range(round(minutes * 60 / _BLOCK_SECONDS)):
            noise = rng.normal(0.0, 0.01, size=(len(t), 2))
            handle.write(np.stack([tone, -0.5 * tone], axis=1) + noise)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--rate", type=int, default=44_100)
    parser.add_argument("--format", choices=["flac", "wav"], default="flac")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"long.{args.format}"
        started = time.perf_counter()
        writer = multiprocessing.get_context("spawn").Process(
            target=write_recording, args=(path, args.minutes, args.rate)
        )
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise SystemExit(f"writing the recording failed (exit code {writer.exitcode})")
        print(f"wrote {path.stat().st_size / 2**20:.0f} MiB {args.format} in {time.perf_counter() - started:.1f} s")

        decoded_mib = args.minutes * 60 * args.rate * 2 * 4 / 2**20
        rss_before = peak_rss_mib()
        started = time.perf_counter()
        windows = sum(1 for _ in iter_windows(path))
        wall = time.perf_counter() - started
        growth = peak_rss_mib() - rss_before

    audio_s = args.minutes * 60
    print(f"audio:   {args.minutes:g} min, stereo, {args.rate} Hz, {args.format}")
    print(f"decoded: {decoded_mib:.0f} MiB as float32 stereo (what reading it whole would hold)")
    print(f"windows: {windows}")
    print(f"wall:    {wall:.1f} s ({audio_s / wall:.0f}x real time)")
    print(f"peak RSS growth while streaming: {growth:.1f} MiB")


if __name__ == "__main__":
    main()

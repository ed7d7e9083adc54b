"""Audio as the model hears it: any file (or array) mixed down to mono, resampled to 44.1 kHz and cut into 7 s windows.

Files stream block by block from their decoder (`pengi_search.audio_decoders`), so a two-hour recording never sits in
memory whole: each block is averaged to mono, resampled with a streaming soxr resampler and cut into windows as they
fill.

Windowing rule (deterministic, every window holds real audio, all windows are exactly `window_s` long):
  - regular windows start at 0, hop, 2*hop, ... while they fit inside the file;
  - a file longer than one window whose regular windows stop short of its end gets one more window, the final
    `window_s` of the file (end-aligned), so the tail is covered and never dropped;
  - a file shorter than one window gives a single window, padded the way the original Pengi pads: the whole clip
    repeated end to end, then cut (see `pad_to_length`).

A file that cannot be read raises `AudioDecodeError`, possibly after some windows were yielded: a caller that stores
windows should treat the whole file as failed. A `DecodeReport` passed to `iter_windows` or `stream_audio` learns
what decoding found (a cut file, the decoders' notes); without one, the notes go to the debug log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import soxr

from pengi_search.audio_decoders import AudioDecodeError, DecodeReport, stream_frames, unusable_samples

__all__ = [
    "AUDIO_EXTENSIONS",
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "WINDOW_SECONDS",
    "Window",
    "iter_windows",
    "load_audio",
    "pad_to_length",
    "stream_audio",
    "windows_of",
    "windows_promised",
]

SAMPLE_RATE = 44_100
WINDOW_SECONDS = 7.0
WINDOW_SAMPLES = 308_700

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mp2", ".mp1", ".mpa", ".mpga", ".m4a", ".m4b",
        ".aac", ".alac", ".wma", ".aiff", ".aif", ".aifc", ".caf", ".w64", ".rf64", ".au", ".snd", ".webm", ".mka",
        ".wv", ".ape", ".ac3", ".amr",
    }
)  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Window:
    """One fixed-length mono window of a file.

    `end_s` is where the real audio inside the window ends: `start_s + window_s`, or the file's duration for a
    padded short clip.
    """

    index: int
    start_s: float
    end_s: float
    samples: np.ndarray


def pad_to_length(x: np.ndarray, n: int) -> np.ndarray:
    """Repeat `x` end to end until it has `n` samples and cut there (the original Pengi's padding)."""
    x = np.asarray(x)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty 1-D signal, got shape {x.shape}")
    if n <= 0:
        raise ValueError(f"target length must be positive, got {n}")
    return np.tile(x, -(-n // x.size))[:n]


def load_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float | None = None,
    start_s: float = 0.0,
) -> np.ndarray:
    """The file from `start_s` to its end (or for `max_seconds`) as mono float32 at `sample_rate`, unpadded.

    Formats libsndfile reads seek straight to `start_s`; the others are decoded from the start and the part before
    it dropped. Starting at or after the end raises AudioDecodeError ("no audio samples").
    """
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    limit = None if max_seconds is None else round(max_seconds * sample_rate)
    parts: list[np.ndarray] = []
    collected = 0
    with closing(stream_audio(path, sample_rate=sample_rate, start_s=start_s)) as chunks:
        for chunk in chunks:
            parts.append(chunk)
            collected += len(chunk)
            if limit is not None and collected >= limit:
                break  # stop decoding: the rest of the file is not wanted
    return np.concatenate(parts)[:limit]


def stream_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate: int = SAMPLE_RATE,
    start_s: float = 0.0,
    report: DecodeReport | None = None,
) -> Iterator[np.ndarray]:
    """The file from `start_s` on as consecutive mono float32 chunks at `sample_rate` (memory stays flat)."""
    if start_s < 0:
        raise ValueError(f"start_s must not be negative, got {start_s}")
    return _mono_chunks(Path(path), sample_rate, report, start_s)


def iter_windows(
    path: str | os.PathLike[str],
    *,
    hop_s: float = WINDOW_SECONDS,
    window_s: float = WINDOW_SECONDS,
    sample_rate: int = SAMPLE_RATE,
    report: DecodeReport | None = None,
) -> Iterator[Window]:
    """Stream the file's windows in order (see the module docstring for the rule); `report` learns what decoding
    found (see `DecodeReport`)."""
    return _windows(Path(path), _WindowCutter.of(hop_s, window_s, sample_rate), report)


def windows_of(
    samples: np.ndarray, *, hop_s: float = WINDOW_SECONDS, window_s: float = WINDOW_SECONDS
) -> Iterator[Window]:
    """The windows of a signal already in memory, cut as `iter_windows` cuts a file: `samples` is mono (1-D) float
    audio at `SAMPLE_RATE` (44.1 kHz), within ±1. Raises ValueError for another shape, integer samples, NaN or Inf
    and samples no file may hold (`audio_decoders.MAX_SAMPLE`), since such an array would be heard as something it
    is not; the rate cannot be checked: samples at another rate are heard faster or slower."""
    samples = _checked_signal(samples)
    cutter = _WindowCutter.of(hop_s, window_s, SAMPLE_RATE)
    return chain(cutter.push(samples), cutter.finish())


def _checked_signal(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(
            f"expected mono audio, a non-empty 1-D array of samples at {SAMPLE_RATE} Hz; got shape {samples.shape}"
            + _mono_hint(samples)
        )
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"expected float samples within ±1, got {samples.dtype} (int16 PCM: divide by 32768)")
    if (reason := unusable_samples(np.abs(samples), 0, SAMPLE_RATE)) is not None:  # what a file's decoding refuses too
        raise ValueError(reason)
    return samples.astype(np.float32, copy=False)


def windows_promised(
    report: DecodeReport, *, hop_s: float = WINDOW_SECONDS, window_s: float = WINDOW_SECONDS
) -> int | None:
    """How many windows `iter_windows` cuts from a file as long as the header `report` read says (None before the
    file is opened, or where its header gives no length): known from a file's first block, so that a progress bar
    can count a long recording's windows before they are all decoded."""
    if report.header_frames is None or not report.sample_rate:
        return None
    samples = round(report.header_frames * SAMPLE_RATE / report.sample_rate)
    return _WindowCutter.of(hop_s, window_s, SAMPLE_RATE).count_for(samples)


def _mono_hint(samples: np.ndarray) -> str:
    """How to make a channels array mono: average its shorter axis, the channels, whichever it is (soundfile reads
    (frames, channels), librosa (channels, frames)). Nothing for an empty array or another shape: no channels."""
    if samples.ndim != 2 or samples.size == 0:
        return ""
    return f" (average the channels first: samples.mean(axis={int(np.argmin(samples.shape))}))"


def _windows(path: Path, cutter: _WindowCutter, report: DecodeReport | None) -> Iterator[Window]:
    for chunk in _mono_chunks(path, cutter.sample_rate, report):
        yield from cutter.push(chunk)
    yield from cutter.finish()


class _WindowCutter:
    """Cuts a stream of mono chunks into windows, keeping only the samples a later window can still need."""

    def __init__(self, size: int, hop: int, sample_rate: int) -> None:
        self.size = size
        self.hop = hop
        self.sample_rate = sample_rate
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # stream position of _buffer[0]
        self._total = 0
        self._next_start = 0
        self._count = 0

    @classmethod
    def of(cls, hop_s: float, window_s: float, sample_rate: int) -> _WindowCutter:
        """A cutter for windows of `window_s` every `hop_s` seconds; ValueError for a rate or hop that cannot be."""
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        size, hop = round(window_s * sample_rate), round(hop_s * sample_rate)
        if not 0 < hop <= size:
            # Checked in samples, where a tiny hop rounds to zero; a hop longer than the window would skip audio.
            raise ValueError(
                f"need 0 < hop_s <= window_s (at least one sample), got hop_s={hop_s}, window_s={window_s}"
            )
        return cls(size, hop, sample_rate)

    def count_for(self, samples: int) -> int:
        """The windows `push` and `finish` cut from `samples` samples in all."""
        if samples <= self.size:
            return 1
        regular = (samples - self.size) // self.hop + 1
        last_end = (regular - 1) * self.hop + self.size
        return regular + (last_end < samples)  # the end-aligned tail window

    def push(self, chunk: np.ndarray) -> Iterator[Window]:
        self._buffer = np.concatenate([self._buffer, chunk])
        self._total += len(chunk)
        while self._next_start + self.size <= self._total:
            yield self._window_at(self._next_start)
            self._next_start += self.hop
        # Keep what the next regular window needs, and always the last `size` samples for the tail window.
        keep_from = max(self._buffer_start, min(self._next_start, self._total - self.size))
        self._buffer = self._buffer[keep_from - self._buffer_start :]
        self._buffer_start = keep_from

    def finish(self) -> Iterator[Window]:
        if self._count == 0:
            padded = pad_to_length(self._buffer, self.size)
            yield self._make_window(0, padded, end=self._total)
        elif self._next_start - self.hop + self.size < self._total:
            yield self._window_at(self._total - self.size)

    def _window_at(self, start: int) -> Window:
        offset = start - self._buffer_start
        return self._make_window(start, self._buffer[offset : offset + self.size].copy(), end=start + self.size)

    def _make_window(self, start: int, samples: np.ndarray, end: int) -> Window:
        window = Window(self._count, start / self.sample_rate, end / self.sample_rate, samples)
        self._count += 1
        return window


def _mono_chunks(
    path: Path, sample_rate: int, asked: DecodeReport | None, start_s: float = 0.0
) -> Iterator[np.ndarray]:
    """The file from `start_s` on as consecutive mono float32 chunks at `sample_rate` (some chunks may be empty).

    What the decoders print goes to `asked`, or to the debug log when no caller asked for it.
    """
    report = asked or DecodeReport()
    try:
        yield from _report_chunks(path, sample_rate, report, start_s)
    finally:
        if asked is None and report.notes:
            log.debug("decoding %s: %s", path, "; ".join(report.notes))


def _report_chunks(path: Path, sample_rate: int, report: DecodeReport, start_s: float) -> Iterator[np.ndarray]:
    resampler: _Resampler | None = None
    produced = 0
    with closing(stream_frames(path, report, start_s=start_s)) as blocks:
        for block in blocks:
            resampler = resampler or _Resampler(report.sample_rate, sample_rate)
            chunk = resampler.push(_downmix(block))
            produced += len(chunk)
            yield chunk
    tail = resampler.flush() if resampler else np.zeros(0, dtype=np.float32)
    if produced + len(tail) == 0:
        raise AudioDecodeError(path, "no audio samples")
    yield tail


def _downmix(block: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) block."""
    channels = block.shape[1]
    if channels == 1:
        return np.ascontiguousarray(block[:, 0])
    # A matrix-vector product averages some 30x faster than mean(axis=1) over the short channel axis.
    return block @ np.full(channels, 1 / channels, dtype=np.float32)


class _Resampler:
    """Streaming soxr resampler for mono float32; a pass-through when the rates already match."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")

    def push(self, x: np.ndarray) -> np.ndarray:
        return x if self._stream is None else self._stream.resample_chunk(x)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)

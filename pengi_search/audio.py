"""Audio I/O: decode any common format, mix down to mono, resample to 44.1 kHz and cut into 7 s windows.

Decoding tries soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3, aiff, ...) first and falls back to PyAV
(FFmpeg: m4a/aac, wma, webm, mka, ...; also MPEG audio, MP3, MP2 or MP1, that states no frame count, which
libsndfile would stop at its estimated length: see `pengi_search.mpeg_frames`). Files stream block by block, so a
two-hour recording never sits in memory whole: each block is averaged to mono, resampled with a streaming soxr
resampler and cut into windows as they fill.

Windowing rule (deterministic, every window holds real audio, all windows are exactly `window_s` long):
  - regular windows start at 0, hop, 2*hop, ... while they fit inside the file;
  - a file longer than one window whose regular windows stop short of its end gets one more window, the final
    `window_s` of the file (end-aligned), so the tail is covered and never dropped;
  - a file shorter than one window gives a single window, padded the way the original Pengi pads: the whole clip
    repeated end to end, then cut (see `pad_to_length`).

Every failure to read a file (missing, empty, not audio, corrupt, NaN/Inf or absurdly large samples, no samples) raises
`AudioDecodeError`. It can surface mid-iteration, after some windows were yielded: a caller that stores windows
should treat the whole file as failed. A file cut short whose decoder stops cleanly at the cut (WAV, AIFF, MPEG) is
read as far as it goes, like players do; a `DecodeReport` passed to `iter_windows` or `stream_audio` then says how
much its header promised (`DecodeReport.truncation`), along with what the C decoders printed to stderr meanwhile,
which is captured rather than shown (`pengi_search.stderr_notes`; without a report it goes to the debug log).

Paths may be any name the OS gives (`str` with surrogate escapes for bytes that are not UTF-8): libsndfile gets
the name's bytes, PyAV encodes such names itself.
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

from pengi_search.errors import PengiSearchError, empty_file, read_reason
from pengi_search.mpeg_frames import stated_frame_count
from pengi_search.stderr_notes import capture_stderr

__all__ = [
    "AUDIO_EXTENSIONS",
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "WINDOW_SECONDS",
    "AudioDecodeError",
    "AudioInfo",
    "DecodeReport",
    "Window",
    "iter_windows",
    "load_audio",
    "pad_to_length",
    "probe",
    "stream_audio",
    "stream_frames",
    "windows_of",
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

_BLOCK_FRAMES = 1 << 16  # frames decoded per step: big enough for speed, small enough to keep memory flat
_DECODER_ERRORS = (sf.SoundFileError, av.FFmpegError)
_SOUNDFILE_FORMAT_NAMES = {"wavex": "wav"}
# MPEG audio of every layer (MP3, MP2, MP1), as libsndfile and FFmpeg name it whatever the file's suffix: the
# frame-count rule (`_open_source`, `_PyAVSource`) holds for all three.
_MPEG = "mp3"
log = logging.getLogger(__name__)
# A cut file's end, as libsndfile's log reports it for formats that state their data size: "data : 269892 (should
# be 38518)" (WAV; SSND for AIFF, Data Size for AU). W64 and RF64 state only the whole file's size ("riff : ...").
_SIZE_CLAIM = re.compile(r"^\s*(data|SSND|Data Size|riff|Riff size)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
_WHOLE_FILE_CLAIMS = {"riff", "Riff size"}
_STREAMED_SIZE = 0xFFFF_FFF0  # at or above: the placeholder a writer that could not seek back leaves, not a size
# Float samples beyond this (240 dB above full scale) are not audio, e.g. a float file written wrong: the
# spectrogram of samples near 1e17 overflows float32 and every answer for the file would be made of NaN.
MAX_SAMPLE = 1e12
EMPTY_AUDIO = f"{empty_file()} (0 bytes)"  # why a file (or an upload) of no bytes is no audio
TRUNCATION_TOLERANCE_S = 0.05  # shorter than the header says by more than this (and by more than 1%): truncated


class AudioDecodeError(PengiSearchError):
    """A file could not be read as audio; `where` is its path."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, as its decoder reports it (before mixing down or resampling)."""

    path: Path
    format: str
    sample_rate: int
    channels: int
    duration_s: float
    frames: int


@dataclass
class DecodeReport:
    """What decoding a file found, filled in as its samples stream (complete once the stream ends).

    `decoded_frames` is what the decoder delivered, at the file's own rate: the file's real length, which a cut
    file's header overstates (`header_frames`; None when the header does not say). `notes` are the lines C
    decoders printed to stderr meanwhile.
    """

    format: str = ""
    sample_rate: int = 0
    channels: int = 0
    header_frames: int | None = None
    decoded_frames: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """The length of what decoded, in seconds."""
        return self.decoded_frames / self.sample_rate if self.sample_rate else 0.0

    def truncation(self) -> str | None:
        """A note such as "truncated: header says 3.06 s, 0.43 s decoded" when the file decodes clearly shorter
        than its header promises (by more than 50 ms and 1%), else None."""
        if self.header_frames is None or not self.sample_rate:
            return None
        header_s = self.header_frames / self.sample_rate
        if header_s - self.duration_s <= max(TRUNCATION_TOLERANCE_S, 0.01 * header_s):
            return None
        return f"truncated: header says {header_s:.2f} s, {self.duration_s:.2f} s decoded"


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


def probe(path: str | os.PathLike[str]) -> AudioInfo:
    """Format, sample rate, channels and length of a file, from its header where the header says."""
    path = Path(path)
    with _open_source(path, DecodeReport()) as source:
        frames = source.frames
        if frames is None:
            frames = sum(len(block) for block in _decoded_blocks(source, DecodeReport()))
        info = AudioInfo(
            path=path,
            format=source.format,
            sample_rate=source.sample_rate,
            channels=source.channels,
            duration_s=frames / source.sample_rate,
            frames=frames,
        )
    if frames == 0:
        raise AudioDecodeError(path, "no audio samples")
    return info


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
    and samples no file may hold (`MAX_SAMPLE`), since such an array would be heard as something it is not; the
    rate cannot be checked: samples at another rate are heard faster or slower."""
    samples = _checked_signal(samples)
    cutter = _WindowCutter.of(hop_s, window_s, SAMPLE_RATE)
    return chain(cutter.push(samples), cutter.finish())


def _checked_signal(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(
            f"expected mono audio, a non-empty 1-D array of samples at {SAMPLE_RATE} Hz; got shape {samples.shape} "
            "(average the channels first, e.g. samples.mean(axis=1))"
        )
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"expected float samples within ±1, got {samples.dtype} (int16 PCM: divide by 32768)")
    if (reason := _unusable(np.abs(samples), 0, SAMPLE_RATE)) is not None:  # what a file's decoding refuses too
        raise ValueError(reason)
    return samples.astype(np.float32, copy=False)


def _unusable(peaks: np.ndarray, first_frame: int, sample_rate: int) -> str | None:
    """Why frames whose absolute peaks are `peaks` (the first at `first_frame`) are no audio: NaN or Inf, or past
    `MAX_SAMPLE`; None when they are audio."""
    finite = np.isfinite(peaks)  # a NaN in any channel makes its frame's peak NaN
    if not finite.all():
        return f"non-finite samples (NaN or Inf) at {(first_frame + int(np.argmin(finite))) / sample_rate:.2f} s"
    if len(peaks) and peaks.max() > MAX_SAMPLE:
        bad = int(np.argmax(peaks > MAX_SAMPLE))
        at = (first_frame + bad) / sample_rate
        return f"samples out of range ({peaks[bad]:.0e} at {at:.2f} s; audio is within ±1)"
    return None


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


def stream_frames(path: str | os.PathLike[str], report: DecodeReport, *, start_s: float = 0.0) -> Iterator[np.ndarray]:
    """The file from `start_s` on as decoded, every channel at the file's own rate: float32 (frames, channels)
    blocks; `report` holds the rate and channels once the first block is out (what a player's copy keeps)."""
    with _open_source(Path(path), report) as source:
        report.format, report.sample_rate, report.channels = source.format, source.sample_rate, source.channels
        report.header_frames = source.header_frames
        yield from _decoded_blocks(source, report, round(start_s * source.sample_rate))


def _downmix(block: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) block."""
    channels = block.shape[1]
    if channels == 1:
        return np.ascontiguousarray(block[:, 0])
    # A matrix-vector product averages some 30x faster than mean(axis=1) over the short channel axis.
    return block @ np.full(channels, 1 / channels, dtype=np.float32)


def _decoded_blocks(source: _Source, report: DecodeReport, start_frame: int = 0) -> Iterator[np.ndarray]:
    """The source's blocks from `start_frame` on, with decoder failures and NaN/Inf samples turned into
    AudioDecodeError; `report.decoded_frames` follows. Each block is decoded with stderr captured into the report
    (between blocks the caller may print: a capture never spans a yield)."""
    decoded = start_frame
    blocks = source.blocks(start_frame)
    try:
        while True:
            with capture_stderr(report.notes):
                block = next(blocks, None)
            if block is None:
                return
            if (reason := _unusable(np.abs(block).max(axis=1), decoded, source.sample_rate)) is not None:
                raise AudioDecodeError(source.path, reason)
            decoded += len(block)
            report.decoded_frames = decoded
            yield block
    except _DECODER_ERRORS as error:
        # The failing read loses its whole block, so `decoded` alone would place the failure up to a block early
        # (65,536 frames, 1.5 s at 44.1 kHz): a FLAC cut at 0.7 s was reported as failing after 0.00 s.
        at = max(decoded, source.frames_reached()) / source.sample_rate
        raise AudioDecodeError(source.path, f"corrupt or truncated audio data after {at:.2f} s") from error


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


class _Source(ABC):
    """An open file that yields float32 (frames, channels) blocks at its own sample rate."""

    path: Path
    format: str
    sample_rate: int
    channels: int
    frames: int | None  # None when the header does not say
    header_frames: int | None  # what the header promises, where it says and can be trusted to (truncation checks)

    @abstractmethod
    def blocks(self, start_frame: int = 0) -> Iterator[np.ndarray]:
        """The frames from `start_frame` (at the file's own rate) to the end, in blocks."""

    @abstractmethod
    def frames_reached(self) -> int:
        """How far the decoder got (frames from the file's start), also within a block whose decoding failed."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open_source(path: Path, report: DecodeReport) -> _Source:
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise AudioDecodeError(path, read_reason(path, error)) from error
    if path.stat().st_size == 0:
        raise AudioDecodeError(path, EMPTY_AUDIO)
    with capture_stderr(report.notes):  # libmpg123 comments on odd MP3 headers while the file opens
        try:
            source = _SoundFileSource(path)
        except sf.SoundFileError:
            return _PyAVSource(path)  # not a format libsndfile reads (or it failed to): FFmpeg gets a try
        if source.format == _MPEG and stated_frame_count(path) is None:
            # libsndfile stops an MPEG stream at its estimated length, which may be short: FFmpeg reads every frame.
            source.close()
            return _PyAVSource(path, counted=False)
        return source


class _SoundFileSource(_Source):
    def __init__(self, path: Path) -> None:
        self._file = sf.SoundFile(os.fsencode(path))  # bytes: soundfile would encode a str strictly as UTF-8
        self.path = path
        self.format = _SOUNDFILE_FORMAT_NAMES.get(self._file.format.lower(), self._file.format.lower())
        self.sample_rate = self._file.samplerate
        self.channels = self._file.channels
        self.frames = self._file.frames
        self.header_frames = _claimed_frames(self._file.extra_info, self.frames)

    def blocks(self, start_frame: int = 0) -> Iterator[np.ndarray]:
        if start_frame:
            if start_frame >= self.frames:
                return
            self._file.seek(start_frame)
        # Plain reads rather than SoundFile.blocks(), which trusts the header's length and, on a cut MP3 (whose
        # header length libsndfile takes from the encoder's tag), yields stale buffer contents for missing frames.
        while len(block := self._file.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)):
            yield block

    def frames_reached(self) -> int:
        try:
            return self._file.tell()  # libsndfile's position: the frames decoded before a failure, too
        except _DECODER_ERRORS:
            return 0

    def close(self) -> None:
        self._file.close()


class _PyAVSource(_Source):
    def __init__(self, path: Path, *, counted: bool | None = None) -> None:
        """`counted`: whether an MPEG file states its frame count, when the caller has already read it (None: read
        it here)."""
        try:
            self._container = av.open(str(path), metadata_errors="ignore")
        except (av.FFmpegError, OSError) as error:
            raise AudioDecodeError(path, "not a readable audio file (unknown format or corrupt data)") from error
        if not self._container.streams.audio:
            self._container.close()
            raise AudioDecodeError(path, "no audio stream")
        self._stream = self._container.streams.audio[0]
        self.path = path
        self.format = _container_name(self._container.format.name, path)
        self.sample_rate = self._stream.rate
        self.channels = self._stream.channels
        # An MPEG stream without a stated frame count has no length, only FFmpeg's estimate from its bit rate.
        if self.format == _MPEG and counted is None:
            counted = stated_frame_count(path) is not None
        self.frames = self._header_frames() if self.format != _MPEG or counted else None
        # The stream's own duration, not the container's: FFmpeg estimates that one from the bit rate for some
        # formats (raw AAC), which would make a whole file look cut.
        self.header_frames = None if self._stream.duration is None else self.frames
        self._reached = 0  # frames FFmpeg has decoded, also those still gathered into the next block

    def _header_frames(self) -> int | None:
        if self._stream.duration is not None:
            seconds = float(self._stream.duration * self._stream.time_base)
        elif self._container.duration is not None:
            seconds = self._container.duration / av.time_base
        else:
            return None
        return round(seconds * self.sample_rate)

    def blocks(self, start_frame: int = 0) -> Iterator[np.ndarray]:
        skip = start_frame  # FFmpeg's seeks land on packets, not samples: decode from the start and drop
        for block in self._decoded():
            if skip >= len(block):
                skip -= len(block)
                continue
            yield block[skip:]
            skip = 0

    def _decoded(self) -> Iterator[np.ndarray]:
        # Converting to planar float at a fixed layout and rate also absorbs mid-stream format changes.
        converter = av.AudioResampler(format="fltp", layout=self._stream.layout, rate=self.sample_rate)
        pending: list[np.ndarray] = []
        pending_frames = 0
        for frame in chain(self._container.decode(self._stream), [None]):
            for converted in converter.resample(frame):
                pending.append(converted.to_ndarray())
                pending_frames += converted.samples
                self._reached += converted.samples
            # Gather FFmpeg's small frames into larger blocks so per-block work stays cheap.
            if pending and (pending_frames >= _BLOCK_FRAMES or frame is None):
                yield np.concatenate(pending, axis=1).T
                pending, pending_frames = [], 0

    def frames_reached(self) -> int:
        return self._reached

    def close(self) -> None:
        self._container.close()


def _claimed_frames(log: str, frames: int) -> int:
    """The frames a libsndfile file's header promises: more than `frames` (what libsndfile reads) when the log
    reports the data cut short, scaled by how much of the stated size is there."""
    claims = {name: (int(said), int(real)) for name, said, real in _SIZE_CLAIM.findall(log)}
    data = [claim for name, claim in claims.items() if name not in _WHOLE_FILE_CLAIMS]
    said, real = (data or list(claims.values()) or [(0, 0)])[0]
    if real <= 0 or said <= real or said >= _STREAMED_SIZE:
        return frames
    return round(frames * said / real)


def _container_name(names: str, path: Path) -> str:
    """One lower-case name for a container; FFmpeg lists aliases ("mov,mp4,m4a,..."), the file's suffix picks."""
    aliases = names.lower().split(",")
    suffix = path.suffix.lower().lstrip(".")
    return suffix if suffix in aliases else aliases[0]

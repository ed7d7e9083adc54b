"""Decoding a file at its own rate: soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3, aiff, ...) first, PyAV
(FFmpeg: m4a/aac, wma, webm, mka, ...) for the rest; also for MPEG audio, MP3, MP2 or MP1, that states no frame count,
which libsndfile would stop at its estimated length (see `pengi_search.mpeg_frames`). Files are read block by block,
every channel kept; `pengi_search.audio` mixes them down, resamples and cuts windows.

Every failure to read a file (missing, empty, not audio, corrupt, NaN/Inf or absurdly large samples, no samples) raises
`AudioDecodeError`. It can surface mid-stream, after some blocks were yielded: a caller that stores what it read
should treat the whole file as failed. A file cut short whose decoder stops cleanly at the cut (WAV, AIFF, MPEG) is
read as far as it goes, like players do; its `DecodeReport` then says how much its header promised
(`DecodeReport.truncation`), along with what the C decoders printed to stderr meanwhile, which is captured rather
than shown (`pengi_search.stderr_notes`).

Paths may be any name the OS gives (`str` with surrogate escapes for bytes that are not UTF-8): libsndfile gets
the name's bytes, PyAV encodes such names itself.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from pengi_search.errors import PengiSearchError, empty_file, read_reason
from pengi_search.mpeg_frames import stated_frame_count
from pengi_search.stderr_notes import capture_stderr

__all__ = [
    "EMPTY_AUDIO",
    "MAX_SAMPLE",
    "AudioDecodeError",
    "AudioInfo",
    "DecodeReport",
    "probe",
    "stream_frames",
    "unusable_samples",
]

_BLOCK_FRAMES = 1 << 16  # frames decoded per step: big enough for speed, small enough to keep memory flat
_DECODER_ERRORS = (sf.SoundFileError, av.FFmpegError)
_SOUNDFILE_FORMAT_NAMES = {"wavex": "wav"}
# MPEG audio of every layer (MP3, MP2, MP1), as libsndfile and FFmpeg name it whatever the file's suffix: the
# frame-count rule (`_open_source`, `_PyAVSource`) holds for all three.
_MPEG = "mp3"
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


def stream_frames(path: str | os.PathLike[str], report: DecodeReport, *, start_s: float = 0.0) -> Iterator[np.ndarray]:
    """The file from `start_s` on as decoded, every channel at the file's own rate: float32 (frames, channels)
    blocks; `report` holds the rate and channels once the first block is out (what a player's copy keeps)."""
    with _open_source(Path(path), report) as source:
        report.format, report.sample_rate, report.channels = source.format, source.sample_rate, source.channels
        report.header_frames = source.header_frames
        yield from _decoded_blocks(source, report, round(start_s * source.sample_rate))


def unusable_samples(peaks: np.ndarray, first_frame: int, sample_rate: int) -> str | None:
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
            if (reason := unusable_samples(np.abs(block).max(axis=1), decoded, source.sample_rate)) is not None:
                raise AudioDecodeError(source.path, reason)
            decoded += len(block)
            report.decoded_frames = decoded
            yield block
    except _DECODER_ERRORS as error:
        # The failing read loses its whole block, so `decoded` alone would place the failure up to a block early
        # (65,536 frames, 1.5 s at 44.1 kHz): a FLAC cut at 0.7 s was reported as failing after 0.00 s.
        at = max(decoded, source.frames_reached()) / source.sample_rate
        raise AudioDecodeError(source.path, f"corrupt or truncated audio data after {at:.2f} s") from error


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

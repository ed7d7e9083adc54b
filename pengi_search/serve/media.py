"""What the pages show and play of a file: waveform peaks, spectrogram images, cut windows and browser-ready audio.

Everything is decoded by the project's audio I/O (`pengi_search.audio`: mono, resampled). Files in a format every
browser plays are served as they are (with HTTP Range); the others are transcoded to 16-bit FLAC once, into a
private cache folder bounded in bytes, and served from there, in stereo or mono as the file and at its own sample
rate where browsers play it. Windows are cut from the file and sent as WAV. The server runs this work for different
files side by side, a few at a time (`conversions`).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
import threading
import uuid
import weakref
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import closing
from functools import lru_cache
from itertools import chain
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

from ..audio import SAMPLE_RATE, load_audio
from ..audio_decoders import AudioDecodeError, DecodeReport, stream_frames
from .conversions import Conversions, ConversionsBusy

# Containers and codecs that Chromium, Firefox and Safari all play, by file extension.
BROWSER_TYPES = {
    ".wav": "audio/wav",
    ".wave": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".webm": "audio/webm",
    ".m4a": "audio/mp4",
    ".m4b": "audio/mp4",
    ".aac": "audio/aac",
}
_PLAYABLE_WAV = {"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT"}  # other WAV codecs (ADPCM, u-law) are transcoded
_WAV_CONTAINERS = {"WAV", "WAVEX"}
# What a file served as each other type must hold, as FFmpeg names its container (one of its demuxer's names) and
# its first audio stream's decoder: of the codecs MP4 audio holds, AAC is the one all three play (ALAC, say, is
# transcoded); `audio/aac` is raw AAC in ADTS frames. A file whose name says one of them and holds something else
# (an MP3 named `.ogg`, a WAV named `.mp3`: renamed by hand, or by a tool) is transcoded: Firefox and Safari decode
# what they are sent as the type it is sent as, not as what its bytes are.
_PLAYABLE_STREAMS = {
    "audio/flac": ("flac", {"flac"}),
    "audio/mpeg": ("mp3", {"mp3", "mp3float"}),
    "audio/ogg": ("ogg", {"vorbis", "libvorbis", "opus", "libopus"}),
    "audio/webm": ("webm", {"vorbis", "libvorbis", "opus", "libopus"}),
    "audio/mp4": ("mp4", {"aac"}),
    "audio/aac": ("aac", {"aac"}),
}
# The sample rates a transcode keeps: those the Web Audio API requires every browser to play. A file at another
# rate is resampled to the nearest of them.
PLAYABLE_RATES = (8_000, 96_000)
CODECS_KEPT = 1024  # files whose codec `browser_type` remembers; the least recently played go first
PLAYABLE_CHANNELS = 2  # stereo or mono is kept; more channels are averaged to mono, as the model hears them
PEAKS_RATE = 11_025  # peaks need no more detail than this
SPECTROGRAM_RATE = 22_050
SPECTROGRAM_FFT = 1024
SPECTROGRAM_FLOOR_DB = 80.0
# A dark-to-bright colour ramp (position, R, G, B) for spectrogram images.
_RAMP = np.array(
    [
        (0.00, 0, 0, 4),
        (0.25, 60, 15, 110),
        (0.50, 150, 40, 120),
        (0.75, 240, 105, 60),
        (1.00, 252, 250, 190),
    ],
    dtype=np.float64,
)


def browser_type(path: Path) -> str | None:
    """The MIME type to serve `path` as it is, or None when a browser may not play it (then it is transcoded)."""
    mime = BROWSER_TYPES.get(path.suffix.lower())
    if mime is None:
        return None
    if mime == "audio/wav":
        try:
            info = sf.info(os.fsencode(path))  # bytes: any file name
        except (sf.SoundFileError, RuntimeError):
            return None
        return mime if info.format in _WAV_CONTAINERS and info.subtype in _PLAYABLE_WAV else None
    container, codecs = _PLAYABLE_STREAMS[mime]
    return mime if _audio_codec(path, container) in codecs else None


def _audio_codec(path: Path, container_name: str) -> str | None:
    """The codec of the first audio stream of the file (as FFmpeg names it), when FFmpeg reads the file as the
    container `container_name` (one of the names of its demuxer, say "mp4" of "mov,mp4,m4a,..."); else None, and
    for a file FFmpeg cannot open. Opening it costs milliseconds on every play: the answer is kept while the file
    keeps its size and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _probed_codec(path, container_name, (stat.st_size, stat.st_mtime_ns))


@lru_cache(maxsize=CODECS_KEPT)
def _probed_codec(path: Path, container_name: str, _stamp: tuple[int, int]) -> str | None:
    """`_audio_codec` as FFmpeg finds it; `_stamp` (size, mtime_ns) keys the cache, so a rewritten file is probed
    again."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if container_name not in container.format.name.split(",") or not container.streams.audio:
                return None
            return container.streams.audio[0].codec_context.name
    except (av.FFmpegError, OSError):
        return None


def window_wav(path: Path, start_s: float, end_s: float) -> bytes:
    """The stretch `start_s`..`end_s` of the file as mono 16-bit WAV at 44.1 kHz."""
    samples = load_audio(path, start_s=start_s, max_seconds=max(end_s - start_s, 1e-3))
    out = io.BytesIO()
    sf.write(out, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return out.getvalue()


def peaks(path: Path, start_s: float, end_s: float, count: int) -> list[tuple[float, float]]:
    """`count` (min, max) sample pairs over `start_s`..`end_s`, for drawing a waveform."""
    samples = load_audio(path, sample_rate=PEAKS_RATE, start_s=start_s, max_seconds=max(end_s - start_s, 1e-3))
    buckets = np.array_split(samples, count) if len(samples) >= count else [samples] * count
    return [(round(float(b.min()), 4), round(float(b.max()), 4)) if b.size else (0.0, 0.0) for b in buckets]


def spectrogram_png(path: Path, max_s: float, *, width: int = 1200, height: int = 160) -> bytes:
    """A log-power spectrogram of the file's first `max_s` seconds as a PNG image, low frequencies at the bottom.

    Columns are `width` STFT frames spread evenly (a Hann window of 1024 samples at 22.05 kHz), rows are
    frequency bands spaced on the mel scale; each band shows its strongest bin, in dB below the loudest point.
    """
    samples = load_audio(path, sample_rate=SPECTROGRAM_RATE, max_seconds=max_s)
    if len(samples) < SPECTROGRAM_FFT:
        samples = np.pad(samples, (0, SPECTROGRAM_FFT - len(samples)))
    columns = min(width, len(samples) - SPECTROGRAM_FFT + 1)
    starts = np.linspace(0, len(samples) - SPECTROGRAM_FFT, columns).round().astype(np.int64)
    frames = samples[starts[:, None] + np.arange(SPECTROGRAM_FFT)]  # (columns, fft)
    power = np.abs(np.fft.rfft(frames * np.hanning(SPECTROGRAM_FFT), axis=1)) ** 2  # (columns, bins)
    bands = _mel_band_edges(power.shape[1], height)
    banded = np.stack([power[:, lo:hi].max(axis=1) for lo, hi in zip(bands[:-1], bands[1:], strict=True)], axis=1)
    decibels = 10 * np.log10(banded + 1e-12)
    level = np.clip((decibels - decibels.max() + SPECTROGRAM_FLOOR_DB) / SPECTROGRAM_FLOOR_DB, 0.0, 1.0)
    return png_rgb(_colour(level.T[::-1]))  # (height, columns, 3), highest band on the top row


def _mel_band_edges(bins: int, bands: int) -> np.ndarray:
    """`bands + 1` increasing FFT-bin edges spaced evenly in mels; every band holds at least one bin."""
    top = 2595 * np.log10(1 + (SPECTROGRAM_RATE / 2) / 700)
    hertz = 700 * (10 ** (np.linspace(0, top, bands + 1) / 2595) - 1)
    edges = np.round(hertz / (SPECTROGRAM_RATE / 2) * (bins - 1)).astype(int)
    for i in range(1, len(edges)):  # low bands are narrower than a bin: widen them to one
        edges[i] = max(edges[i], edges[i - 1] + 1)
    return np.minimum(edges, bins)


def _colour(level: np.ndarray) -> np.ndarray:
    """Levels in [0, 1] (h, w) -> RGB bytes (h, w, 3) along the colour ramp."""
    channels = [np.interp(level, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def png_rgb(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB image (h, w, 3) as PNG bytes (no filtering: spectrograms compress well enough)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(pixels, dtype=np.uint8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


_CLOSED = "the server is stopping: its transcodes are removed"
_FULL = "the server is busy converting other files (its transcode cache is full)"
_LONG_BUSY = (
    "the server is converting another file too long for its transcode cache (such files are converted one at a time)"
)
FLAC_MARGIN_BYTES = 64 << 10  # a FLAC file's headers beyond its frames, at most


class Transcode:
    """A transcode handed out to be sent: its file stays on disk until `release` (once its answer is sent, or will
    not be), even when the cache drops it meanwhile to make room for others.

    A handle lost without being released (its answer built and never run: a request cancelled in between) is
    released as it is collected, at once as its last reference goes (or at the next garbage collection, if it was
    caught in a reference cycle): else the cache would count its file as being sent for ever, and never remove it."""

    def __init__(self, path: Path, release: Callable[[Path], None]) -> None:
        self.path = path
        # Holds `release` and `path`, not the handle: calling it runs `release` once, whoever calls first
        self._release = weakref.finalize(self, release, path)

    def release(self) -> None:
        """Let the cache remove the file, if it has dropped it; releasing again does nothing."""
        self._release()


class TranscodeCache:
    """Files a browser may not play, transcoded to FLAC in a private folder, `max_bytes` at most; least recently used
    go first.

    Different files are transcoded side by side, as many at once as `conversions` runs (a long file's transcode
    holds up no other file's player); a file asked for while it is being transcoded waits for that transcode. The
    limit is kept while transcodes are being written too (it is what protects the user's disk): each reserves the
    most its FLAC can take before it writes (`flac_bound`), finished ones are evicted to make room, and one that
    still does not fit beside those in progress is refused for now (`ConversionsBusy`: 503, asked again later).

    A file handed out (`Transcode`) is sent from disk after it is handed out: one evicted meanwhile leaves the limit
    at once, but its file is removed only once it is released (sent), so that its answer never finds it gone. One
    requested and not handed out yet is not evicted at all.

    A file larger than the limit by itself (an hour of stereo at 48 kHz takes up to 666 MiB) is kept beside it, one
    at a time: it evicts none of the others, and it replaces the previous such file; a second one asked for while
    the first is being written is refused for now."""

    def __init__(self, max_bytes: int, conversions: Conversions | None = None) -> None:
        self.max_bytes = max_bytes
        self._conversions = conversions if conversions is not None else Conversions()
        self._folder: Path | None = None  # made by the first transcode: a server stopped before has none to remove
        self._entries: OrderedDict[Hashable, tuple[Path, int]] = OrderedDict()  # key -> (file, its size)
        self._reserved: dict[Path, int] = {}  # transcodes being written -> the most bytes each may take
        self._long: tuple[Hashable, Path] | None = None  # the file larger than the limit kept beside it
        self._long_target: Path | None = None  # such a file being written
        self._wanted: Counter[Hashable] = Counter()  # keys asked for and not handed out yet: their files stay
        self._sending: Counter[Path] = Counter()  # files handed out and not released yet
        self._dropped: set[Path] = set()  # files evicted while handed out: removed once released
        self._lock = threading.Lock()  # guards all of the above; never held while a file is transcoded
        self._closed = False

    def flac(self, key: Hashable, source: Path, max_s: float) -> Transcode:
        """The FLAC file of `source`'s first `max_s` seconds, made once per `key` (e.g. the file's id and stamp),
        kept on disk until it is released."""
        with self._lock:
            self._wanted[key] += 1
        try:
            if self._find(key) is None:
                self._conversions.run(("flac", key), lambda: self._transcode(key, source, max_s))
            return self._hand_out(key)
        finally:
            with self._lock:
                self._wanted[key] -= 1
                if not self._wanted[key]:
                    del self._wanted[key]

    def held_bytes(self) -> int:
        """The bytes the cache holds and has reserved for transcodes in progress, at most `max_bytes` (a file larger
        than that by itself is kept beside them, and files evicted while being sent until they are sent)."""
        with self._lock:
            return self._held_bytes()

    def close(self) -> None:
        """Remove the transcodes (one in progress is removed as it ends); closing again does nothing."""
        with self._lock:
            folder, self._folder = self._folder, None
            self._entries.clear()
            self._long = None
            self._closed = True
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _find(self, key: Hashable) -> Path | None:
        with self._lock:
            return self._found(key)

    def _found(self, key: Hashable) -> Path | None:
        """The file of `key`, if kept (the lock held); it becomes the most recently used."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]
        return self._long[1] if self._long is not None and self._long[0] == key else None

    def _hand_out(self, key: Hashable) -> Transcode:
        with self._lock:
            path = self._found(key)  # there: a key wanted is not evicted
            if path is None:
                raise RuntimeError(_CLOSED)
            self._sending[path] += 1
        return Transcode(path, self._release)

    def _release(self, path: Path) -> None:
        with self._lock:
            self._sending[path] -= 1
            if self._sending[path]:
                return
            del self._sending[path]
            if path in self._dropped:
                self._dropped.discard(path)
                path.unlink(missing_ok=True)

    def _transcode(self, key: Hashable, source: Path, max_s: float) -> Path:
        kept = self._find(key)  # made by a run that ended between `flac`'s look and this run
        if kept is not None:
            return kept
        target = self._new_target()
        try:
            _write_flac(source, target, max_s, lambda most: self._reserve(target, most))
        except BaseException:
            with self._lock:
                self._reserved.pop(target, None)
                if self._long_target == target:
                    self._long_target = None
            target.unlink(missing_ok=True)
            raise
        with self._lock:  # its reservation turns into its size at once: on disk, it is always counted
            self._reserved.pop(target, None)
            long = self._long_target == target
            if long:
                self._long_target = None
            if self._closed:  # closed meanwhile: the folder is gone, and nothing may be left behind
                target.unlink(missing_ok=True)
                raise RuntimeError(_CLOSED)
            if long:
                self._long = (key, target)
            else:
                self._entries[key] = (target, target.stat().st_size)
                self._evict()  # no more than it reserved, but for a bound that proved wrong
        return target

    def _new_target(self) -> Path:
        with self._lock:
            if self._closed:
                raise RuntimeError(_CLOSED)
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="pengi-serve-"))
            return self._folder / f"{uuid.uuid4().hex}.flac"

    def _reserve(self, target: Path, most: int) -> None:
        """Room for `most` bytes of `target`, made by evicting finished transcodes; refused (`ConversionsBusy`) when
        those in progress, and those about to be handed out, leave too little."""
        with self._lock:
            if most > self.max_bytes:
                self._reserve_long(target)
                return
            if self._kept_bytes() + most > self.max_bytes:
                raise ConversionsBusy(_FULL)
            self._reserved[target] = most
            self._evict()

    def _reserve_long(self, target: Path) -> None:
        """`target`, larger than the limit by itself, is to replace the one such file kept (the lock held)."""
        if self._long_target is not None or (self._long is not None and self._wanted[self._long[0]]):
            raise ConversionsBusy(_LONG_BUSY)
        if self._long is not None:
            self._drop(self._long[1])
            self._long = None
        self._long_target = target

    def _held_bytes(self) -> int:
        return sum(size for _, size in self._entries.values()) + sum(self._reserved.values())

    def _kept_bytes(self) -> int:
        """The bytes no eviction frees: transcodes in progress, and finished ones about to be handed out."""
        wanted = sum(size for key, (_, size) in self._entries.items() if self._wanted[key])
        return wanted + sum(self._reserved.values())

    def _evict(self) -> None:
        """Evict the least recently used transcodes that are not about to be handed out until the limit is kept."""
        for key in [key for key in self._entries if not self._wanted[key]]:
            if self._held_bytes() <= self.max_bytes:
                return
            path, _size = self._entries.pop(key)
            self._drop(path)

    def _drop(self, path: Path) -> None:
        """Remove an evicted file now, or once it is sent when it is being sent."""
        if self._sending[path]:
            self._dropped.add(path)
        else:
            path.unlink(missing_ok=True)


def flac_bound(seconds: float, rate: int, channels: int) -> int:
    """The most bytes a 16-bit FLAC of `seconds` at `rate` in `channels` takes: its samples stored verbatim (FLAC's
    fallback for audio it cannot compress), with the frames' headers (under 1%) and the file's."""
    return round(seconds * rate * channels * 2 * 1.01) + FLAC_MARGIN_BYTES


def _write_flac(source: Path, target: Path, max_s: float, reserve: Callable[[int], None]) -> None:
    """The first `max_s` seconds of `source` as 16-bit FLAC, its channels (`PLAYABLE_CHANNELS`) and its sample rate
    (`PLAYABLE_RATES`) kept where browsers play them: a stereo recording is heard in stereo, at its own rate.
    `reserve` is told the most bytes it can take (`flac_bound`: of its length as its header says, else `max_s`)
    before anything is written, and may refuse by raising."""
    report = DecodeReport()
    with closing(stream_frames(source, report)) as blocks:
        first = next(blocks, None)  # the file is open now: the report has its rate and channels
        if first is None:
            raise AudioDecodeError(source, "no audio samples")
        rate = min(max(report.sample_rate, PLAYABLE_RATES[0]), PLAYABLE_RATES[1])
        channels = report.channels if report.channels <= PLAYABLE_CHANNELS else 1
        seconds = max_s if report.header_frames is None else min(max_s, report.header_frames / report.sample_rate)
        reserve(flac_bound(seconds, rate, channels))
        remaining = round(max_s * rate)
        with sf.SoundFile(target, "w", rate, channels, format="FLAC", subtype="PCM_16") as out:
            for chunk in _played(chain([first], blocks), report.sample_rate, rate, channels):
                out.write(np.clip(chunk[:remaining], -1.0, 1.0))
                remaining -= len(chunk)
                if remaining <= 0:
                    break


def _played(blocks: Iterator[np.ndarray], in_rate: int, rate: int, channels: int) -> Iterator[np.ndarray]:
    """(frames, channels) blocks at `in_rate` as `channels` channels (all, or their mean) at `rate`."""
    stream = None if rate == in_rate else soxr.ResampleStream(in_rate, rate, channels, dtype="float32")
    for block in blocks:
        mixed = block if block.shape[1] == channels else block.mean(axis=1, keepdims=True, dtype=np.float32)
        yield mixed if stream is None else stream.resample_chunk(mixed)
    if stream is not None:
        yield stream.resample_chunk(np.zeros((0, channels), dtype=np.float32), last=True)

"""Audio I/O: formats, mixing down, resampling, windows, padding, errors and streaming memory."""

from __future__ import annotations

import csv
import io
import os
import pickle
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from pengi_search.audio import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    WINDOW_SECONDS,
    iter_windows,
    load_audio,
    pad_to_length,
)
from pengi_search.audio_decoders import AudioDecodeError, probe

from .indexing import write_with_av

SHARED = Path(__file__).resolve().parents[2] / "shared"
SMOKE = SHARED / "data" / "smoke"
REFERENCE_INPUTS = SHARED / "fixtures" / "pengi-reference" / "tiny-a" / "inputs.npz"


def _shared(path: Path) -> Path:
    """A shared file, skipped when absent unless CI demands the reference material."""
    if not path.exists():
        if os.environ.get("PENGI_REQUIRE_REFERENCE"):
            pytest.fail(f"missing shared file {path}")
        pytest.skip(f"missing shared file {path}")
    return path


def _tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def _write_ramp(path: Path, seconds: float) -> np.ndarray:
    """A float WAV whose sample i holds i / 2**20, so every window shows exactly where it was cut."""
    ramp = (np.arange(round(seconds * SAMPLE_RATE)) / 2**20).astype(np.float32)
    sf.write(path, ramp, SAMPLE_RATE, subtype="FLOAT")
    return ramp


# --- formats ---------------------------------------------------------------------------------------------


def _soundfile_writer(fmt: str, subtype: str):
    def write(path: Path, stereo: np.ndarray, rate: int) -> None:
        sf.write(path, stereo.T, rate, format=fmt, subtype=subtype)

    return write


def _av_writer(codec: str, fmt: str | None = None, sample_format: str = "fltp"):
    def write(path: Path, stereo: np.ndarray, rate: int) -> None:
        write_with_av(path, stereo, rate, codec, fmt, sample_format)

    return write


FORMAT_CASES = [
    # suffix, writer, native rate, expected format name, duration tolerance (s)
    ("wav", _soundfile_writer("WAV", "PCM_16"), 44_100, "wav", 0.0),
    ("flac", _soundfile_writer("FLAC", "PCM_24"), 48_000, "flac", 0.0),
    ("ogg", _soundfile_writer("OGG", "VORBIS"), 22_050, "ogg", 0.0),
    ("opus", _soundfile_writer("OGG", "OPUS"), 48_000, "ogg", 0.0),
    ("mp3", _soundfile_writer("MP3", "MPEG_LAYER_III"), 44_100, "mp3", 0.0),
    # MPEG audio of every layer is "mp3" to both decoders. No length stated (FFmpeg writes no Xing frame in MP2):
    # every frame decodes, the encoder's padding of the last one included.
    ("mp2", _av_writer("mp2", "mp2", "s16"), 44_100, "mp3", 0.03),
    ("aiff", _soundfile_writer("AIFF", "PCM_16"), 44_100, "aiff", 0.0),
    # AAC adds encoder priming and padding (about 2048 samples) that a container without an edit list keeps.
    ("m4a", _av_writer("aac", "ipod"), 44_100, "m4a", 0.05),
    ("m4a", _av_writer("alac", "ipod", "s16p"), 44_100, "m4a", 0.0),
    ("webm", _av_writer("libopus", "webm"), 48_000, "webm", 0.05),
]


@pytest.mark.parametrize(
    ("suffix", "write", "rate", "format_name", "tolerance"),
    FORMAT_CASES,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(FORMAT_CASES)],
)
def test_each_format_decodes_with_its_rate_duration_and_pitch(
    tmp_path: Path, suffix: str, write, rate: int, format_name: str, tolerance: float
) -> None:
    seconds = 2.0
    path = tmp_path / f"tone.{suffix}"
    tone = _tone(440.0, seconds, rate)
    write(path, np.stack([tone, 0.5 * tone]), rate)

    info = probe(path)
    assert (info.path, info.format, info.sample_rate, info.channels) == (path, format_name, rate, 2)
    assert info.duration_s == pytest.approx(seconds, abs=tolerance + 1e-9)
    assert info.frames == pytest.approx(seconds * rate, abs=tolerance * rate)

    mono = load_audio(path)
    assert mono.dtype == np.float32 and mono.ndim == 1
    assert len(mono) / SAMPLE_RATE == pytest.approx(seconds, abs=tolerance + 1 / SAMPLE_RATE)
    assert _peak_hz(mono, SAMPLE_RATE) == pytest.approx(440.0, abs=1.0)
    # The mix of L = tone and R = tone / 2 has amplitude 0.75 * 0.5.
    assert np.sqrt(np.mean(mono[4410:-4410] ** 2)) == pytest.approx(0.375 / np.sqrt(2), rel=0.05)


SMOKE_FILES = [
    "audio/librosa_bird_robin.ogg",
    "audio/fdo_alarm-clock-elapsed.oga",
    "audio/fdo_camera-shutter.oga",
    "audio/sonicpi_loop_tabla.flac",
    "audio/sonicpi_misc_burp.flac",
    "audio/animal_duck.mp3",
    "audio/animal_owl.mp3",
]


@pytest.mark.parametrize("name", SMOKE_FILES)
def test_smoke_recordings_match_their_labels(name: str) -> None:
    labels = _shared(SMOKE / "labels.csv")
    with labels.open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["filename"] == name)
    path = _shared(SMOKE / name)
    # The labels' mp3 durations come from a tool that counts encoder padding; decoders trim it (<= 0.08 s).
    tolerance = 0.1 if path.suffix == ".mp3" else 0.01

    info = probe(path)
    assert (info.sample_rate, info.channels) == (int(row["sample_rate"]), int(row["channels"]))
    assert info.duration_s == pytest.approx(float(row["duration_s"]), abs=tolerance)

    windows = list(iter_windows(path))
    assert windows[-1].end_s == pytest.approx(float(row["duration_s"]), abs=tolerance)
    assert all(len(w.samples) == WINDOW_SAMPLES and w.samples.dtype == np.float32 for w in windows)
    assert all(np.abs(w.samples).max() > 0 for w in windows)


# --- mixing down and resampling --------------------------------------------------------------------------


def test_opposite_channels_mix_down_to_silence(tmp_path: Path) -> None:
    tone = _tone(440.0, 1.0, SAMPLE_RATE)
    path = tmp_path / "opposite.wav"
    sf.write(path, np.stack([tone, -tone], axis=1), SAMPLE_RATE, subtype="FLOAT")
    assert np.array_equal(load_audio(path), np.zeros_like(tone))


def test_one_silent_channel_halves_the_other(tmp_path: Path) -> None:
    tone = _tone(440.0, 1.0, SAMPLE_RATE)
    path = tmp_path / "left_only.wav"
    sf.write(path, np.stack([tone, np.zeros_like(tone)], axis=1), SAMPLE_RATE, subtype="FLOAT")
    assert np.array_equal(load_audio(path), tone / 2)


def test_three_channels_are_averaged(tmp_path: Path) -> None:
    channels = np.stack([_tone(f, 1.0, SAMPLE_RATE, 0.3) for f in (220.0, 330.0, 550.0)], axis=1)
    path = tmp_path / "three.wav"
    sf.write(path, channels, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), channels.mean(axis=1), atol=1e-7)


def test_ffmpeg_path_also_averages_channels(tmp_path: Path) -> None:
    tone = _tone(440.0, 2.0, SAMPLE_RATE)
    path = tmp_path / "opposite.m4a"  # ALAC is lossless, so +x and -x still cancel exactly
    write_with_av(path, np.stack([tone, -tone]), SAMPLE_RATE, "alac", "ipod", "s16p")
    mono = load_audio(path)
    assert len(mono) == len(tone)
    assert np.array_equal(mono, np.zeros_like(mono))


@pytest.mark.parametrize("rate", [22_050, 48_000, 96_000])
def test_resampling_keeps_pitch_length_and_level(tmp_path: Path, rate: int) -> None:
    seconds = 3.0
    tone = _tone(1000.0, seconds, rate)
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, tone, rate, subtype="FLOAT")

    mono = load_audio(path)
    assert abs(len(mono) - seconds * SAMPLE_RATE) <= 1
    assert _peak_hz(mono, SAMPLE_RATE) == pytest.approx(1000.0, abs=0.5)
    assert np.sqrt(np.mean(mono[4410:-4410] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
    # Block-by-block streaming must be seamless: identical to resampling the whole signal at once.
    np.testing.assert_allclose(mono, soxr.resample(tone, rate, SAMPLE_RATE), atol=1e-6)


def test_load_audio_stops_at_max_seconds(tmp_path: Path) -> None:
    tone = _tone(440.0, 5.0, 48_000)
    path = tmp_path / "tone.flac"
    sf.write(path, tone, 48_000, subtype="PCM_24")
    whole = load_audio(path)
    first = load_audio(path, max_seconds=1.5)
    assert len(first) == round(1.5 * SAMPLE_RATE)
    assert np.array_equal(first, whole[: len(first)])
    assert len(load_audio(path, max_seconds=60.0)) == len(whole)


# --- windows and padding ---------------------------------------------------------------------------------


def _spans(windows) -> list[tuple[int, float, float]]:
    return [(w.index, w.start_s, w.end_s) for w in windows]


@pytest.mark.parametrize(
    ("seconds", "hop_s", "expected"),
    [
        # The tail of a 20 s file is the final 7 s, end-aligned.
        (20.0, WINDOW_SECONDS, [(0, 0.0, 7.0), (1, 7.0, 14.0), (2, 13.0, 20.0)]),
        # Regular windows that already end at the file's end need no tail.
        (14.0, WINDOW_SECONDS, [(0, 0.0, 7.0), (1, 7.0, 14.0)]),
        (7.0, WINDOW_SECONDS, [(0, 0.0, 7.0)]),
        (8.0, WINDOW_SECONDS, [(0, 0.0, 7.0), (1, 1.0, 8.0)]),
        (14.0, 3.5, [(0, 0.0, 7.0), (1, 3.5, 10.5), (2, 7.0, 14.0)]),
        (20.0, 5.0, [(0, 0.0, 7.0), (1, 5.0, 12.0), (2, 10.0, 17.0), (3, 13.0, 20.0)]),
    ],
)
def test_windows_cover_the_file_with_real_samples(
    tmp_path: Path, seconds: float, hop_s: float, expected: list[tuple[int, float, float]]
) -> None:
    path = tmp_path / "ramp.wav"
    ramp = _write_ramp(path, seconds)
    windows = list(iter_windows(path, hop_s=hop_s))
    assert _spans(windows) == expected
    for window in windows:
        start = round(window.start_s * SAMPLE_RATE)
        assert np.array_equal(window.samples, ramp[start : start + WINDOW_SAMPLES])


def test_windows_are_deterministic(tmp_path: Path) -> None:
    path = tmp_path / "noise.flac"
    rng = np.random.default_rng(7)
    sf.write(path, rng.uniform(-0.5, 0.5, size=(16 * 48_000, 2)), 48_000)
    first, second = list(iter_windows(path)), list(iter_windows(path))
    assert _spans(first) == _spans(second) == [(0, 0.0, 7.0), (1, 7.0, 14.0), (2, 9.0, 16.0)]
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(first, second, strict=True))


def test_window_length_and_rate_are_configurable(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    sf.write(path, _tone(440.0, 2.5, 48_000), 48_000)
    windows = list(iter_windows(path, window_s=1.0, hop_s=1.0, sample_rate=16_000))
    assert _spans(windows) == [(0, 0.0, 1.0), (1, 1.0, 2.0), (2, 1.5, 2.5)]
    assert {len(w.samples) for w in windows} == {16_000}


@pytest.mark.parametrize(("hop_s", "window_s"), [(0.0, 7.0), (8.0, 7.0), (-1.0, 7.0), (1.0, 0.0), (1e-6, 7.0)])
def test_bad_window_geometry_is_refused(tmp_path: Path, hop_s: float, window_s: float) -> None:
    with pytest.raises(ValueError, match="hop_s"):
        iter_windows(tmp_path / "never-read.wav", hop_s=hop_s, window_s=window_s)


def test_padding_matches_the_pengi_reference() -> None:
    inputs = np.load(_shared(REFERENCE_INPUTS))
    short, padded = inputs["short_audio"], inputs["short_audio_padded"]
    assert len(short) < WINDOW_SAMPLES
    assert np.array_equal(pad_to_length(short, WINDOW_SAMPLES), padded)


def test_short_file_gives_one_padded_window(tmp_path: Path) -> None:
    inputs = np.load(_shared(REFERENCE_INPUTS))
    short = inputs["short_audio"]
    path = tmp_path / "short.wav"
    sf.write(path, short, SAMPLE_RATE, subtype="FLOAT")
    (window,) = iter_windows(path)
    assert (window.index, window.start_s, window.end_s) == (0, 0.0, len(short) / SAMPLE_RATE)
    assert np.array_equal(window.samples, inputs["short_audio_padded"])


def test_pad_to_length_repeats_then_cuts() -> None:
    assert pad_to_length(np.array([1.0, 2.0, 3.0]), 7).tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert pad_to_length(np.array([1.0, 2.0, 3.0]), 3).tolist() == [1, 2, 3]
    assert pad_to_length(np.array([1.0, 2.0, 3.0]), 2).tolist() == [1, 2]
    with pytest.raises(ValueError):
        pad_to_length(np.array([]), 5)


def test_silence_is_valid_audio(tmp_path: Path) -> None:
    path = tmp_path / "silence.flac"
    sf.write(path, np.zeros((3 * SAMPLE_RATE, 2)), SAMPLE_RATE)
    (window,) = iter_windows(path)
    assert window.end_s == 3.0 and not window.samples.any()


# --- metadata --------------------------------------------------------------------------------------------


def test_probe_counts_frames_when_the_header_has_no_length(tmp_path: Path) -> None:
    class Unseekable(io.RawIOBase):
        """A write-only sink, so the Matroska muxer cannot go back and record the duration."""

        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, chunk) -> int:
            self.data += bytes(chunk)
            return len(chunk)

    sink = Unseekable()
    write_with_av(sink, _tone(440.0, 3.0, SAMPLE_RATE)[None, :], SAMPLE_RATE, "alac", "matroska", "s16p")
    path = tmp_path / "streamed.mka"
    path.write_bytes(bytes(sink.data))

    info = probe(path)
    assert (info.format, info.sample_rate, info.channels) == ("matroska", SAMPLE_RATE, 1)
    assert info.frames == 3 * SAMPLE_RATE and info.duration_s == 3.0


def test_audio_extensions_are_lower_case_suffixes() -> None:
    assert {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".wma", ".aiff"} <= AUDIO_EXTENSIONS
    # MPEG audio's layers, and the suffixes of audio/mpeg
    assert {".mp1", ".mp2", ".mp3", ".mpa", ".mpga"} <= AUDIO_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in AUDIO_EXTENSIONS)
    assert {f".{case[0]}" for case in FORMAT_CASES} <= AUDIO_EXTENSIONS


# --- errors ----------------------------------------------------------------------------------------------


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("this is a shopping list, not a song\n" * 40)


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(3).bytes(50_000))


def _truncated_flac(path: Path) -> None:
    sf.write(path, _tone(440.0, 5.0, SAMPLE_RATE), SAMPLE_RATE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncated_m4a(path: Path) -> None:
    write_with_av(path, _tone(440.0, 2.0, SAMPLE_RATE)[None, :], SAMPLE_RATE, "aac", "ipod")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the index (moov atom) sits at the end and is lost


def _no_samples(path: Path) -> None:
    sf.write(path, np.zeros((0, 2), dtype=np.float32), SAMPLE_RATE)


def _with_value(value: float):
    def write(path: Path) -> None:
        samples = _tone(440.0, 2.0, SAMPLE_RATE)
        samples[SAMPLE_RATE] = value  # one bad sample, 1 s in
        sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")

    return write


def _video_only(path: Path) -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), dtype=np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def _directory(path: Path) -> None:
    path.mkdir()


def _missing(path: Path) -> None:
    pass


BAD_INPUTS = [
    ("empty.wav", _empty, "empty file"),
    ("text.mp3", _text, "not a readable audio file"),
    ("random.wav", _random_bytes, "not a readable audio file"),
    ("truncated.flac", _truncated_flac, "corrupt or truncated"),
    ("truncated.m4a", _truncated_m4a, "not a readable audio file"),
    ("no_samples.wav", _no_samples, "no audio samples"),
    ("nan.wav", _with_value(np.nan), "non-finite samples"),
    ("inf.wav", _with_value(np.inf), "non-finite samples"),
    ("huge.wav", _with_value(1e30), "samples out of range"),
    ("video.mp4", _video_only, "no audio stream"),
    ("folder.wav", _directory, "a folder, not a file"),
    ("missing.wav", _missing, "no such file"),
]


@pytest.mark.parametrize(("name", "make", "reason"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_raises_one_error_type(tmp_path: Path, name: str, make, reason: str) -> None:
    path = tmp_path / name
    make(path)
    for read in (lambda: list(iter_windows(path)), lambda: load_audio(path)):
        with pytest.raises(AudioDecodeError) as caught:
            read()
        error = caught.value
        assert (error.where, str(error)) == (str(path), f"{path}: {error.reason}")
        assert reason in error.reason


def test_cut_mp3_gives_the_audio_that_is_there(tmp_path: Path) -> None:
    # MP3 players play what survives of a cut download; so do we, without inventing the missing part.
    path = tmp_path / "cut.mp3"
    sf.write(path, _tone(440.0, 10.0, SAMPLE_RATE), SAMPLE_RATE, format="MP3")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    mono = load_audio(path)
    assert 4.0 < len(mono) / SAMPLE_RATE < 6.0
    assert np.sqrt(np.mean(mono[4410:-4410] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_non_finite_samples_are_located(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    _with_value(np.nan)(path)
    with pytest.raises(AudioDecodeError, match=r"non-finite samples \(NaN or Inf\) at 1\.00 s"):
        load_audio(path)


def test_samples_too_large_for_the_spectrogram_are_located(tmp_path: Path) -> None:
    """A float file whose samples are absurdly large (written wrong) would give NaN answers: it is refused where
    its first such sample is. Float audio far above full scale but still meaningful (int32-scaled) decodes."""
    path = tmp_path / "huge.wav"
    _with_value(-3e17)(path)
    with pytest.raises(AudioDecodeError, match=r"samples out of range \(3e\+17 at 1\.00 s; audio is within ±1\)"):
        load_audio(path)
    loud = tmp_path / "int32-scaled.wav"
    sf.write(loud, _tone(440.0, 1.0, SAMPLE_RATE) * 2.0**31, SAMPLE_RATE, subtype="FLOAT")
    assert np.abs(load_audio(loud)).max() > 1e9


@pytest.mark.parametrize(("name", "make"), [("no_samples.wav", _no_samples), ("text.mp3", _text)])
def test_probe_refuses_what_cannot_be_decoded(tmp_path: Path, name: str, make) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(AudioDecodeError):
        probe(path)


def test_decode_error_survives_pickling() -> None:
    # Decoding runs in worker processes, so the error must cross a process boundary intact.
    error = pickle.loads(pickle.dumps(AudioDecodeError("/sounds/a.wav", "empty file (0 bytes)")))
    assert isinstance(error, AudioDecodeError)
    assert (error.where, error.reason, str(error)) == (
        "/sounds/a.wav",
        "empty file (0 bytes)",
        "/sounds/a.wav: empty file (0 bytes)",
    )


# --- streaming -------------------------------------------------------------------------------------------


def test_long_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    rate, minutes = 48_000, 6
    path = tmp_path / "long.wav"
    ten_seconds = _tone(440.0, 10.0, rate, amplitude=0.3)
    with sf.SoundFile(path, "w", rate, 2, "PCM_16") as handle:
        for _ in range(minutes * 6):
            handle.write(np.stack([ten_seconds, -0.5 * ten_seconds], axis=1))
    decoded_bytes = minutes * 60 * rate * 2 * 4  # the file as float32 stereo, what reading it whole would cost

    tracemalloc.start()
    try:
        spans = [(w.start_s, w.end_s) for w in iter_windows(path)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    seconds = minutes * 60
    assert len(spans) == int(seconds // WINDOW_SECONDS) + 1  # regular windows plus the end-aligned tail
    assert spans[-1] == (seconds - WINDOW_SECONDS, seconds)
    assert peak < 16 * 2**20 < decoded_bytes / 8

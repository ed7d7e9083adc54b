"""What the server shows and plays: audio read from an offset, waveform peaks, spectrogram PNGs, transcodes and
saved uploads."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from pengi_search.audio import load_audio, stream_audio
from pengi_search.audio_decoders import AudioDecodeError
from pengi_search.serve.errors import RequestError
from pengi_search.serve.media import TranscodeCache, browser_type, peaks, png_rgb, spectrogram_png, window_wav
from pengi_search.serve.uploads import saved_upload

from .indexing import write_tone, write_with_av


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".m4a"])  # soundfile seeks; PyAV decodes and drops
def test_load_audio_from_an_offset_matches_the_whole_file(tmp_path, suffix):
    source = write_tone(tmp_path / "tone.wav", 5.0, sr=22_050, freq=330.0)
    path = source if suffix == ".wav" else _convert(source, tmp_path / f"tone{suffix}")
    whole = load_audio(path)
    part = load_audio(path, start_s=2.0, max_seconds=1.5)
    assert len(part) == round(1.5 * 44_100)
    start = 2 * 44_100
    tolerance = 1e-5 if suffix != ".m4a" else 2e-2  # AAC is lossy, and its decoder's edges differ a little
    np.testing.assert_allclose(part[1000:-1000], whole[start + 1000 : start + len(part) - 1000], atol=tolerance)
    assert sum(len(chunk) for chunk in stream_audio(path, start_s=4.0)) == pytest.approx(
        len(whole) - 4 * 44_100, abs=64
    )
    with pytest.raises(AudioDecodeError, match="no audio samples"):
        load_audio(path, start_s=60.0)
    with pytest.raises(ValueError):
        load_audio(path, start_s=-1.0)


def _convert(source: Path, target: Path) -> Path:
    samples, rate = sf.read(source, dtype="float32")
    if target.suffix == ".flac":
        sf.write(target, samples, rate)
        return target
    write_with_av(target, samples[None, :], rate, "aac", "ipod")
    return target


def test_window_wav_and_peaks(tmp_path):
    path = write_tone(tmp_path / "tone.flac", 9.0, freq=200.0)
    samples, rate = sf.read(io.BytesIO(window_wav(path, 2.0, 9.0)))
    assert rate == 44_100 and len(samples) == 7 * 44_100
    np.testing.assert_allclose(samples, sf.read(path)[0][2 * 44_100 :], atol=1e-4)
    pairs = peaks(path, 2.0, 9.0, 50)
    assert len(pairs) == 50 and all(-0.35 < low < 0 < high < 0.35 for low, high in pairs)


def test_png_rgb_is_a_valid_png():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    data = png_rgb(pixels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = {}, 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        assert struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        offset += 12 + length
    assert struct.unpack(">IIBBBBB", chunks[b"IHDR"]) == (3, 2, 8, 2, 0, 0, 0)
    rows = zlib.decompress(chunks[b"IDAT"])
    assert rows == b"\x00" + pixels[0].tobytes() + b"\x00" + pixels[1].tobytes()


def test_spectrogram_shows_a_tone_as_one_bright_band(tmp_path):
    path = write_tone(tmp_path / "tone.wav", 3.0, freq=1000.0)
    data = spectrogram_png(path, 600.0, width=64, height=40)
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (64, 40)
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    image = (
        np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 3)[:, 1:].reshape(height, width, 3)
    )
    brightness = image.astype(int).sum(axis=2).mean(axis=1)  # per row, top row = highest band
    assert brightness.argmax() > height // 2  # 1 kHz lies in the lower half of the mel scale up to 11 kHz
    assert brightness.max() > 2 * np.median(brightness)


def test_transcode_cache_makes_each_file_once_and_stays_bounded(tmp_path):
    sources = [write_tone(tmp_path / f"t{i}.aiff", 2.0, freq=300.0 + 50 * i) for i in range(3)]
    assert browser_type(sources[0]) is None and browser_type(write_tone(tmp_path / "x.flac", 0.5)) == "audio/flac"
    cache = TranscodeCache(max_bytes=1)  # keeps only the newest file
    try:
        first = cache.flac("a", sources[0], 60.0)
        again = cache.flac("a", sources[0], 60.0)
        assert again.path == first.path
        samples, rate = sf.read(first.path)
        assert rate == 44_100 and len(samples) == 2 * 44_100
        first.release()
        again.release()
        second = cache.flac("b", sources[1], 1.0).path
        assert len(sf.read(second)[0]) == 44_100 and not first.path.exists()  # the limit: 1 s; the first was evicted
    finally:
        cache.close()
    assert not second.exists()


@pytest.mark.parametrize(
    ("source", "played"),
    [
        pytest.param((1, 22_050), (1, 22_050), id="mono at its own rate"),
        pytest.param((2, 48_000), (2, 48_000), id="stereo at its own rate"),
        pytest.param((3, 44_100), (1, 44_100), id="more than two channels: their mean, as the model hears them"),
        pytest.param((2, 192_000), (2, 96_000), id="a rate past what every browser plays: the nearest that is"),
    ],
)
def test_a_transcode_keeps_the_files_channels_and_sample_rate_where_browsers_play_them(tmp_path, source, played):
    """The player's FLAC is the recording as recorded, not as the model hears it (mono at 44.1 kHz), where it can be."""
    count, source_rate = source
    source = write_tone(tmp_path / "tone.aiff", 1.0, sr=source_rate, channels=count, freq=440.0)
    cache = TranscodeCache(max_bytes=1 << 30)
    try:
        samples, out_rate = sf.read(cache.flac("t", source, 60.0).path, dtype="float32", always_2d=True)
    finally:
        cache.close()
    assert (samples.shape[1], out_rate) == played
    assert len(samples) == pytest.approx(out_rate, abs=2)  # one second
    recorded = sf.read(source, dtype="float32", always_2d=True)[0]
    if out_rate == source_rate:  # the same samples, to 16 bits
        expected = recorded if samples.shape[1] == count else recorded.mean(axis=1, keepdims=True)
        np.testing.assert_allclose(samples, expected, atol=1e-4)


def test_aac_in_mp4_is_played_as_it_is_and_other_m4a_files_are_transcoded(tmp_path):
    """Every browser plays AAC in MP4 (`.m4a`): sent as it is, as `audio/mp4`. Not ALAC in MP4, nor a file whose
    name says MP4 and is something else: those are transcoded."""
    tone = np.sin(np.linspace(0, 2000, 44_100, dtype=np.float32))[None, :] * 0.3
    write_with_av(tmp_path / "aac.m4a", tone, 44_100, "aac", "ipod")
    write_with_av(tmp_path / "alac.m4a", tone, 44_100, "alac", "ipod", "s16p")
    write_tone(tmp_path / "wav.wav", 1.0).rename(tmp_path / "wav.m4a")
    assert browser_type(tmp_path / "aac.m4a") == "audio/mp4"
    assert browser_type(tmp_path / "alac.m4a") is None and browser_type(tmp_path / "wav.m4a") is None


def test_raw_aac_is_played_as_it_is_and_other_aac_files_are_transcoded(tmp_path):
    """Every browser plays raw AAC in ADTS frames (`.aac`, what radio recorders and stream dumps write): sent as it
    is, as `audio/aac`. A file named `.aac` that holds something else (MP4, MP3) is transcoded."""
    tone = np.sin(np.linspace(0, 2000, 44_100, dtype=np.float32))[None, :] * 0.3
    write_with_av(tmp_path / "adts.aac", tone, 44_100, "aac", "adts")
    write_with_av(tmp_path / "mp4.aac", tone, 44_100, "aac", "ipod")
    write_with_av(tmp_path / "mp3.aac", tone, 44_100, "mp3", "mp3")
    assert (tmp_path / "adts.aac").read_bytes()[:2] == b"\xff\xf1"  # an ADTS frame's sync word
    assert browser_type(tmp_path / "adts.aac") == "audio/aac"
    assert browser_type(tmp_path / "mp4.aac") is None and browser_type(tmp_path / "mp3.aac") is None


@pytest.mark.parametrize(
    ("name", "codec", "container", "served"),
    [
        ("tone.mp3", "mp3", "mp3", "audio/mpeg"),
        ("tone.flac", "flac", "flac", "audio/flac"),
        ("tone.ogg", "vorbis", "ogg", "audio/ogg"),
        ("tone.opus", "opus", "ogg", "audio/ogg"),
        ("tone.webm", "libopus", "webm", "audio/webm"),
        ("mp3.ogg", "mp3", "mp3", None),
        ("mp3.flac", "mp3", "mp3", None),
        ("wav.mp3", "pcm_s16le", "wav", None),
        ("flac.wav", "flac", "flac", None),
        ("opus.mp3", "opus", "ogg", None),
    ],
)
def test_a_file_is_sent_as_it_is_only_when_it_holds_what_its_name_says(tmp_path, name, codec, container, served):
    """A file is sent as the type its name says (Firefox and Safari decode it as that type, whatever its bytes are)
    only when it holds that: an MP3 named `.ogg`, a WAV named `.mp3` are transcoded, as ALAC named `.m4a` is."""
    tone = np.sin(np.linspace(0, 2000, 48_000, dtype=np.float32))[None, :] * 0.3
    if container == "ogg":  # libsndfile's encoders (FFmpeg's Vorbis one is experimental)
        sf.write(tmp_path / name, tone[0], 48_000, format="OGG", subtype=codec.upper())
    else:
        write_with_av(tmp_path / name, tone, 48_000, codec, container, "s16" if codec.startswith("pcm") else "fltp")
    assert browser_type(tmp_path / name) == served


def test_a_files_codec_is_probed_once_and_again_only_once_the_file_is_rewritten(tmp_path, monkeypatch):
    """Every play of an `.m4a` or `.aac` asks what it holds: FFmpeg opens the file for the first ask, and again only
    once the file has another size or modification time."""
    tone = np.sin(np.linspace(0, 2000, 44_100, dtype=np.float32))[None, :] * 0.3
    path = tmp_path / "clip.m4a"
    write_with_av(path, tone, 44_100, "aac", "ipod")
    opened: list[str] = []
    real_open = av.open

    def counted_open(file, *args, **kwargs):
        opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", counted_open)
    assert [browser_type(path), browser_type(path)] == ["audio/mp4", "audio/mp4"]
    assert opened == [str(path)]

    write_with_av(path, tone, 44_100, "alac", "ipod", "s16p")  # the same name, now ALAC: to be transcoded
    opened.clear()
    assert [browser_type(path), browser_type(path)] == [None, None]
    assert opened == [str(path)]


def test_saved_upload_keeps_only_a_safe_suffix_and_checks_the_clip(tmp_path):
    clip = write_tone(tmp_path / "clip.flac", 3.0).read_bytes()
    for name, suffix in [("../../etc/x.flac", ".flac"), ("a.FLAC", ".flac"), ("evil.sh", ""), (None, "")]:
        with saved_upload(io.BytesIO(clip), name, max_bytes=len(clip), max_seconds=10) as upload:
            assert upload.path.name == f"clip{suffix}" and upload.duration_s == pytest.approx(3.0)
            folder = upload.path.parent
        assert not folder.exists()
    with (
        pytest.raises(RequestError, match="larger than") as too_large,
        saved_upload(io.BytesIO(clip), "c.flac", max_bytes=len(clip) - 1, max_seconds=10),
    ):
        pass
    assert too_large.value.status == 413
    with (
        pytest.raises(RequestError, match="empty") as empty,
        saved_upload(io.BytesIO(b""), "c.wav", max_bytes=10, max_seconds=1),
    ):
        pass
    assert empty.value.status == 422


def test_a_wav_of_six_channels_is_sent_as_it_is(tmp_path):
    """A 5.1 WAV plays in Chromium as it is (checked with the browser: the audio element plays it, and the Web Audio
    API decodes its six channels); browsers mix surround down to the listener's speakers themselves."""
    assert browser_type(write_tone(tmp_path / "surround.wav", 0.5, channels=6)) == "audio/wav"

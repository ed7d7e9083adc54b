"""Files cut short (a copy that stopped, a download that broke off): their duration is what decodes, they are
flagged, listed by `stats` and `export`, and `index --strict` records them as failed. What C decoders print about
them is captured and kept with the file, never printed."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from pengi_search.audio import iter_windows
from pengi_search.audio_decoders import AudioDecodeError, DecodeReport
from pengi_search.audio_workers import Decoded, Job, decode_file
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_OK, EXIT_PARTIAL
from pengi_search.db import Store
from pengi_search.mpeg_frames import stated_frame_count

from .indexing import assert_consistent, write_tone, write_with_av

runner = CliRunner()
QUICK = ("--workers", "0", "--beam", "2", "--max-len", "3", "--device", "cpu", "--quiet")
SECONDS = 3.06


def tone(seconds: float = SECONDS) -> np.ndarray:
    t = np.arange(round(seconds * 44_100)) / 44_100
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def write_cut(path: Path, keep: float, *, seconds: float = SECONDS) -> Path:
    """A tone of `seconds` written by soundfile (format from the suffix), then cut to `keep` of its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds), 44_100)
    data = path.read_bytes()
    path.write_bytes(data[: round(len(data) * keep)])
    return path


MP3_FRAME_SAMPLES = 1152  # per MPEG-1 Layer III frame
MP3_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)  # by the header's bit rate index


def mp3_frames(stream: bytes) -> list[bytes]:
    """The frames of an MPEG-1 Layer III stream at 44.1 kHz (as soundfile writes it), each sized from its header."""
    frames = []
    while stream:
        size = 144_000 * MP3_KBPS[stream[2] >> 4] // 44_100 + (stream[2] >> 1 & 1)  # the last bit: padding
        frames.append(stream[:size])
        stream = stream[size:]
    return frames


def id3v2_tag(size: int) -> bytes:
    """An ID3v2 tag holding `size` bytes (none for 0), as a tagger puts it before the first frame."""
    syncsafe = bytes(size >> shift & 0x7F for shift in (21, 14, 7, 0))  # 7 bits a byte
    return b"ID3\x03\x00\x00" + syncsafe + bytes(size) if size else b""


def write_mp3(path: Path, bitrate_mode: str, *, counted: bool = True, tag_bytes: int = 0, keep: float = 1.0) -> int:
    """A tone of SECONDS as an MP3 written by soundfile (whose first frame is a Xing header with the frame count),
    without that frame unless `counted`, after an ID3v2 tag of `tag_bytes` and cut to `keep` of its bytes.
    Returns how many audio frames it holds whole."""
    with sf.SoundFile(path, "w", 44_100, 1, format="MP3", bitrate_mode=bitrate_mode, compression_level=0.5) as mp3:
        mp3.write(tone())
    xing, *audio = mp3_frames(path.read_bytes())
    stream = b"".join([xing, *audio] if counted else audio)
    stream = stream[: round(len(stream) * keep)]
    path.write_bytes(id3v2_tag(tag_bytes) + stream)
    ends = np.cumsum([len(frame) for frame in audio]) + (len(xing) if counted else 0)
    return int(np.sum(ends <= len(stream)))


def run(*args: object):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture()
def library(tmp_path) -> Path:
    root = tmp_path / "sounds"
    write_tone(root / "whole.wav", 2.0, freq=500)
    write_cut(root / "cut.wav", 1 / 7)
    write_cut(root / "cut.mp3", 1 / 7)
    return root


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".aiff"])
def test_a_cut_file_decodes_as_far_as_it_goes_and_says_so(tmp_path, suffix, capfd):
    report = DecodeReport()
    windows = list(iter_windows(write_cut(tmp_path / f"cut{suffix}", 1 / 7), report=report))
    assert len(windows) == 1 and report.duration_s < 0.5
    assert report.truncation() == f"truncated: header says {SECONDS:.2f} s, {report.duration_s:.2f} s decoded"
    assert capfd.readouterr().err == ""  # libmpg123's complaints were captured, not printed


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".flac", ".ogg"])
def test_a_whole_file_is_not_flagged(tmp_path, suffix):
    report = DecodeReport()
    list(iter_windows(write_cut(tmp_path / f"whole{suffix}", 1.0), report=report))
    assert report.truncation() is None
    assert report.duration_s == pytest.approx(SECONDS, abs=1e-3)


def noise(seconds: float) -> np.ndarray:
    """White noise: every second of it takes about as many bytes to encode."""
    return np.random.default_rng(0).uniform(-0.5, 0.5, round(seconds * 44_100)).astype(np.float32)


def test_a_cut_flac_fails_saying_how_far_it_decoded(tmp_path):
    """A FLAC cut short fails as corrupt (its decoder stops mid-frame), after the position its decoder reached:
    as far as reading it a little at a time gets, not the start of the 65,536-frame block that failed."""
    path = tmp_path / "cut.flac"
    sf.write(path, noise(3.0), 44_100)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 4])  # about 0.75 s
    with pytest.raises(AudioDecodeError) as failed:
        list(iter_windows(path))
    reached = 0
    with sf.SoundFile(path) as flac, pytest.raises(sf.LibsndfileError):
        while len(step := flac.read(256)):
            reached += len(step)
    assert 0.6 < reached / 44_100 < 0.8
    assert str(failed.value).endswith(f"corrupt or truncated audio data after {reached / 44_100:.2f} s")


def test_a_damaged_m4a_fails_saying_how_far_it_decoded(tmp_path):
    """The same for a file FFmpeg decodes: the failure comes after the samples decoded before it."""
    path = tmp_path / "damaged.m4a"
    write_with_av(path, noise(3.0)[None], 44_100, "aac", "mp4")
    data = bytearray(path.read_bytes())
    start = data.index(b"mdat") + len(data) // 3
    data[start : start + 2000] = bytes(2000)  # about a second in
    path.write_bytes(bytes(data))
    with pytest.raises(AudioDecodeError) as failed:
        list(iter_windows(path))
    reached = 0
    with av.open(str(path)) as container, pytest.raises(av.FFmpegError):
        for frame in container.decode(audio=0):
            reached += frame.samples
    assert 0.5 < reached / 44_100 < 1.5
    assert str(failed.value).endswith(f"corrupt or truncated audio data after {reached / 44_100:.2f} s")


def test_the_frame_count_an_mp3_states_is_read_from_its_first_frame(tmp_path):
    """Xing or Info (after the side information) or VBRI (at byte 36), after any ID3v2 tags and a stray byte."""
    header = b"\xff\xfb\x90\xc4"  # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, mono: 17 bytes of side information

    def first_frame(at: int, *fields: bytes) -> bytes:
        frame = bytearray(header + bytes(413))
        frame[at : at + sum(map(len, fields))] = b"".join(fields)
        return bytes(frame)

    def u32(value: int) -> bytes:
        return value.to_bytes(4, "big")

    info = first_frame(4 + 17, b"Info", u32(0b1111), u32(250))
    id3 = b"ID3\x04\x00\x10" + bytes((0, 0, 1, 0)) + bytes(128) + b"3DI" + bytes(7)  # 128 bytes and a footer
    cases = {
        info: 250,
        b"\x00" + info: 250,
        id3 + id3 + info: 250,
        first_frame(36, b"VBRI", bytes(10), u32(99)): 99,
        first_frame(4 + 17, b"Xing", u32(0b1110), u32(250)): None,  # its flags say the count is not there
        first_frame(4 + 32, b"Xing", u32(0b1111), u32(250)): None,  # where a stereo frame has it: not a Xing header
        header + bytes(413): None,
    }
    for data, count in cases.items():
        (tmp_path / "first.mp3").write_bytes(data)
        assert stated_frame_count(tmp_path / "first.mp3") == count, data[:40]


@pytest.mark.parametrize(("bitrate_mode", "tag_bytes"), [("CONSTANT", 4096), ("VARIABLE", 0)])
def test_an_mp3_that_states_no_length_is_read_to_its_end_and_not_flagged(tmp_path, bitrate_mode, tag_bytes):
    """Without a Xing, Info or VBRI frame count an MP3 has no stated length, only the decoder's estimate from its
    size and first frame's bit rate: too long by the bytes of an ID3 tag (a whole CBR file was flagged as cut), too
    short when the first frame's bit rate is above the stream's (libsndfile stopped there: most of a VBR file was
    lost). Every frame is decoded, and nothing is compared with the estimate."""
    path = tmp_path / "uncounted.mp3"
    frames = write_mp3(path, bitrate_mode, counted=False, tag_bytes=tag_bytes)
    report = DecodeReport()
    list(iter_windows(path, report=report))
    assert (report.header_frames, report.truncation()) == (None, None)
    assert report.decoded_frames == frames * MP3_FRAME_SAMPLES  # no delay or padding trimmed: nothing says how much


@pytest.mark.parametrize("suffix", [".mp2", ".mpga"])
def test_an_mp2_that_states_no_length_is_read_to_its_end_and_not_flagged_as_an_mp3_is(tmp_path, suffix):
    """Both decoders name MPEG audio of every layer "mp3", whatever the suffix, so an MP2 is held to the MP3 rule:
    libsndfile's estimate, long by the ID3 tag here, is not taken for its length (FFmpeg writes no frame count into
    MP2, so it is never flagged)."""
    path = tmp_path / f"tagged{suffix}"
    write_with_av(path, tone()[None], 44_100, "mp2", "mp2", "s16")
    path.write_bytes(id3v2_tag(1 << 16) + path.read_bytes())
    report = DecodeReport()
    list(iter_windows(path, report=report))
    assert (report.format, report.header_frames, report.truncation()) == ("mp3", None, None)
    assert len(tone()) <= report.decoded_frames < len(tone()) + 2 * MP3_FRAME_SAMPLES  # every frame, padding too


@pytest.mark.parametrize("bitrate_mode", ["CONSTANT", "VARIABLE"])
def test_a_cut_mp3_is_flagged_against_the_length_it_states(tmp_path, bitrate_mode):
    """A frame count is a length to hold the file to: cut in half, it is flagged. Without one there is nothing to
    hold it to: what is there is decoded, unflagged."""
    write_mp3(tmp_path / "counted.mp3", bitrate_mode, keep=1 / 2)
    report = DecodeReport()
    list(iter_windows(tmp_path / "counted.mp3", report=report))
    assert report.truncation() == f"truncated: header says {SECONDS:.2f} s, {report.duration_s:.2f} s decoded"
    assert report.duration_s < SECONDS * 0.6

    frames = write_mp3(tmp_path / "uncounted.mp3", bitrate_mode, counted=False, keep=1 / 2)
    report = DecodeReport()
    list(iter_windows(tmp_path / "uncounted.mp3", report=report))
    assert report.truncation() is None  # the last frame, cut, may decode in part
    assert frames * MP3_FRAME_SAMPLES <= report.decoded_frames <= (frames + 1) * MP3_FRAME_SAMPLES


def test_a_streamed_wav_without_a_size_is_not_flagged(tmp_path):
    path = write_cut(tmp_path / "streamed.wav", 1.0)
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at : at + 4] = b"\xff\xff\xff\xff"  # what a writer that cannot seek back leaves
    path.write_bytes(bytes(data))
    report = DecodeReport()
    list(iter_windows(path, report=report))
    assert report.truncation() is None and report.duration_s == pytest.approx(SECONDS, abs=1e-3)


def test_decoder_messages_come_with_the_decoded_file(tmp_path, capfd):
    path = write_cut(tmp_path / "cut.mp3", 1 / 2)
    with open(path, "ab") as out:
        out.write(b"not an mpeg frame " * 40)  # "Illegal Audio-MPEG-Header" on the way to the end
    (*_, decoded) = decode_file(Job(0, str(path)))
    assert isinstance(decoded, Decoded) and decoded.truncation is not None
    assert any("Xing stream size" in note for note in decoded.notes)
    assert capfd.readouterr().err == ""


def test_index_flags_cut_files_and_stats_and_export_list_them(library, tmp_path, tiny_model_dir, capfd):
    db = tmp_path / "lib.db"
    result = run("index", library, "--db", db, "--model", tiny_model_dir, *QUICK, "--json")
    assert result.exit_code == EXIT_OK, result.output
    summary = json.loads(result.stdout)
    assert summary["indexed"] == 3 and summary["failed"] == []
    flagged = {Path(item["path"]).name: item["note"] for item in summary["truncated"]}
    assert set(flagged) == {"cut.wav", "cut.mp3"}
    assert all(note.startswith(f"truncated: header says {SECONDS:.2f} s, 0.") for note in flagged.values())
    assert "Xing" not in capfd.readouterr().err  # nothing a C decoder printed reached the terminal

    with Store.open(str(db)) as store:
        cut = store.get_file(str(library / "cut.mp3"))
        assert cut.status == "indexed" and cut.duration_s < 0.5  # what decodes, not the header's 3.06 s
        assert cut.truncated == flagged["cut.mp3"]
        assert any(line.startswith("decoder: ") and "Xing" in line for line in cut.notes.splitlines())
        assert store.get_file(str(library / "whole.wav")).notes is None

    stats = json.loads(run("stats", "--db", db, "--json").stdout)
    assert stats["truncated_files"] == 2
    assert {Path(item["path"]).name: item["note"] for item in stats["truncated"]} == flagged
    text = run("stats", "--db", db).stdout
    assert (
        "truncated: 2 files decode shorter than their headers say\n" in text
        and f"cut.wav: {flagged['cut.wav']}" in text
    )

    rows = {Path(row["path"]).name: row for row in map(json.loads, run("export", "--db", db).stdout.splitlines())}
    assert [name for name, row in rows.items() if row["truncated"]] == ["cut.mp3", "cut.wav"]
    assert rows["cut.wav"]["notes"] == [flagged["cut.wav"]] and rows["whole.wav"]["notes"] == []

    long_enough = run("query", "a tone", "--db", db, "--model", tiny_model_dir, "--min-duration", "1", "--json")
    assert [Path(hit["path"]).name for hit in json.loads(long_enough.stdout)] == ["whole.wav"]


def test_index_warns_about_cut_files_and_shows_decoder_messages_with_verbose(library, tmp_path, tiny_model_dir):
    result = run("index", library, "--db", tmp_path / "lib.db", "--model", tiny_model_dir, *QUICK, "--verbose")
    assert result.exit_code == EXIT_OK
    assert f"warning: {library / 'cut.wav'}: truncated: header says {SECONDS:.2f} s" in result.stderr
    assert f"decoder {library / 'cut.mp3'}: Warning: Xing stream size off" in result.stderr
    quiet = run("index", library, "--db", tmp_path / "other.db", "--model", tiny_model_dir, *QUICK)
    assert "truncated" in quiet.stderr and "Xing" not in quiet.stderr


def test_strict_records_cut_files_as_failed(library, tmp_path, tiny_model_dir):
    db = tmp_path / "lib.db"
    result = run("index", library, "--db", db, "--model", tiny_model_dir, *QUICK, "--strict", "--json")
    assert result.exit_code == EXIT_PARTIAL
    summary = json.loads(result.stdout)
    assert summary["indexed"] == 1 and summary["truncated"] == []
    failed = {Path(item["path"]).name: item["error"] for item in summary["failed"]}
    assert set(failed) == {"cut.wav", "cut.mp3"} and all(
        r.startswith("truncated: header says") for r in failed.values()
    )
    with Store.open(str(db)) as store:
        record = store.get_file(str(library / "cut.mp3"))
        assert record.status == "error" and record.error.startswith("truncated: header says")
        assert "decoder: " in record.error  # what libmpg123 said stays with the reason
        assert store.truncated_files() == []
    assert_consistent(db)


def test_decoding_workers_capture_decoder_messages_too(tmp_path, tiny_model_dir, capfd):
    root = tmp_path / "sounds"
    write_cut(root / "cut.mp3", 1 / 7)
    db = tmp_path / "lib.db"
    result = run("index", root, "--db", db, "--model", tiny_model_dir, *QUICK[2:], "--workers", "1")
    assert result.exit_code == EXIT_OK, result.output
    assert "Xing" not in capfd.readouterr().err
    with Store.open(str(db)) as store:
        assert "Xing stream size" in store.get_file(str(root / "cut.mp3")).notes

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

from pengi_search.audio import AudioDecodeError, DecodeReport, iter_windows
from pengi_search.audio_workers import Decoded, Job, decode_file
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_OK, EXIT_PARTIAL
from pengi_search.db import Store

from .indexing import assert_consistent, write_tone, write_with_av

runner = CliRunner()
QUICK = ("--workers", "0", "--beam", "2", "--max-len", "3", "--device", "cpu", "--quiet")
SECONDS = 3.06


def write_cut(path: Path, keep: float, *, seconds: float = SECONDS) -> Path:
    """A tone of `seconds` written by soundfile (format from the suffix), then cut to `keep` of its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * 44_100)) / 44_100
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44_100)
    data = path.read_bytes()
    path.write_bytes(data[: round(len(data) * keep)])
    return path


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
    assert "truncated: 2 file(s)" in text and f"cut.wav: {flagged['cut.wav']}" in text

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
    failed = {Path(item["path"]).name: item["reason"] for item in summary["failed"]}
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

"""The sha256 of each audio file that an evaluation report records (`dataset.audio_sha256`): the library's own hash
of a file it indexed, while the file is as it was indexed, so that a large set is not read a second time for it;
any other file read and hashed. Either way the digest is that of the files' bytes, as hashlib gives it."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pengi_search import hashing
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_OK
from pengi_search.db import Store
from pengi_search.evaluation.datasets import audio_digest, indexed_sha256
from pengi_search.scan import stamp_of

from .indexing import write_tone
from .search_library import caption_library

runner = CliRunner()
QUICK = ["--device", "cpu", "--beam", 2, "--max-len", 3, "--batch-size", 4]


def sha256_of(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The names of the audio files read to hash them (by the evaluation, or the indexer it runs), in order."""
    read: list[str] = []
    real = hashing.sha256_hasher

    def counted(path: str | os.PathLike[str], stop: threading.Event | None = None) -> Any:
        if Path(path).suffix in (".wav", ".flac"):  # not the CSVs
            read.append(Path(path).name)
        return real(path, stop)

    monkeypatch.setattr(hashing, "sha256_hasher", counted)
    return read


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def rewrite(path: Path, freq: float) -> None:
    """Other bytes of the same length, with an mtime that differs from the one indexed, however coarse the clock."""
    before = os.stat(path)
    write_tone(path, 1.0, freq=freq)
    assert os.stat(path).st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 2_000_000_000))


def test_the_library_gives_the_sha256_of_a_file_it_indexed_while_the_file_is_unchanged(tmp_path, tiny_model_dir, reads):
    sounds = tmp_path / "sounds"
    captioned = {name: (1.0, ["a tone"]) for name in ("kept.wav", "changed.wav", "failed.wav")}
    db = str(tmp_path / "index.db")
    caption_library(db, sounds, tiny_model_dir, captioned)
    write_tone(sounds / "new.wav", 1.0, freq=999.0)
    rewrite(sounds / "changed.wav", 777.0)
    rewrite(sounds / "failed.wav", 555.0)
    with Store.open(db) as store:  # a run failed on its new bytes: its row keeps the hash of the old ones
        store.record_file_error(str(sounds / "failed.wav"), "broken", **_stamp(sounds / "failed.wav"))
    paths = {name: sounds / name for name in ("kept.wav", "changed.wav", "failed.wav", "new.wav")}
    reads.clear()  # those of the library's making

    with Store.open(db, read_only=True) as store:
        sha256 = indexed_sha256(store, str(sounds))
        got = {name: sha256(path) for name, path in paths.items()}

    assert got == {name: sha256_of(path) for name, path in paths.items()}
    assert reads == ["changed.wav", "failed.wav", "new.wav"]


def _stamp(path: Path) -> dict[str, float]:
    size, mtime = stamp_of(os.stat(path))
    return {"size": size, "mtime": mtime}


def test_eval_retrieval_reads_no_audio_file_that_it_has_just_indexed(tmp_path, tiny_model_dir, reads):
    """The indexer hashes every file of the set as it decodes it: the report takes those hashes, so each file is
    read once."""
    for i, name in enumerate(("low.wav", "high.flac")):
        write_tone(tmp_path / "audio" / name, 2.0, freq=200.0 + 300 * i)
    captions = tmp_path / "captions.csv"
    captions.write_text("file_name,caption\nlow.wav,a low tone\nhigh.flac,a high tone\n")
    out = tmp_path / "run"
    args = ["eval", "retrieval", captions, "--audio-root", tmp_path / "audio", "-o", out, "--workers", 0]
    result = run(*args, "--model", tiny_model_dir, *QUICK)
    assert result.exit_code == EXIT_OK, result.output

    report = json.loads((out / "report.json").read_text())
    named = [(name, tmp_path / "audio" / name) for name in ("low.wav", "high.flac")]
    assert report["dataset"]["audio_sha256"] == audio_digest(named, sha256_of)
    assert sorted(reads) == ["high.flac", "low.wav"]


def test_eval_classify_reads_only_the_files_its_library_has_not_indexed_as_they_are(tmp_path, tiny_model_dir, reads):
    sounds = tmp_path / "sounds"
    db = str(tmp_path / "index.db")
    caption_library(db, sounds, tiny_model_dir, {"kept.wav": (1.0, ["a bell"]), "changed.wav": (1.0, ["a dog"])})
    write_tone(sounds / "new.wav", 1.0, freq=999.0)
    rewrite(sounds / "changed.wav", 777.0)
    truth = tmp_path / "truth.csv"
    truth.write_text("file,label\nkept.wav,bell\nchanged.wav,dog\nnew.wav,dog\n")
    reads.clear()  # those of the library's making

    out = tmp_path / "out"
    result = run("eval", "classify", sounds, "--truth", truth, "--db", db, "--model", tiny_model_dir, *QUICK, "-o", out)
    assert result.exit_code == EXIT_OK, result.output

    report = json.loads((out / "report.json").read_text())
    named = [(name, sounds / name) for name in ("kept.wav", "changed.wav", "new.wav")]
    assert report["dataset"]["audio_sha256"] == audio_digest(named, sha256_of)
    assert sorted(reads) == ["changed.wav", "new.wav"]

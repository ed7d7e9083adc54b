"""Helpers for the indexer tests: generated audio files, quick options for the tiny model, consistency checks."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf

from indexer.hold_points import HOLD_ENV
from indexer.run_report import IndexOptions
from pengi_search.db import VECTOR_KINDS
from pengi_search.library import Library
from pengi_search.vectors import VectorIndex


def write_tone(path: Path, seconds: float, *, sr: int = 44_100, channels: int = 1, freq: float = 440.0) -> Path:
    """A sine tone with a little seeded noise (so that files with other settings differ), written by soundfile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sr))) / sr
    rng = np.random.default_rng(int(freq * 1000 + seconds * 10 + channels))
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
    data = np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1) if channels > 1 else mono
    sf.write(path, data.astype(np.float32), sr)
    return path


class CountingProgress:
    """A `window_batches.Progress` that adds up what it is told: `seen` holds the files `start` announced ("total"),
    the windows `counted`, and the files and windows `advance`d."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {"files": 0, "windows": 0, "counted": 0}

    def start(self, files: int) -> None:
        self.seen["total"] = files

    def promised(self, windows: int) -> None:
        pass

    def counted(self, windows: int, promised: int | None = None) -> None:
        self.seen["counted"] += windows

    def advance(self, files: int = 0, windows: int = 0) -> None:
        self.seen["files"] += files
        self.seen["windows"] += windows


def write_tree(root: Path) -> Path:
    """Three files of four windows: `short.wav` (1.5 s), `birds/long.wav` (9 s: two windows), `birds/tone.flac`."""
    write_tone(root / "short.wav", 1.5, freq=330)
    write_tone(root / "birds" / "long.wav", 9.0, sr=22_050, freq=880)
    write_tone(root / "birds" / "tone.flac", 3.0, sr=22_050, freq=550)
    return root


def write_with_av(
    path: Path, channels: np.ndarray, rate: int, codec: str, fmt: str | None = None, sample_format: str = "fltp"
) -> None:
    """Encode (channels, n) float samples with FFmpeg; `path` may also be a file object."""
    layout = {1: "mono", 2: "stereo"}[len(channels)]
    if sample_format in ("s16", "s16p"):
        channels = np.round(channels * 32767).astype(np.int16)
    if not sample_format.endswith("p"):  # a packed format: the channels interleaved in one row
        channels = channels.T.reshape(1, -1)
    with av.open(path, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels), format=sample_format, layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def make_tiny_sentence_transformer(directory: Path, seed: int = 0) -> Path:
    """A sentence-transformers model (one-layer BERT, mean pooling, 16 dimensions) saved locally: nothing downloaded."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    bert_dir = directory / "bert"
    bert_dir.mkdir(parents=True)
    words = ["a", "the", "dog", "bark", "rain", "water", "bell", "sound", "of", "is", "in", "audio"]
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    model = SentenceTransformer(modules=[Transformer(str(bert_dir), max_seq_length=32), Pooling(16)], device="cpu")
    model.save(str(directory / "model"))
    return directory / "model"


def quick_options(roots: list[Path], db: Path, model_dir: Path, **overrides: Any) -> IndexOptions:
    """Options that keep the tiny model fast: short answers, narrow beams, decoding in this process."""
    settings: dict[str, Any] = {"workers": 0, "batch_size": 4, "beam": 2, "max_len": 3, "device": "cpu"}
    settings.update(overrides)
    return IndexOptions(roots=[str(root) for root in roots], db=str(db), model=str(model_dir), **settings)


def assert_consistent(db: Path) -> None:
    """The FAISS files on disk hold exactly the database's vectors, and every window has both kinds."""
    with Library.open(str(db)) as library:
        ids = {kind: library.store.vector_ids(kind) for kind in VECTOR_KINDS}
        assert np.array_equal(ids["text"], ids["audio"])
        for kind in VECTOR_KINDS:
            path = library.index_path(kind)
            if ids[kind].size == 0 and not path.exists():
                continue
            index, _ = VectorIndex.load(path)
            assert np.array_equal(index.ids(), ids[kind]), f"{kind} FAISS file differs from the database"


def db_content(db: Path) -> list[dict[str, Any]]:
    """Files, windows and texts as exported, without what differs between runs (times, run ids)."""
    with Library.open(str(db)) as library:
        rows = list(library.store.export_rows())
    for row in rows:
        row.pop("indexed_at")
    return rows


def assert_same_content(got: Path, expected: Path) -> None:
    """Two libraries hold the same files, windows and texts; answer scores agree to float32 rounding.

    Float32 matrix products on the CPU may round differently with the batch size, which moves scores (and vectors)
    by ~1e-6; the generated texts must not change.
    """
    (got_rows, got_scores), (want_rows, want_scores) = (
        _without_scores(db_content(got)),
        _without_scores(db_content(expected)),
    )
    assert got_rows == want_rows
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    for kind in VECTOR_KINDS:
        got_vectors, want_vectors = window_vectors(got, kind), window_vectors(expected, kind)
        assert got_vectors.keys() == want_vectors.keys()
        for key, vector in want_vectors.items():
            np.testing.assert_allclose(got_vectors[key], vector, atol=1e-5)


def _without_scores(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[float]]:
    scores = []
    for row in rows:
        for window in row["windows"]:
            for text in window["texts"]:
                scores.append(text.pop("score"))
    return rows, scores


def window_vectors(db: Path, kind: str) -> dict[tuple[str, int], np.ndarray]:
    """(path, window index) -> stored vector, to compare libraries whose window ids differ."""
    with Library.open(str(db)) as library:
        ids, vectors = library.store.vectors(kind)
        details = library.store.window_details(ids)
    return {(details[i].path, details[i].index): vector for i, vector in zip(ids.tolist(), vectors, strict=True)}


# -- indexer processes killed with SIGKILL, or stopped by SIGINT and SIGTERM ---------------------------------------

INDEXED = "SELECT count(*) FROM audio_files WHERE status = 'indexed'"
CAPTIONED = "SELECT count(*) FROM window_vectors WHERE kind = 'text'"


def write_clips(root: Path, count: int) -> None:
    """`count` 2 s tones of different pitches, clip-00.wav, clip-01.wav, ... (one window each)."""
    for n in range(count):
        write_tone(root / f"clip-{n:02d}.wav", 2.0, freq=100 + 37 * n)


def indexer_command(root: Path, db: Path, model_dir: Path, *, max_len: int, workers: int = 0) -> list[str]:
    """`python -m indexer` over `root` with the tiny model, one window a batch (so a kill lands between batches)."""
    command = [sys.executable, "-m", "indexer", str(root), "--db", str(db), "--model", str(model_dir)]
    command += ["--batch-size", "1", "--workers", str(workers), "--beam", "2", "--max-len", str(max_len)]
    return [*command, "--device", "cpu", "--quiet"]


HANG_S = 300  # what no step of a subprocess here takes, however loaded the machine


def signal_when(
    command: list[str],
    ready: Callable[[], bool],
    number: int,
    *,
    group: bool = False,
    env: dict[str, str] | None = None,
    target: Callable[[int], int] | None = None,
    ends_within: float = HANG_S,
) -> tuple[int, str]:
    """Run `command` (with `env` added to the environment), send it signal `number` as soon as `ready()` and wait for
    it to end: its exit status (negative: the signal that ended it) and what it wrote on stderr. With `group` the
    signal goes to every process it started too, as a terminal's Ctrl-C and systemd's stop do; with `target`, to
    the process `target(pid)` names, one that the command started (a torchrun worker). Five minutes bound each
    wait, only against a hang: a loaded machine takes half a minute to start a training run; `ends_within` bounds
    the wait after the signal. Whatever the command started and left running is killed at the end."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=None if env is None else {**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + HANG_S
        while not ready() and process.poll() is None:
            assert time.monotonic() < deadline, f"not ready within {HANG_S} s: {' '.join(command)}"
            time.sleep(0.005)
        assert process.poll() is None, f"ended before it was ready to be signalled: {' '.join(command)}"
        if group:
            os.killpg(process.pid, number)
        else:
            os.kill(process.pid if target is None else target(process.pid), number)
        _, stderr = process.communicate(timeout=ends_within)
    finally:
        kill_session(process)
    return process.returncode, stderr.decode()


def kill_session(process: subprocess.Popen) -> None:
    """Kill `process` and what it started (its session, its group, and each process below it, in a session of its
    own too: torchrun starts each worker in one): nothing of a test outlives it."""
    below = _descendants(process.pid)  # found while they are still its: once it is gone, they are init's
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux's /proc; none where it cannot be read)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *_descendants(child)]
    return found


def kill_when(command: list[str], ready: Callable[[], bool], env: dict[str, str] | None = None) -> None:
    """Run `command` and SIGKILL it as soon as `ready()`; it must die of the signal."""
    status, stderr = signal_when(command, ready, signal.SIGKILL, env=env)
    assert status == -signal.SIGKILL, stderr


class HeldRun:
    """An index run that waits at `point` (`indexer.hold_points`) until a signal ends it: `env` for the run,
    `reached` for `signal_when`. A signal sent then lands mid-way, however fast or loaded the machine."""

    def __init__(self, point: str, folder: Path) -> None:
        self.marker = folder / f"held at {point}"
        self.env = {HOLD_ENV: f"{point}:{self.marker}"}

    def reached(self) -> bool:
        return self.marker.exists()


def send_to_self(number: int) -> None:
    """Signal this process; its handler runs before this returns (unhandled, SIGTERM would end pytest itself)."""
    assert signal.getsignal(number) not in (signal.SIG_DFL, signal.SIG_IGN), f"nothing handles signal {number}"
    signal.raise_signal(number)


def count_rows(db: Path, sql: str) -> int:
    """`sql`'s count in the database at `db`, read-only while another process writes; 0 before it exists."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0  # not created yet

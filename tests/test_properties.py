"""Property-based tests (`hypothesis`): random file names (any bytes), random and broken audio, random label files
and random query filters. The invariants: no command ends in an unhandled exception (exit codes 0-3, never a
traceback), the database and the FAISS files agree after every run, and nothing already indexed is lost.

Bounded for CI (see `tests/properties.py`): a fixed number of seeded examples per property, the whole module well
under a minute on two idle cores.
"""

from __future__ import annotations

import base64
import fnmatch
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import event, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from pengi_search.audio_workers import Decoded, Failed, Job, Windows, decode_file
from pengi_search.classify import LabelsError, read_labels
from pengi_search.cli import app
from pengi_search.db import Store
from pengi_search.search_filters import Filters
from pengi_search.truth import read_truth

from .indexing import assert_consistent, write_tone
from .properties import bounded

runner = CliRunner()
EXIT_CODES = {0, 1, 2, 3}
QUICK = ("--workers", "0", "--beam", "1", "--max-len", "2", "--device", "cpu", "--quiet")

# A file or folder name: any bytes but "/" and NUL (which no POSIX name holds), not "." or "..".
NAME_BYTES = st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_"))
NAMES = NAME_BYTES.filter(lambda b: b not in (b".", b".."))
SUFFIXES = st.sampled_from([b".wav", b".WAV", b".flac", b".mp3", b".txt"])


def invoke(*args: object):
    """Run a command; it must end with one of the documented exit codes and never with a traceback."""
    result = runner.invoke(app, [os.fspath(arg) if isinstance(arg, Path) else str(arg) for arg in args])
    assert result.exit_code in EXIT_CODES, (args, result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def tone_bytes(seconds: float, sample_rate: int, channels: int, fmt: str, subtype: str | None = None) -> bytes:
    t = np.arange(max(1, round(seconds * sample_rate))) / sample_rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t)
    data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    out = io.BytesIO()
    sf.write(out, data.astype(np.float32), sample_rate, format=fmt, subtype=subtype)
    return out.getvalue()


def write_bytes(folder: bytes, name: bytes, data: bytes) -> str:
    path = folder + b"/" + name
    with open(path, "wb") as out:
        out.write(data)
    return os.fsdecode(path)


# ---------------------------------------------------------------------------------------------------------------
# Random and broken audio


@st.composite
def audio_bytes(draw: st.DrawFn) -> bytes:
    """A real file (WAV, FLAC or MP3 of random length, rate and channels), often broken: cut at a random byte,
    its header bytes overwritten, junk appended; or bytes that are no audio at all."""
    kind = draw(st.sampled_from(["wav", "flac", "mp3", "junk"]))
    if kind == "junk":
        return draw(st.binary(max_size=2000))
    seconds = draw(st.floats(0.0005, 1.0))
    rate = draw(st.sampled_from([8000, 22050, 44100, 48000]))
    channels = draw(st.integers(1, 3)) if kind != "mp3" else draw(st.integers(1, 2))
    data = bytearray(tone_bytes(seconds, rate, channels, kind.upper() if kind != "mp3" else "MP3"))
    for _ in range(draw(st.integers(0, 3))):  # damage the header
        at = draw(st.integers(0, min(len(data), 64) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        data += draw(st.binary(max_size=200))
    return bytes(data)


@bounded(60)
@given(data=audio_bytes(), suffix=SUFFIXES)
def test_decoding_any_bytes_ends_in_one_clear_message(tmp_path, data, suffix):
    path = write_bytes(os.fsencode(tempfile.mkdtemp(dir=tmp_path)), b"clip" + suffix, data)
    messages = list(decode_file(Job(0, path)))
    *windows, last = messages
    assert isinstance(last, Decoded | Failed) and all(isinstance(m, Windows) for m in windows)
    event(type(last).__name__ if not isinstance(last, Decoded) or not last.truncation else "Decoded, truncated")
    if isinstance(last, Failed):
        assert last.reason and isinstance(last.reason, str)
        return
    sent = [window for message in windows for window in message.windows]
    assert last.count == len(sent) >= 1 and last.duration_s > 0
    assert all(np.isfinite(window.samples).all() for window in sent)
    assert last.truncation is None or last.truncation.startswith("truncated: header says ")
    assert all(isinstance(note, str) and note for note in last.notes)


# ---------------------------------------------------------------------------------------------------------------
# Random label files


LABEL_TEXT = st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=12), max_size=8).map("\n".join)


@bounded(100)
@given(content=st.one_of(st.binary(max_size=200), LABEL_TEXT.map(str.encode)), suffix=st.sampled_from([".txt", ".csv"]))
def test_a_labels_file_gives_labels_or_one_usage_error(tmp_path, content, suffix):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / f"labels{suffix}"
    path.write_bytes(content)
    try:
        labels = read_labels(path)
    except LabelsError as error:
        assert error.exit_code == 2 and str(error)
    else:
        assert labels and len(set(labels)) == len(labels) and all(label == label.strip() and label for label in labels)
    try:
        read_truth(path)
    except LabelsError as error:
        assert error.exit_code == 2


# ---------------------------------------------------------------------------------------------------------------
# Random names through the store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[Store]:
    with Store.open(str(tmp_path_factory.mktemp("names") / "lib.db")) as opened:
        yield opened


@bounded(100)
@given(folders=st.lists(NAMES, min_size=1, max_size=3), names=st.lists(NAMES, min_size=1, max_size=6, unique=True))
def test_any_names_are_stored_found_and_removed_exactly(store, folders, names):
    top = f"/lib{store.start_run()}"  # each example in a folder of its own
    folder = top + "/" + os.fsdecode(b"/".join(folders))
    sibling = folder + "x"
    paths = [f"{folder}/{os.fsdecode(name)}" for name in names]
    for path in [*paths, f"{sibling}/other.wav"]:
        store.upsert_file(path, size=1, mtime=1.0)
    assert [record.path for record in store.files_under(folder)] == sorted(paths)
    assert all(store.get_file(path).path == path for path in paths)
    assert {os.fsencode(p) for p in store.all_file_stamps(under=folder)} == {os.fsencode(p) for p in paths}
    assert store.remove(folder) == len(paths)
    assert [record.path for record in store.files_under(top)] == [f"{sibling}/other.wav"]


# ---------------------------------------------------------------------------------------------------------------
# Indexing trees with random names and random content, twice


@dataclass(frozen=True)
class Planted:
    name: bytes
    kind: str  # "tone", "empty", "junk", "cut"
    seconds: float


def planted_bytes(item: Planted) -> bytes:
    if item.kind == "empty":
        return b""
    if item.kind == "junk":
        return bytes(range(256)) * 3
    whole = tone_bytes(item.seconds, 22050, 1, "WAV")
    return whole if item.kind == "tone" else whole[: len(whole) // 3]


PLANTED = st.builds(
    Planted,
    name=st.tuples(NAMES, SUFFIXES).map(b"".join),
    kind=st.sampled_from(["tone", "tone", "empty", "junk", "cut"]),
    seconds=st.sampled_from([0.3, 1.2, 7.5]),
)
TREES = st.lists(PLANTED, min_size=1, max_size=4, unique_by=lambda item: item.name)


def plant(root: bytes, items: list[Planted]) -> None:
    os.makedirs(root, exist_ok=True)
    for item in items:
        write_bytes(root, item.name, planted_bytes(item))


def indexed_rows(db: Path) -> dict[str, dict]:
    rows = map(json.loads, invoke("export", "--db", db).stdout.splitlines())
    return {row["path"]: row for row in rows if row["status"] == "indexed"}


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> Path:
    return tiny_model_dir


@bounded(6)
@given(folder=NAMES, first=TREES, second=TREES)
def test_indexing_random_trees_never_fails_the_run_nor_loses_what_was_indexed(tmp_path, model, folder, first, second):
    work = os.fsencode(tempfile.mkdtemp(dir=tmp_path))
    root, db = work + b"/" + folder, Path(os.fsdecode(work)) / "lib.db"
    plant(root, first)
    run = invoke("index", os.fsdecode(root), "--db", db, "--model", model, *QUICK)
    event(f"first run: exit code {run.exit_code}")
    if not any(_audio(item.name) for item in first):  # nothing a walk takes: no library is made of it
        assert run.exit_code == 2 and not db.exists()
        return
    assert run.exit_code in (0, 3)
    assert_consistent(db)
    before = indexed_rows(db)
    for path, row in before.items():  # stored as found: the very bytes of the name
        assert os.fsencode(path).startswith(root + b"/")
        assert "path_bytes" not in row or base64.b64decode(row["path_bytes"]) == os.fsencode(path)
    good = {os.fsdecode(root + b"/" + item.name) for item in first if item.kind == "tone" and _audio(item.name)}
    assert good <= before.keys()

    extra = [item for item in second if item.name not in {planted.name for planted in first}]
    plant(root + b"/more", extra)
    again = invoke("index", os.fsdecode(root), "--db", db, "--model", model, *QUICK)
    assert again.exit_code in (0, 3)
    assert_consistent(db)
    after = indexed_rows(db)
    for path, row in before.items():  # unchanged files keep what was indexed, to the word
        assert after[path]["windows"] == row["windows"]
    assert invoke("stats", "--db", db, "--json").exit_code == 0
    if after:
        hits = invoke("query", "a tone", "--db", db, "--model", model, "--json", "-k", "50")
        assert {hit["path"] for hit in json.loads(hits.stdout)} == after.keys()
        one = min(after)
        alike = invoke("similar", one, "--db", db, "--model", model, "--json", "-k", "50")
        assert alike.exit_code == 0 and {hit["path"] for hit in json.loads(alike.stdout)} == after.keys() - {one}
        assert invoke("remove", one, "--db", db).exit_code == 0
        assert_consistent(db)
        assert indexed_rows(db).keys() == after.keys() - {one}


def _audio(name: bytes) -> bool:
    """An audio file's name that a walk takes: a hidden one (".x.wav") it passes over, as it does without --hidden."""
    return name.lower().endswith((b".wav", b".flac", b".mp3")) and not name.startswith(b".")


# ---------------------------------------------------------------------------------------------------------------
# Random query filters


@pytest.fixture(scope="module")
def searchable(tmp_path_factory, model) -> Path:
    root = tmp_path_factory.mktemp("filters") / "sounds"
    for name, seconds in (("dogs/bark.wav", 1.0), ("dogs/howl.flac", 8.0), ("rain.wav", 3.0), ("a [b]/c*.wav", 0.5)):
        write_tone(root / name, seconds, freq=200 + 60 * seconds)
    db = root.parent / "lib.db"
    assert invoke("index", root, "--db", db, "--model", model, *QUICK).exit_code == 0
    return db


FILTER_TEXT = st.text(alphabet=st.sampled_from("ab*?[]/.-_ \\!wavflc\udcff"), max_size=10)
FILTERS = st.fixed_dictionaries(
    {},
    optional={
        "-k": st.integers(-2, 60),
        "--by": st.sampled_from(["file", "window", "foo"]),
        "--min-score": st.floats(allow_nan=True, allow_infinity=True),
        "--path": FILTER_TEXT,
        "--ext": FILTER_TEXT,
        "--min-duration": st.floats(-1, 10),
        "--max-duration": st.floats(-1, 10),
    },
)


@bounded(40)
@given(text=st.text(max_size=20), filters=FILTERS)
def test_any_query_filters_give_results_that_pass_them_or_a_clear_error(searchable, model, text, filters):
    options = [str(part) for option, value in filters.items() for part in (option, value)]
    result = invoke("query", text, "--db", searchable, "--model", model, "--json", *options)
    event(f"exit code {result.exit_code}")
    if result.exit_code != 0:
        assert result.stderr.startswith(("error:", "Usage:")) or "Error" in result.stderr, result.output
        return
    hits = json.loads(result.stdout)
    event("some results" if hits else "no results")
    assert len(hits) <= filters.get("-k", 10)
    parsed = Filters.from_options(
        min_score=filters.get("--min-score"),
        path=filters.get("--path"),
        ext=filters.get("--ext"),
        min_duration=filters.get("--min-duration"),
        max_duration=filters.get("--max-duration"),
    )
    with Store.open(str(searchable)) as store:
        for hit in hits:
            record = store.get_file(hit["path"])
            assert parsed.min_score is None or hit["score"] >= parsed.min_score
            assert parsed.min_duration_s is None or record.duration_s >= parsed.min_duration_s
            assert parsed.max_duration_s is None or record.duration_s <= parsed.max_duration_s
            assert parsed.path_glob is None or fnmatch.fnmatch(hit["path"], parsed.path_glob)
            assert parsed.extensions is None or Path(hit["path"]).suffix.lower() in parsed.extensions
    if filters.get("--by", "file") == "file":
        assert len({hit["path"] for hit in hits}) == len(hits)


@bounded(8)
@given(content=st.one_of(st.binary(max_size=100), LABEL_TEXT.map(str.encode)))
def test_classify_with_any_labels_file_answers_or_names_the_problem(searchable, model, tmp_path, content):
    labels = Path(tempfile.mkdtemp(dir=tmp_path)) / "labels.txt"
    labels.write_bytes(content)
    sound = searchable.parent / "sounds" / "rain.wav"
    result = invoke("classify", sound, "--labels", labels, "--db", searchable, "--model", model, *QUICK, "--json")
    event(f"exit code {result.exit_code}")
    if result.exit_code == 0:
        answer = json.loads(result.stdout)
        assert answer["labels"] == read_labels(labels) and answer["results"][0]["source"] == "index"
    else:
        assert result.exit_code == 2 and result.stderr.startswith("error:")

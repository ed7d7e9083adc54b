"""The same problem with an input reads the same from every command: a path that is not there (`describe` said `no
such file or folder`, `index` `cannot read (No such file or directory)`, `model import` `no such checkpoint file`
with exit code 1), and a text file that is not UTF-8 (`classify` said `byte 62 (line 1) is invalid`, 62 being an
offset, `train init` `not UTF-8 text (invalid start byte)`, `model import --config` a bare codec error)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.errors import EXIT_USAGE
from trainer.data import ManifestError, read_manifest

runner = CliRunner()

LATIN_1 = "file,label\ncafé.wav,dog\n".encode("latin-1")  # é is byte 0xe9: line 2, column 4
NOT_UTF8 = "not UTF-8 text: byte 0xe9 at line 2, column 4; save it as UTF-8"


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """A folder with a clip (never decoded: every case fails before) and a good labels file; no model, no library."""
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(tmp_path / "home"))
    (tmp_path / "clip.wav").write_bytes(b"RIFF")
    (tmp_path / "labels.txt").write_text("dog\n")
    (tmp_path / "labels.csv").write_text("file,label\nclip.wav,dog\n")
    (tmp_path / "captions.csv").write_text("file,caption\nclip.wav,a dog barks\n")
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    return tmp_path


def run(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


MISSING = {  # name: (the command line, with {gone} for the missing path; what it names missing)
    "index": (("index", "{gone}", "--db", "{here}/lib.db"), "file or folder"),
    "describe": (("describe", "{gone}"), "file or folder"),
    "ask": (("ask", "{gone}", "what is it?"), "file or folder"),
    "classify": (("classify", "{gone}", "--labels", "{here}/labels.txt"), "file or folder"),
    "classify --labels": (("classify", "{here}/clip.wav", "--labels", "{gone}"), "file"),
    "classify --truth": (("classify", "{here}/clip.wav", "--labels", "{here}/labels.txt", "--truth", "{gone}"), "file"),
    "similar": (("similar", "{gone}", "--db", "{here}/lib.db"), "file or folder"),
    "eval retrieval": (("eval", "retrieval", "{gone}"), "file"),
    "eval retrieval --audio-root": (("eval", "retrieval", "{here}/captions.csv", "--audio-root", "{gone}"), "folder"),
    "eval classify --truth": (("eval", "classify", "{here}", "--truth", "{gone}"), "file"),
    "eval compare": (("eval", "compare", "{gone}", "{here}/labels.csv"), "file"),
    "train": (("train", "{gone}"), "file"),
    "train init": (("train", "init", "{gone}", "--audio-root", "{here}"), "file"),
    "train init --audio-root": (("train", "init", "{here}/labels.csv", "--audio-root", "{gone}"), "folder"),
    "model import": (("model", "import", "{gone}"), "file"),
    "model import --config": (("model", "import", "{here}/checkpoint.pth", "--config", "{gone}"), "file"),
    "serve --root": (("serve", "--root", "{gone}", "--port", "0"), "folder"),
}


@pytest.mark.parametrize("name", MISSING)
def test_a_missing_input_is_said_one_way_by_every_command(here, name):
    args, what = MISSING[name]
    gone = here / "gone"
    result = run(*(arg.format(gone=gone, here=here) for arg in args))
    assert (result.exit_code, result.stderr) == (EXIT_USAGE, f"error: {gone}: no such {what}\n")


@pytest.mark.parametrize("name", MISSING)
def test_every_path_given_is_named_as_typed(here, monkeypatch, name):
    """`./gone` keeps its `./`, whatever option or argument takes it: a path option said it as `gone` (pathlib's
    text), where audio inputs were already said as typed."""
    monkeypatch.chdir(here)
    args, what = MISSING[name]
    result = run(*(arg.format(gone="./gone", here=here) for arg in args))
    assert (result.exit_code, result.stderr) == (EXIT_USAGE, f"error: ./gone: no such {what}\n")


@pytest.mark.parametrize(
    ("args", "given"),
    [
        (("classify", "{here}/clip.wav", "--labels", "{given}"), "./latin-1.txt"),  # read as labels
        (("eval", "compare", "{given}", "{given}"), "./latin-1.txt"),  # read as reports
        (("train", "{given}"), "./latin-1.txt"),  # read as a configuration
        (("classify", "{here}/clip.wav", "--labels", "{here}/labels.txt", "--output", "{given}"), "./folder"),
        (("export", "--output", "{given}"), "./folder"),  # a folder where a file is to be written
    ],
)
def test_a_path_given_is_named_as_typed_in_what_is_said_of_the_file(here, monkeypatch, args, given):
    monkeypatch.chdir(here)
    (here / "latin-1.txt").write_bytes(LATIN_1)  # no labels, report or configuration
    (here / "folder").mkdir()
    result = run(*(arg.format(given=given, here=here) for arg in args))
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.startswith(f"error: {given}: ")


def test_an_empty_path_is_refused_by_every_option_as_by_audio_inputs(here):
    """Path("") is the current folder: `--labels "$UNSET"` would read it, `-o "$UNSET"` write the report there."""
    for args in (
        ("classify", here / "clip.wav", "--labels", ""),
        ("eval", "retrieval", here / "captions.csv", "-o", ""),
    ):
        result = run(*args)
        assert result.exit_code == EXIT_USAGE
        assert "the path is empty (write . for the current folder)" in result.stderr


def test_a_folder_where_a_file_is_wanted_says_so(here):
    result = run("classify", here / "clip.wav", "--labels", here)
    assert (result.exit_code, result.stderr) == (EXIT_USAGE, f"error: {here}: a folder, not a file\n")
    result = run("model", "import", here)
    said = f"error: {here}: a folder, not a file; import takes a released-format .pth file\n"
    assert (result.exit_code, result.stderr) == (EXIT_USAGE, said)


NOT_UTF8_READERS = {  # name: (the file's name, the command line reading it as {file})
    "classify --labels": ("labels.csv", ("classify", "{here}/clip.wav", "--labels", "{file}")),
    "eval classify --truth": ("truth.csv", ("eval", "classify", "{here}", "--truth", "{file}")),
    "eval retrieval captions": ("captions.csv", ("eval", "retrieval", "{file}")),
    "eval compare": ("report.json", ("eval", "compare", "{file}", "{file}")),
    "train init": ("clips.csv", ("train", "init", "{file}", "--audio-root", "{here}")),
    "train config": ("config.yaml", ("train", "{file}")),
    "model import --config": ("config.json", ("model", "import", "{here}/checkpoint.pth", "--config", "{file}")),
}


@pytest.mark.parametrize("name", NOT_UTF8_READERS)
def test_a_text_file_that_is_not_utf8_names_its_first_bad_byte_where_an_editor_shows_it(here, name):
    file_name, args = NOT_UTF8_READERS[name]
    bad = here / "latin-1" / file_name
    bad.parent.mkdir()
    bad.write_bytes(LATIN_1)
    result = run(*(arg.format(file=bad, here=here) for arg in args))
    assert (result.exit_code, result.stderr) == (EXIT_USAGE, f"error: {bad}: {NOT_UTF8}\n")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("name", NOT_UTF8_READERS)
def test_a_utf16_text_file_is_named_utf16(here, name, encoding):
    """As Windows Notepad saves "Unicode": its byte-order mark, not "byte 0xff at line 1", says what it is."""
    file_name, args = NOT_UTF8_READERS[name]
    bad = here / encoding / file_name
    bad.parent.mkdir()
    bad.write_bytes(("\ufeff" + LATIN_1.decode("latin-1")).encode(encoding))
    result = run(*(arg.format(file=bad, here=here) for arg in args))
    said = f"error: {bad}: UTF-16 text, not UTF-8; save it as UTF-8\n"
    assert (result.exit_code, result.stderr) == (EXIT_USAGE, said)


MANIFESTS = {  # suffix: a good start, rows after which a byte that is not UTF-8 comes
    ".csv": "audio,task,answer\n" + "a.wav,caption,a dog barks\n" * 1000,
    ".jsonl": '{"audio": "a.wav", "task": "caption", "answer": "a dog barks"}\n' * 1000,
}


@pytest.mark.parametrize("suffix", MANIFESTS)
def test_a_manifest_read_as_a_stream_names_the_bad_byte_from_the_start_of_the_file(tmp_path, suffix):
    """A stream's decoding error counts from its last buffer: past the first 8 KiB it would name a wrong place."""
    manifest = tmp_path / f"train{suffix}"
    good = MANIFESTS[suffix]
    manifest.write_bytes(good.encode() + "é".encode("latin-1"))
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    line = good.count("\n") + 1
    assert caught.value.reason == f"not UTF-8 text: byte 0xe9 at line {line}, column 1; save it as UTF-8"


def test_a_manifest_in_utf32_read_as_a_stream_is_named_utf32(tmp_path):
    """UTF-32's little-endian mark starts with UTF-16's: it is named for what it is."""
    manifest = tmp_path / "train.csv"
    manifest.write_bytes(MANIFESTS[".csv"].encode("utf-32"))  # with its byte-order mark
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    assert caught.value.reason == "UTF-32 text, not UTF-8; save it as UTF-8"


def test_a_byte_order_mark_is_no_column(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"\xef\xbb\xbf" + "dé".encode("latin-1"))
    result = run("classify", tmp_path / "clip.wav", "--labels", labels)
    assert result.stderr == f"error: {labels}: not UTF-8 text: byte 0xe9 at line 1, column 2; save it as UTF-8\n"

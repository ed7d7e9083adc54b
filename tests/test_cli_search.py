"""`pengi-search query`, `similar` and `classify` as a user runs them: output, JSON schemas and exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.cli.common import EXIT_FAILED, EXIT_PARTIAL, EXIT_USAGE
from pengi_search.db import EmbedderInfo, ModelInfo, Store, WindowInput
from pengi_search.library import Library
from pengi_search.testing import make_tiny_model_dir
from pengi_search.tokenization import read_tokenizer

from .indexing import write_tone
from .search_library import index_folder

runner = CliRunner()
HIT_KEYS = {"path", "start_s", "end_s", "score", "caption", "texts", "window_id", "missing"}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def common(captions, tiny_model_dir):
    return ("--db", captions.db, "--model", tiny_model_dir)


def check_hit_schema(hit: dict, extra: frozenset[str] = frozenset()) -> None:
    assert set(hit) == HIT_KEYS | extra
    assert isinstance(hit["path"], str) and isinstance(hit["caption"], str)
    assert isinstance(hit["start_s"], float) and isinstance(hit["end_s"], float)
    assert isinstance(hit["score"], float) and isinstance(hit["window_id"], int)
    assert isinstance(hit["texts"], dict) and all(isinstance(v, str) for v in hit["texts"].values())
    assert hit["missing"] is False  # the file is on disk


def test_query_json(captions, common):
    result = run("query", "rain on a roof", *common, "--json", "-k", 3)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 3
    for hit in hits:
        check_hit_schema(hit, frozenset({"ranking"}))
        assert hit["ranking"] == "caption"  # every window has captions: the paper's caption matching
    assert hits[0]["path"] == str(captions.files["weather/rain.flac"])
    assert hits[0]["caption"] == "rain on a roof" and hits[0]["texts"]["generate audio caption"] == "rain on a roof"
    assert (hits[0]["start_s"], hits[0]["end_s"]) == (0.0, 7.0)


def test_query_table(captions, common, monkeypatch):
    monkeypatch.chdir(captions.root)  # paths below the current folder are shown relative to it
    result = run("query", "a bell rings", *common, "--ext", "wav", "--by", "window")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[0].split()[:5] == ["#", "path", "time", "score", "caption"]
    assert lines[1].split() == ["1", "bell.wav", "0.0-2.0s", "1.000", "a", "bell", "rings"]
    assert len(lines) == 3  # header and the two .wav files


def test_query_table_keeps_paths_whole_on_a_narrow_terminal(captions, common, monkeypatch):
    """The caption wraps; a path (what a user copies) keeps up to half the terminal's width unbroken."""
    monkeypatch.chdir(captions.root)
    monkeypatch.setenv("COLUMNS", "48")
    result = run("query", "rain on a roof", *common, "-k", 1)
    assert result.exit_code == 0, result.output
    assert "weather/rain.flac" in result.stdout.splitlines()[1]


def test_query_and_similar_mark_the_hits_whose_file_is_gone_from_disk(tiny_model_dir, tmp_path, monkeypatch):
    """A file deleted or moved since it was indexed is still in the library (until a run over its folder prunes it,
    or `remove`): its hits say so, in JSON and after the path in the table, as the server's pages do."""
    sounds, db = tmp_path / "sounds", tmp_path / "lib.db"
    write_tone(sounds / "kept.wav", 3.0, freq=300.0)
    write_tone(sounds / "gone.wav", 3.0, freq=320.0)
    index_folder(str(db), sounds, tiny_model_dir)
    (sounds / "gone.wav").unlink()
    common = ("--db", db, "--model", tiny_model_dir, "--device", "cpu")
    outside = write_tone(tmp_path / "query.wav", 3.0, freq=310.0)
    for command in (["query", "a tone"], ["similar", outside]):
        hits = json.loads(run(*command, *common, "--json").stdout)
        assert {hit["path"]: hit["missing"] for hit in hits} == {
            str(sounds / "kept.wav"): False,
            str(sounds / "gone.wav"): True,
        }, command
    monkeypatch.chdir(sounds)
    table = run("query", "a tone", *common)
    assert table.exit_code == 0, table.output
    rows = {line.split()[1]: line.split()[2] for line in table.stdout.splitlines()[1:] if line.strip()}
    assert rows["gone.wav"] == "(gone)" and rows["kept.wav"] != "(gone)"


def clip_tokens(model_dir, text: str) -> int:
    """How many tokens Pengi's text tower is given for `text` before it is cut (its markers included)."""
    return len(read_tokenizer("clip", model_dir)(text)["input_ids"])


@pytest.mark.parametrize("rank", ["caption", "hybrid"])
def test_query_says_once_that_its_text_is_longer_than_the_embedder_reads(captions, common, tiny_model_dir, rank):
    """The text tower reads 77 tokens: the rest of the query counted for nothing, and nothing said so. In JSON mode
    too the warning goes to stderr; a hybrid ranking embeds the text once with the one tower, and says it once."""
    text = "rain on a roof " * 20
    result = run("query", text, *common, "--rank", rank, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: query of {clip_tokens(tiny_model_dir, text)} tokens cut to its first 77, all that Pengi's text "
        "tower reads: 'rain on a roof rain on a roof rain on a ...'"
    ]
    assert json.loads(result.stdout)[0]["path"] == str(captions.files["weather/rain.flac"])


def test_query_with_no_match(common):
    result = run("query", "a bell rings", *common, "--path", "*/nowhere/*", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_a_folder_given_as_path_says_the_glob_that_searches_under_it(captions, common, monkeypatch):
    """`--path weather`, a folder, is a glob over whole paths that matches no file: the search said "no results", as
    if the folder held nothing that matched. It says why, and the glob to use, in `similar` too; what it finds is
    unchanged (and a --path that names no folder says "no results" alone)."""
    monkeypatch.chdir(captions.root)
    hint = "no results: --path matches whole file paths, and weather is a folder; --path 'weather/*' searches the "
    for command in (("query", "rain on a roof"), ("similar", captions.files["animals/cat.flac"])):
        folder = run(*command, *common, "--path", "weather")
        assert (folder.exit_code, folder.stdout, folder.stderr) == (0, "", hint + "files under it\n")
        assert run(*command, *common, "--path", "weather", "--json").stdout.strip() == "[]"
        under = run(*command, *common, "--path", "weather/*", "--json")
        assert [hit["path"] for hit in json.loads(under.stdout)] == [str(captions.files["weather/rain.flac"])]
    nowhere = run("query", "rain", *common, "--path", "nowhere")
    assert (nowhere.exit_code, nowhere.stderr) == (0, "no results\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--by", "folder"), "Invalid value for '--by'"),
        (("--ext", ","), "names no extension"),
        (("--path", ""), "--path is empty"),  # `--path "$UNSET"`: not a filter that silently matches nothing
    ],
)
def test_query_bad_options(common, args, message):
    result = run("query", "x", *common, *args)
    assert result.exit_code == EXIT_USAGE and message in result.output


def test_query_empty_library_says_the_index_command_with_the_model_asked_for(tmp_path, tiny_model_dir):
    """The library is to be built by the model the query asked for: the suggested `index` takes it, and the
    library as named; the folders, which an empty library cannot know, are the user's to write."""
    Store.open(tmp_path / "empty.db").close()
    result = run("query", "rain", "--db", tmp_path / "empty.db", "--model", tiny_model_dir)
    assert result.exit_code == EXIT_FAILED
    index = f"pengi-search index PATH... --model {tiny_model_dir} --db {tmp_path / 'empty.db'}"
    assert f"the index is empty: run `{index}` first" in result.stderr


def _pasted(stderr: str) -> list[str]:
    """The words of the command an error line suggests between backquotes, as a shell reads them."""
    return shlex.split(stderr.split("`")[1])


def test_query_with_another_model_says_the_command_that_indexes_the_library_anew(
    captions, common, tmp_path, tiny_no_text_model_dir
):
    """The command line's words (--model), not a Python caller's (model=); and an `index --reindex` that pastes
    as it is: the library's folder, the model given, the library as named."""
    result = run("query", "rain", *common[:2], "--model", tiny_no_text_model_dir)
    assert result.exit_code == EXIT_FAILED and len(result.stderr.splitlines()) == 1
    assert "give the library's model with --model, or index the library anew with this one: `" in result.stderr
    assert "model=" not in result.stderr
    reindex = ["--reindex", "--model", str(tiny_no_text_model_dir), "--db", captions.db]
    assert _pasted(result.stderr) == ["pengi-search", "index", str(captions.root), *reindex]


def test_similar_with_another_model_is_refused_for_an_indexed_file_too_naming_the_librarys_model(
    captions, common, tmp_path
):
    """An indexed file's stored vectors were used without a word, whatever --model said: a user comparing models
    got the library's model's hits under the other's name. They are the library's model's vectors, and another
    model's cannot be compared with the library's: refused as a file to decode is, naming the library's model."""
    other = make_tiny_model_dir(tmp_path / "other", seed=3)
    result = run("similar", captions.files["bell.wav"], "--db", captions.db, "--model", other, "--json")
    assert result.exit_code == EXIT_FAILED and result.stdout == ""
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert "the index was built with model 'tiny-base'" in result.stderr and "cannot be compared" in result.stderr
    reindex = ["--reindex", "--model", str(other), "--db", captions.db]
    assert _pasted(result.stderr) == ["pengi-search", "index", str(captions.root), *reindex]
    assert run("similar", captions.files["bell.wav"], *common, "--json").exit_code == 0  # its own model: stored


def test_similar_json(captions, common, tmp_path):
    copy = tmp_path / "cat-copy.wav"  # the cat's sound in other bytes: a hit (the same bytes would be left out)
    sf.write(copy, *sf.read(captions.files["animals/cat.flac"]), subtype="PCM_16")
    result = run("similar", copy, *common, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    for hit in hits:
        check_hit_schema(hit, frozenset({"query_start_s", "query_end_s"}))
        assert isinstance(hit["query_start_s"], float) and isinstance(hit["query_end_s"], float)
    assert hits[0]["path"] == str(captions.files["animals/cat.flac"]) and hits[0]["caption"] == "a cat meows"
    assert len(hits) == len(captions.files)


def test_similar_leaves_the_file_out(captions, common):
    result = run("similar", captions.files["bell.wav"], *common, "--json")
    assert result.exit_code == 0, result.output
    paths = [hit["path"] for hit in json.loads(result.stdout)]
    assert str(captions.files["bell.wav"]) not in paths and len(paths) == len(captions.files) - 1


def test_similar_leaves_the_file_out_when_reached_through_a_link(captions, common, tmp_path):
    """The same file by another way (a linked folder, a library indexed through a link): still itself, left out."""
    linked = tmp_path / "linked"
    linked.symlink_to(captions.files["bell.wav"].parent)
    result = run("similar", linked / "bell.wav", *common, "--json")
    assert result.exit_code == 0, result.output
    paths = [hit["path"] for hit in json.loads(result.stdout)]
    assert str(captions.files["bell.wav"]) not in paths and len(paths) == len(captions.files) - 1


def test_similar_leaves_out_every_library_file_with_the_query_files_bytes(tiny_model_dir, tmp_path):
    """`similar FILE` leaves FILE out however the library holds it: also under a link of another name
    (`links/link-to-x.wav` -> `x.wav`) and as a byte-identical copy, as the server leaves out an upload's copies. A
    file that sounds the same in other bytes is a hit. Indexed or not, the query leaves out the same files."""
    sounds, db = tmp_path / "sounds", tmp_path / "lib.db"
    x = write_tone(sounds / "x.wav", 3.0, freq=300.0)
    shutil.copy(x, sounds / "copy-of-x.wav")
    (sounds / "links").mkdir()
    (sounds / "links" / "link-to-x.wav").symlink_to(x)
    same_sound, other = sounds / "x-as-flac.flac", write_tone(sounds / "other.flac", 3.0, freq=700.0)
    sf.write(same_sound, *sf.read(x), subtype="PCM_16")
    index_folder(str(db), sounds, tiny_model_dir)
    outside = shutil.copy(x, tmp_path / "query.wav")  # not in the library
    result = run("similar", x, outside, "--db", db, "--model", tiny_model_dir, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    found = {entry["source"]: [hit["path"] for hit in entry["hits"]] for entry in json.loads(result.stdout)}
    assert found == {"index": [str(same_sound), str(other)], "decoded": [str(same_sound), str(other)]}


def store_one_window_files(db: str, folder: Path, count: int) -> list[Path]:
    """`count` files, each indexed as one window whose audio vector (8-d, around ten centres) is written into the
    store directly: a library whose HNSW graph is made of chosen vectors. The files on disk are stand-ins, stamped
    as indexed, so that `similar` uses their stored vectors."""
    rng = np.random.default_rng(0)
    centres, files = rng.standard_normal((10, 8)), []
    with Store.open(db) as store:
        store.set_index_meta(ModelInfo("pengi-test", "f" * 64), EmbedderInfo("embedder-a", 4))
        for i in range(count):
            path = folder / f"f{i:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"stand-in")
            os.utime(path, (1000.0, 1000.0))
            file_id = store.upsert_file(str(path), size=path.stat().st_size, mtime=1000.0)
            vector = centres[i % 10] + 0.3 * rng.standard_normal(8)
            store.replace_file_windows(file_id, [WindowInput(0, 0.0, 7.0, vectors={"audio": vector})])
            files.append(path)
    return files


def test_similar_past_the_size_of_an_hnsw_library_with_removed_files_lists_every_other_file(tmp_path):
    """`similar -k N`, N past the library's size: the HNSW walk, through the removed files' windows still in its
    graph, reached only some of the rest (32 files of 34), and the search took that for all there was."""
    sounds, db = tmp_path / "sounds", str(tmp_path / "lib.db")
    files = store_one_window_files(db, sounds, 102)
    with Library.open(db) as library:
        library.sync_vector_indexes("hnsw")
    for gone in files[::6]:  # 17 of 102: tombstones, under the share that compacts them away
        assert run("remove", gone, "--db", db).exit_code == 0
        gone.unlink()
    kept = [str(path) for path in files if path.exists()]
    result = run("similar", sounds, "--db", db, "-k", 200, "--json")
    assert result.exit_code == 0, result.output
    for entry in json.loads(result.stdout):
        assert entry["source"] == "index" and entry["error"] is None
        assert sorted(hit["path"] for hit in entry["hits"]) == [path for path in kept if path != entry["path"]]


@pytest.mark.parametrize("typed", ["composed", "decomposed"])
def test_a_path_glob_with_an_accent_matches_the_name_in_either_spelling(tmp_path, typed):
    """macOS writes `é` in names as `e` and a combining accent (NFD), a keyboard types it as one character (NFC):
    `--path '*/Café/*'` found nothing in a folder named so on a Mac's drive, and a glob pasted from its Finder
    nothing in one named elsewhere."""
    spelled = {form: unicodedata.normalize(form, "Café") for form in ("NFC", "NFD")}
    on_disk = spelled["NFD" if typed == "composed" else "NFC"]
    glob = spelled["NFC" if typed == "composed" else "NFD"]
    db = str(tmp_path / "lib.db")
    [query] = store_one_window_files(db, tmp_path / "sounds", 1)
    [inside] = store_one_window_files(db, tmp_path / "sounds" / on_disk, 1)
    for pattern in (f"*/{glob}/*", f"{tmp_path}/sounds/{glob}/*"):  # the second one: a folder the store looks in
        result = run("similar", query, "--db", db, "--path", pattern, "--json")
        assert result.exit_code == 0, result.output
        assert [hit["path"] for hit in json.loads(result.stdout)] == [str(inside)]


def test_similar_table_says_which_window_of_a_long_query_file_matched(captions, common, monkeypatch):
    """A query file of several windows (rain.flac: 0-7 s and 3-10 s) has a "query time" column, even when the hits
    shown all matched one of its windows (here the single hit of -k 1); a one-window file has none."""
    monkeypatch.chdir(captions.root)
    result = run("similar", captions.files["weather/rain.flac"], *common, "-k", 1)
    assert result.exit_code == 0, result.output
    header, row = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert header[:5] == ["#", "path", "time", "query", "time"]
    assert row[3] in ("0.0-7.0s", "3.0-10.0s")
    one_window = run("similar", captions.files["animals/cat.flac"], *common, "-k", 1)
    assert "query time" not in one_window.stdout


def test_similar_start_and_end_search_with_that_part_of_a_long_query_file_only(captions, common):
    """`similar field.wav --start 35 --end 42`: a moment of a long recording. rain.flac's windows are 0-7 s and 3-10 s;
    each part given keeps the windows that overlap it."""
    rain = captions.files["weather/rain.flac"]

    def query_windows(*part: object) -> set[tuple[float, float]]:
        result = run("similar", rain, *common, "--json", *part)
        assert result.exit_code == 0, result.output
        return {(hit["query_start_s"], hit["query_end_s"]) for hit in json.loads(result.stdout)}

    assert query_windows("--start", 8) == {(3.0, 10.0)}
    assert query_windows("--end", 2) == {(0.0, 7.0)}
    assert query_windows("--start", 4, "--end", 6) <= {(0.0, 7.0), (3.0, 10.0)}

    past_the_end = run("similar", rain, *common, "--start", 11)
    assert past_the_end.exit_code == EXIT_PARTIAL
    assert past_the_end.stderr == f"skipped {rain}: no window from 11 s to its end: the file is 10.0 s long\n"
    empty = run("similar", rain, *common, "--start", 5, "--end", 5)
    assert empty.exit_code == EXIT_USAGE
    assert empty.stderr == "error: --end 5 is not after --start 5: no window lies between them\n"


def test_similar_missing_file(common, tmp_path):
    result = run("similar", tmp_path / "absent.wav", *common)
    assert result.exit_code == EXIT_USAGE and "no such file" in result.output


def test_similar_heads_each_query_files_hits_with_its_name_as_it_is(captions, common, tmp_path):
    """Brackets in a file name are not markup: the heading names the file exactly."""
    odd = shutil.copy(captions.files["bell.wav"], tmp_path / "[dog] bell.wav")
    result = run("similar", odd, captions.files["animals/cat.flac"], *common)
    assert result.exit_code == 0, result.output
    assert str(odd) in result.stdout.splitlines()


def test_similar_takes_a_folder_and_searches_a_file_given_twice_once(captions, common, tmp_path):
    """As describe, ask and classify: a folder stands for its audio files, and a file reached twice (given and in a
    given folder) is searched once, named as given; a file of the folder that does not decode is reported
    (exit 3)."""
    folder = tmp_path / "queries"
    folder.mkdir()
    cat = shutil.copy(captions.files["animals/cat.flac"], folder / "cat.flac")
    (folder / "broken.wav").write_bytes(b"RIFF not really audio")
    result = run("similar", cat, folder, *common, "--json")
    assert result.exit_code == EXIT_PARTIAL, result.output
    searched = json.loads(result.stdout)
    assert [item["path"] for item in searched] == [str(cat), str(folder / "broken.wav")]
    assert searched[0]["hits"] and searched[1]["error"] and searched[1]["hits"] == []


def test_similar_json_of_a_folder_is_a_list_per_file_however_many_it_holds(captions, common, tmp_path):
    """The shape follows what was given, not what a folder happens to hold: a script that gives a folder reads a
    list of {file, source, hits, error} even when the folder holds a single file (as classify writes a CSV), and
    the terminal heads its hits with its name."""
    folder = tmp_path / "queries"
    folder.mkdir()
    cat = shutil.copy(captions.files["animals/cat.flac"], folder / "cat.flac")
    result = run("similar", folder, *common, "--json")
    assert result.exit_code == 0, result.output
    (searched,) = json.loads(result.stdout)
    assert searched["path"] == str(cat) and searched["error"] is None and searched["hits"]
    shown = run("similar", folder, *common)
    assert shown.exit_code == 0 and str(cat) in shown.stdout.splitlines(), shown.output  # headed with its name


@pytest.mark.parametrize("command", ["similar", "describe", "classify"])
@pytest.mark.parametrize("typed", ["../{here}/broken.wav", "{tmp}/broken.wav"])
def test_every_command_names_a_skipped_file_as_it_was_typed(captions, common, tmp_path, monkeypatch, command, typed):
    """Escaped where it must be, never made relative to the current folder: the name in the message is the one on
    the command line, as ripgrep's are."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really audio")
    (tmp_path / "labels.txt").write_text("a dog barks\na bell rings\n")
    typed = typed.format(here=tmp_path.name, tmp=tmp_path)  # both would be "broken.wav" made relative to here
    options = {"describe": common[2:], "classify": (*common, "-l", "labels.txt")}.get(command, common)
    result = run(command, typed, *options, "--device", "cpu")
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert result.stderr.startswith(f"skipped {typed}: not a readable audio file"), result.stderr


# -- classify ----------------------------------------------------------------------------------------------------


@pytest.fixture()
def labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a dog barks\nrain on a roof\na bell rings\na cat meows\n")
    return path


def test_classify_one_file(captions, common, labels):
    result = run("classify", captions.files["bell.wav"], "--labels", labels, *common, "--top", 2)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert lines[0][0].endswith("bell.wav")
    assert lines[2][:5] == ["1", "a", "bell", "rings", "1.0000"]
    assert len(lines) == 4  # file, header, two labels


def test_classify_json_schema(captions, common, labels):
    result = run("classify", captions.files["animals/dog.wav"], "-l", labels, *common, "--json", "--top", 3)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"method", "labels", "results", "errors", "metrics"}
    assert data["method"] == "text" and data["labels"] == labels.read_text().splitlines()
    assert data["errors"] == [] and data["metrics"] is None
    (entry,) = data["results"]
    assert set(entry) == {"path", "label", "score", "top", "window_count", "source"}
    assert entry["label"] == "a dog barks" and isinstance(entry["score"], float) and entry["source"] == "index"
    assert len(entry["top"]) == 3 and all(set(t) == {"label", "score"} for t in entry["top"])


def write_truth(captions, tmp_path):
    truth = tmp_path / "truth.csv"
    rows = ["animals/dog.wav,a dog barks", "weather/rain.flac,rain on a roof", "bell.wav,a dog barks"]
    truth.write_text("file,label\n" + "\n".join(f"{captions.root}/{row}" for row in rows) + "\n")
    return truth


def test_classify_folder_writes_a_csv_and_scores_it(captions, common, labels, tmp_path):
    out = tmp_path / "predictions.csv"
    truth = write_truth(captions, tmp_path)
    result = run("classify", captions.root, "-l", labels, *common, "--output", out, "--truth", truth, "--json")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["file", "label", "score", "top"]
    by_file = {row["file"]: row for row in rows}
    assert set(by_file) == {str(p) for p in captions.files.values()}
    cat = by_file[str(captions.files["animals/cat.flac"])]
    assert cat["label"] == "a cat meows" and cat["top"].startswith("a cat meows:1.0000;")
    assert len(cat["top"].split(";")) == 4
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["files"] == 3 and metrics["correct"] == 2 and metrics["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert metrics["per_class"]["a dog barks"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3, abs=1e-6),
        "support": 2,
    }
    assert metrics["per_class"]["a bell rings"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["unmatched"] == [str(captions.files["animals/cat.flac"])]


def test_classify_csv_gives_each_score_to_the_decimals_json_gives_it(captions, common, labels, tmp_path):
    """Not six, which would show the float32 noise of the batch a window was scored in: the CSV and --json of one run
    read alike, label for label."""
    out = tmp_path / "predictions.csv"
    result = run("classify", captions.root, "-l", labels, *common, "--output", out, "--json")
    assert result.exit_code == 0, result.output
    rows = {row["file"]: row for row in csv.DictReader(out.open())}
    for entry in json.loads(result.stdout)["results"]:
        row = rows[entry["path"]]
        assert row["score"] == f"{entry['score']:.4f}"
        assert row["top"] == ";".join(f"{top['label']}:{top['score']:.4f}" for top in entry["top"][:5])


def test_classify_folder_csv_on_stdout_with_accuracy_on_stderr(captions, common, labels, tmp_path):
    truth = write_truth(captions, tmp_path)
    result = run("classify", captions.root / "animals", "-l", labels, *common, "--truth", truth, "-q")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["label"] for row in rows] == ["a cat meows", "a dog barks"]  # sorted by path
    assert "accuracy 1.0000 (1/1 files)" in result.stderr
    assert "warning: 1 classified file is not in the truth file, so not scored" in result.stderr  # cat.flac


def test_classify_warns_of_files_the_truth_does_not_list_on_stderr_when_the_scores_go_to_stdout(
    captions, common, labels, tmp_path
):
    """With the CSV in -o FILE the scores are the command's output (stdout); files left unscored are a warning, on
    stderr as every warning, not a line of the scores."""
    truth = write_truth(captions, tmp_path)
    result = run(
        "classify", captions.root / "animals", "-l", labels, *common, "--truth", truth, "-o", tmp_path / "p.csv"
    )
    assert result.exit_code == 0, result.output
    assert "accuracy 1.0000 (1/1 files)" in result.stdout and "not scored" not in result.stdout
    assert "warning: 1 classified file is not in the truth file, so not scored\n" in result.stderr


def test_classify_json_warns_of_files_the_truth_does_not_list_on_stderr_and_keeps_stdout_json(
    captions, common, labels, tmp_path
):
    """Scripts read stderr too: --json says there what the text output says (as `index --json` and `describe
    --json` warn), while stdout stays one JSON object, whose `metrics.unmatched` names the files."""
    truth = write_truth(captions, tmp_path)
    result = run("classify", captions.root / "animals", "-l", labels, *common, "--truth", truth, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["unmatched"] == [str(captions.files["animals/cat.flac"])]
    assert result.stderr == "warning: 1 classified file is not in the truth file, so not scored\n"


def test_classify_warns_of_truth_labels_that_the_labels_file_lacks_as_their_files_can_never_be_right(
    captions, common, tmp_path
):
    """A truth of another spelling (`Rain on a roof`) or of another set: the accuracy alone would not say why."""
    truth = tmp_path / "truth.csv"
    truth.write_text(
        f"file,label\n{captions.root}/weather/rain.flac,Rain on a roof\n{captions.root}/bell.wav,a bell rings\n"
    )
    labels = tmp_path / "labels.txt"
    labels.write_text("a dog barks\nrain on a roof\na bell rings\n")
    result = run(
        "classify",
        captions.files["weather/rain.flac"],
        captions.files["bell.wav"],
        "-l",
        labels,
        *common,
        "--truth",
        truth,
    )
    assert result.exit_code == 0, result.output
    note = "1 of the scored files' labels is not in the labels file, so those files count as wrong: 'Rain on a roof'"
    assert result.stderr.splitlines()[-1] == f"warning: {truth}: {note}"  # after the scores (CSV: stderr's)
    assert result.stderr.count("warning") == 1


def test_classify_folder_with_a_broken_file_is_partial(captions, common, labels, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(captions.root / "animals", folder)
    (folder / "broken.wav").write_bytes(b"RIFF not really audio")
    result = run("classify", folder, "-l", labels, *common, "--json", "--max-len", 4)
    assert result.exit_code == EXIT_PARTIAL, result.output
    data = json.loads(result.stdout)
    assert [e["path"] for e in data["errors"]] == [str(folder / "broken.wav")]
    assert len(data["results"]) == 2


def test_classify_several_files_and_folders_gives_one_csv_in_the_order_given(captions, common, labels, tmp_path):
    truth = write_truth(captions, tmp_path)
    targets = (captions.files["bell.wav"], captions.root / "animals", captions.files["weather/rain.flac"])
    result = run("classify", *targets, "-l", labels, *common, "--truth", truth, "-q")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["file"], row["label"]) for row in rows] == [
        (str(captions.files["bell.wav"]), "a bell rings"),
        (str(captions.files["animals/cat.flac"]), "a cat meows"),  # a folder's files sorted by path
        (str(captions.files["animals/dog.wav"]), "a dog barks"),
        (str(captions.files["weather/rain.flac"]), "rain on a roof"),
    ]
    assert "accuracy 0.6667 (2/3 files)" in result.stderr  # the truth covers files from every target


def test_classify_with_a_truth_of_other_files_is_refused_before_any_file_is_classified(captions, labels, tmp_path):
    """A truth of another set (or of a typo'd folder) would score nothing after every file was heard: refused in one
    line (exit 2) before the model is even looked for, as `eval classify` refuses it."""
    truth = tmp_path / "other.csv"
    truth.write_text("file,label\nelsewhere/tuba.wav,a dog barks\n")
    targets = (captions.files["bell.wav"], captions.root / "animals")
    result = run("classify", *targets, "-l", labels, "--truth", truth, "--model", tmp_path / "no-model")
    assert result.exit_code == EXIT_USAGE and result.stdout == "", result.output
    assert result.stderr == (
        f"error: {truth}: lists none of the 3 audio files given (its paths are relative to its own folder; a bare "
        "file name matches a file of that name, a path with folders one whose path ends with it)\n"
    )


def test_classify_with_a_truth_name_without_extension_that_two_files_have_is_refused(captions, labels, tmp_path):
    """FSD50K's `64760` names the file of that name with an extension; two such files would both be scored against
    the one row, counting it twice: refused, as `eval classify` refuses it."""
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(captions.files["bell.wav"], folder / "64760.wav")
    shutil.copy(captions.files["weather/rain.flac"], folder / "64760.flac")
    truth = tmp_path / "truth.csv"
    truth.write_text("fname,label\n64760,a bell rings\n")
    result = run("classify", folder, "-l", labels, "--truth", truth, "--model", tmp_path / "no-model")
    assert result.exit_code == EXIT_USAGE and result.stdout == "", result.output
    assert "'64760', without extension, names 2 files" in result.stderr


def test_classify_a_file_reached_twice_classifies_it_once(captions, common, labels, monkeypatch):
    """Given by itself, inside a given folder and under another spelling: one result, named as first given; the
    folder's other files named after it as typed."""
    monkeypatch.chdir(captions.root)
    result = run("classify", "animals/dog.wav", "animals", "./animals/dog.wav", "-l", labels, *common, "--json")
    assert result.exit_code == 0, result.output
    files = [entry["path"] for entry in json.loads(result.stdout)["results"]]
    assert files == ["animals/dog.wav", "animals/cat.flac"]


def test_classify_several_files_with_an_undecodable_one_is_partial(captions, common, labels, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really audio")
    result = run("classify", captions.files["bell.wav"], broken, "-l", labels, *common, "--json", "--max-len", 4)
    assert result.exit_code == EXIT_PARTIAL, result.output
    data = json.loads(result.stdout)
    assert [e["path"] for e in data["errors"]] == [str(broken)]
    assert [r["path"] for r in data["results"]] == [str(captions.files["bell.wav"])]


@pytest.mark.parametrize("output", ["-q", "--json"])
def test_classify_truth_of_only_files_that_failed_says_so_as_a_warning(captions, common, labels, tmp_path, output):
    """The truth lists only the file that cannot be decoded: nothing is scored, which is a warning on stderr, as
    every other warning reads (--json too), and the CSV or JSON on stdout stays clean."""
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really audio")
    truth = tmp_path / "truth.csv"
    truth.write_text("file,label\nbroken.wav,a dog barks\n")
    result = run("classify", captions.files["bell.wav"], broken, "-l", labels, *common, "--truth", truth, output)
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert "warning: no classified file is in the truth file, so nothing is scored\n" in result.stderr
    assert "no classified file" not in result.stdout


TIED_LABELS = "label,answer\ndog,a dog barks\nDog,a dog barks\nrain on a roof,\na bell rings,\n"
TIE_NOTES = [
    "tied labels ordered by name: accuracy is 0.5000 in this order; 1 file ties across its cut-off: another order "
    "gives 0.5000 to 1.0000",
    "tied labels ordered by name: 1 file has tied best labels, so per-class scores are those of this order; another "
    "order gives recall 0.0000 to 1.0000 for 'dog'",
]


def tied_truth_run(captions, common, tmp_path, output):
    """dog.wav (a dog) and rain.flac classified with "dog" and "Dog" scored as one text, so they tie for dog.wav:
    "Dog" is predicted by name, wrong, where the other order would be right."""
    dog, rain = captions.files["animals/dog.wav"], captions.files["weather/rain.flac"]
    labels = tmp_path / "labels.csv"
    labels.write_text(TIED_LABELS)
    truth = tmp_path / "truth.csv"
    truth.write_text(f"file,label\n{dog},dog\n{rain},rain on a roof\n")
    return run("classify", dog, rain, "-l", labels, *common, "--truth", truth, output)


def test_classify_truth_says_how_far_another_order_of_tied_labels_moves_its_scores(captions, common, tmp_path):
    """As `eval classify` says it (the same notes, on stderr under the scores): the accuracy is 1/2 with ties by
    name, between 1/2 and 1 over every order, and the per-class scores are those of the order by name."""
    result = tied_truth_run(captions, common, tmp_path, "-q")
    assert result.exit_code == 0, result.output
    assert "accuracy 0.5000 (1/2 files)" in result.stderr
    assert result.stderr.splitlines()[-2:] == [f"warning: {note}" for note in TIE_NOTES]


def test_classify_truth_json_gives_the_tie_bounds_and_notes_in_its_metrics(captions, common, tmp_path):
    result = tied_truth_run(captions, common, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["ties"] == {"accuracy": {"files": 1, "lowest": 0.5, "highest": 1.0}}
    assert metrics["top_ties"] == {"files": 1, "recall": {"dog": {"files": 1, "lowest": 0.0, "highest": 1.0}}}
    assert metrics["notes"] == TIE_NOTES
    assert result.stderr == "".join(f"warning: {note}\n" for note in TIE_NOTES)


def test_classify_truth_without_tied_labels_has_no_tie_note(captions, common, labels, tmp_path):
    truth = write_truth(captions, tmp_path)
    result = run("classify", captions.root / "animals", "-l", labels, *common, "--truth", truth, "--json")
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["ties"] == {"accuracy": {"files": 0, "lowest": 1.0, "highest": 1.0}}
    assert (metrics["top_ties"], metrics["notes"]) == ({"files": 0, "recall": {}}, [])


@pytest.mark.parametrize("bad", ["", "absent.wav"])
def test_classify_refuses_a_bad_target_among_good_ones_before_any_work(captions, common, labels, tmp_path, bad):
    result = run("classify", captions.files["bell.wav"], bad and tmp_path / bad, "-l", labels, *common)
    assert result.exit_code == EXIT_USAGE and result.stdout == ""
    assert ("the path is empty" if not bad else "absent.wav: no such file or folder") in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file; write one label per line"),
        (b"dog\n\ncat\n", "line 2 is blank"),
        (b"dog\ncat\ndog\n", "duplicate label 'dog' on line 3"),
        (b"dog\n\xff\n", "not UTF-8"),
    ],
)
def test_classify_bad_labels_is_a_usage_error(captions, common, tmp_path, content, message):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(content)
    result = run("classify", captions.files["bell.wav"], "-l", labels, *common)
    assert result.exit_code == EXIT_USAGE
    assert message in result.output and str(labels) in result.output


def test_classify_says_once_which_labels_its_text_embedder_cuts(captions, common, tiny_model_dir, tmp_path):
    """Each by its label, not the template-filled text embedded; on stderr, with --json as well."""
    long_label = "a dog barks and " * 20
    labels = tmp_path / "labels.txt"
    labels.write_text(f"a dog barks\n{long_label}\nrain on a roof\n")
    template = "this is a sound of {label}"
    result = run("classify", captions.files["animals/dog.wav"], "-l", labels, *common, "--template", template, "--json")
    assert result.exit_code == 0, result.output
    tokens = clip_tokens(tiny_model_dir, template.format(label=long_label.strip()))
    assert result.stderr.splitlines() == [
        f"warning: label of {tokens} tokens cut to its first 77, all that Pengi's text tower reads: "
        "'a dog barks and a dog barks and a dog ba...'"
    ]
    assert json.loads(result.stdout)["results"][0]["label"] in ("a dog barks", long_label.strip())


def _decoded(*_args, **_kwargs):
    raise AssertionError("audio was decoded before the text embedder was opened")


@pytest.mark.parametrize("audio", ["bell.wav", "broken.wav"])
@pytest.mark.parametrize(
    ("name", "code", "reason"),
    [
        ("{tmp}/no-such-model", EXIT_USAGE, "no such folder; give a sentence-transformers model's folder or a hub"),
        ("someone/not-cached-anywhere", EXIT_FAILED, "not in the Hugging Face cache"),
    ],
)
def test_classify_refuses_a_text_embedder_it_cannot_open_before_decoding_any_audio(
    captions, labels, tiny_model_dir, tmp_path, monkeypatch, audio, name, code, reason
):
    """The embedder was opened at the first batch: after decoding and captioning files, and, when every file
    failed to decode, never (exit code 3, the embedder's fault unsaid). A sentence-transformers model opens first,
    before Pengi is loaded."""
    monkeypatch.setenv("PENGI_SEARCH_OFFLINE", "1")  # a hub name not in the cache is refused without a request
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what the command sets from it, put back after the test
    monkeypatch.setattr("pengi_search.window_batches.decode_all", _decoded)
    monkeypatch.setattr("pengi_search.inference.Engine.load", _decoded)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really audio")
    shutil.copy(captions.files["bell.wav"], tmp_path / "bell.wav")  # not indexed: it must be heard
    spec = "sentence-transformers:" + name.format(tmp=tmp_path)
    result = run("classify", tmp_path / audio, "-l", labels, "--model", tiny_model_dir, "--text-embedder", spec)
    assert result.exit_code == code, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {spec}: {reason}")


def test_classify_loglik_from_the_command_line(captions, common, labels):
    result = run("classify", captions.files["bell.wav"], "-l", labels, *common, "--method", "loglik", "--json")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["results"][0]
    assert entry["source"] == "index" and entry["score"] < 0  # a mean log-probability
    assert entry["label"] in labels.read_text().splitlines()


def test_classify_says_once_that_a_library_given_by_another_model_is_not_reused(captions, common, labels, tmp_path):
    """--db names a library to reuse, but one built by another model holds nothing this run can take: every file
    was decoded without a word; only each result's `source` said so."""
    other = make_tiny_model_dir(tmp_path / "other", seed=3)
    args = ("classify", captions.files["bell.wav"], "-l", labels, "--method", "loglik", "--device", "cpu", "--json")
    result = run(*args, "--db", captions.db, "--model", other)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["source"] == "decoded"
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"warning: {captions.db}: built with model 'tiny-base'")
    assert f", not with the model at {other}: " in line  # as similar and query name it, not as tiny-base@1a2b...
    assert line.endswith(
        "nothing it holds is reused, every file is decoded (classify with the library's model to reuse it)"
    )
    assert run(*args, *common).stderr == ""  # its own model: reused, nothing to say

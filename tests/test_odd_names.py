"""File and folder names that are not valid UTF-8 (bytes 0xff 0xfe, as old Samba shares write them), through every
command: indexed, stored without loss, shown escaped, written to JSON without loss, matched by filters and `remove`.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from indexer.pipeline import run_index
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from pengi_search.cli.library import _write_rows
from pengi_search.db import Store, StoreError
from pengi_search.errors import PengiSearchError
from pengi_search.library import Library
from pengi_search.serve import ServeSettings, create_app

from .indexing import assert_consistent, quick_options, write_tone

runner = CliRunner()
QUICK = ("--beam", "2", "--max-len", "3", "--device", "cpu")


def odd(path: Path, name: bytes) -> str:
    """`path/name` as Python hands out a name that is not UTF-8 (surrogate escapes)."""
    return os.fsdecode(os.fsencode(path) + b"/" + name)


def write_tone_as(target: str, seconds: float, freq: float, scratch: Path) -> str:
    """A tone written under a plain name in `scratch`, then moved to `target` (soundfile cannot write such a name)."""
    plain = scratch / "tone-being-written.wav"
    write_tone(plain, seconds, freq=freq)
    os.rename(plain, target)
    return target


def run(*args: object):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, str]:
    """Good files, a file and a folder whose names are not UTF-8, and an empty file."""
    root = tmp_path_factory.mktemp("odd") / "sounds"
    scratch = root.parent
    write_tone(root / "good.wav", 2.0, freq=600)
    write_tone(root / "rain.flac", 1.0, freq=900)
    os.mkdir(odd(root, b"dir\xfe"))
    paths = {
        "root": str(root),
        "odd": write_tone_as(odd(root, b"odd\xff\xfe.wav"), 1.5, 400, scratch),
        "folder": odd(root, b"dir\xfe"),
        "inside": write_tone_as(odd(root, b"dir\xfe/inside.wav"), 1.0, 800, scratch),
        "empty": str(root / "empty.wav"),
    }
    Path(paths["empty"]).write_bytes(b"")
    return paths


@pytest.fixture(scope="module")
def indexed(tree, tmp_path_factory, tiny_model_dir) -> dict:
    db = tmp_path_factory.mktemp("odd-db") / "lib.db"
    result = run("index", tree["root"], "--db", db, "--model", tiny_model_dir, "--workers", "0", *QUICK, "--json")
    return {"db": str(db), "result": result, "summary": json.loads(result.stdout)}


def test_index_stores_the_odd_names_and_exits_3_for_the_empty_file(tree, indexed):
    assert indexed["result"].exit_code == EXIT_PARTIAL
    summary = indexed["summary"]
    assert summary["indexed"] == 4
    assert [(item["path"], item["error"]) for item in summary["failed"]] == [(tree["empty"], "empty file (0 bytes)")]
    with Store.open(indexed["db"]) as store:
        for name in ("odd", "inside"):
            record = store.get_file(tree[name])
            assert record is not None and record.status == "indexed" and record.path == tree[name]
        assert store.get_file(tree["empty"]).status == "error"
        stored = dict(store.engine.connect().execute(text("SELECT path, status FROM audio_files")).all())
    assert str(Path(tree["root"]) / "good.wav") in stored  # a UTF-8 name is stored as it is
    assert all(isinstance(path, str) and path.encode("utf-8") for path in stored)
    assert_consistent(Path(indexed["db"]))


def test_a_second_run_finds_nothing_to_do(tree, indexed, tiny_model_dir):
    again = run("index", tree["root"], "--db", indexed["db"], "--model", tiny_model_dir, "--workers", "0", *QUICK)
    assert again.exit_code == EXIT_OK, again.output
    assert "indexed 0 files" in again.stdout and "4 unchanged" in again.stdout


def test_query_shows_the_name_escaped_and_gives_it_whole_in_json(tree, indexed, tiny_model_dir, monkeypatch):
    common = ("--db", indexed["db"], "--model", tiny_model_dir, "-k", "10")
    monkeypatch.chdir(tree["root"])  # names below the current folder are shown relative to it: no folding
    table = run("query", "a tone", *common)
    assert table.exit_code == EXIT_OK
    assert "odd\\xff\\xfe.wav" in table.stdout and "dir\\xfe" in table.stdout
    hits = json.loads(run("query", "a tone", *common, "--json").stdout)
    by_path = {hit["path"]: hit for hit in hits}
    assert set(by_path) == {tree["odd"], tree["inside"], f"{tree['root']}/good.wav", f"{tree['root']}/rain.flac"}
    assert base64.b64decode(by_path[tree["odd"]]["path_bytes"]) == os.fsencode(tree["odd"])
    assert "path_bytes" not in by_path[f"{tree['root']}/good.wav"]


def test_path_filters_match_odd_folders(tree, indexed, tiny_model_dir):
    common = ("--db", indexed["db"], "--model", tiny_model_dir, "--json")
    inside = json.loads(run("query", "a tone", *common, "--path", tree["folder"] + "/*").stdout)
    assert [hit["path"] for hit in inside] == [tree["inside"]]
    named = json.loads(run("query", "a tone", *common, "--path", "*/odd\udcff*").stdout)
    assert [hit["path"] for hit in named] == [tree["odd"]]
    typed = json.loads(run("query", "a tone", *common, "--path", "*/odd\\xff\\xFE.wav").stdout)  # as shown
    assert [hit["path"] for hit in typed] == [tree["odd"]]
    folder = json.loads(run("query", "a tone", *common, "--path", f"{tree['root']}/dir\\xfe/*").stdout)
    assert [hit["path"] for hit in folder] == [tree["inside"]]


def test_similar_to_the_odd_file_uses_its_stored_vectors_and_leaves_it_out(tree, indexed, tiny_model_dir):
    result = run("similar", tree["odd"], "--db", indexed["db"], "--model", tiny_model_dir, "--json")
    assert result.exit_code == EXIT_OK, result.output
    paths = [hit["path"] for hit in json.loads(result.stdout)]
    assert tree["odd"] not in paths and tree["inside"] in paths


def test_similar_to_several_files_names_the_odd_one_with_its_bytes(tree, indexed, tiny_model_dir):
    good = f"{tree['root']}/good.wav"
    result = run("similar", tree["odd"], good, "--db", indexed["db"], "--model", tiny_model_dir, "--json")
    assert result.exit_code == EXIT_OK, result.output
    odd, plain = json.loads(result.stdout)
    assert odd["path"] == tree["odd"] and base64.b64decode(odd["path_bytes"]) == os.fsencode(tree["odd"])
    assert plain["path"] == good and "path_bytes" not in plain


def test_describe_and_ask_the_odd_file(tree, tiny_model_dir):
    described = run("describe", tree["odd"], "--model", tiny_model_dir, *QUICK, "--json")
    assert described.exit_code == EXIT_OK, described.output
    (item,) = json.loads(described.stdout)
    assert item["path"] == tree["odd"] and item["duration_s"] == 1.5 and len(item["windows"]) == 1
    assert base64.b64decode(item["path_bytes"]) == os.fsencode(tree["odd"])
    answered = run("ask", tree["odd"], "is it a dog?", "--model", tiny_model_dir, *QUICK)
    assert answered.exit_code == EXIT_OK and "odd\\xff\\xfe.wav" in answered.stdout


def test_classify_the_odd_file_and_its_folder(tree, indexed, tiny_model_dir, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\nrain\n")
    common = ("--labels", labels, "--model", tiny_model_dir, "--db", indexed["db"], *QUICK)  # decoded as indexed
    one = json.loads(run("classify", tree["odd"], *common, "--json").stdout)
    (result,) = one["results"]
    assert result["path"] == tree["odd"] and result["source"] == "index"
    assert base64.b64decode(result["path_bytes"]) == os.fsencode(tree["odd"])
    folder = run("classify", tree["root"], *common)
    assert folder.exit_code == EXIT_PARTIAL  # the empty file
    files = {row.split(",")[0] for row in folder.stdout.splitlines()}
    assert {f"{tree['root']}/odd\\xff\\xfe.wav", f"{tree['root']}/dir\\xfe/inside.wav"} < files


def test_export_and_stats(tree, indexed):
    lines = run("export", "--db", indexed["db"]).stdout.splitlines()
    rows = {json.loads(line)["path"]: json.loads(line) for line in lines}
    assert set(rows) == {
        tree["odd"],
        tree["inside"],
        tree["empty"],
        f"{tree['root']}/good.wav",
        f"{tree['root']}/rain.flac",
    }
    assert base64.b64decode(rows[tree["odd"]]["path_bytes"]) == os.fsencode(tree["odd"])
    assert rows[tree["odd"]]["windows"] and rows[tree["empty"]]["status"] == "error"
    under = run("export", "--db", indexed["db"], "--under", tree["folder"]).stdout.splitlines()
    assert [json.loads(line)["path"] for line in under] == [tree["inside"]]
    stats = json.loads(run("stats", "--db", indexed["db"], "--json").stdout)
    assert stats["files"]["indexed"] == 4 and stats["truncated_files"] == 0


def test_the_server_shows_and_plays_the_odd_file(tree, indexed, tiny_model_dir):
    settings = ServeSettings(db=indexed["db"], model=str(tiny_model_dir), device="cpu", check_s=0.0)
    with Store.open(indexed["db"]) as store:
        file_id = store.get_file(tree["odd"]).id
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        info = client.get(f"/api/files/{file_id}").json()
        assert info["path"].endswith("odd\\xff\\xfe.wav")
        assert base64.b64decode(info["path_bytes"]) == os.fsencode(tree["odd"])
        assert client.get(f"/api/files/{file_id}/audio").content == Path(tree["odd"]).read_bytes()
        assert client.get(f"/api/files/{file_id}/spectrogram.png").status_code == 200
        page = client.get(f"/files/{file_id}")
        assert page.status_code == 200 and "odd\\xff\\xfe.wav" in page.text
        hits = client.get("/api/search", params={"q": "a tone", "k": 10}).json()
        assert any(hit.get("path_bytes") for hit in hits)
        window = next(hit["window_id"] for hit in hits if hit["file_id"] == file_id)
        assert client.get(f"/api/windows/{window}/audio").status_code == 200
        assert client.get("/similar", params={"window_id": window}).status_code == 200
        # The path filter names such a folder with the bytes written as results show them.
        shown_folder = f"{tree['root']}/dir\\xfe/*"
        inside = client.get("/api/search", params={"q": "a tone", "k": 10, "path": shown_folder}).json()
        assert [hit["path"] for hit in inside] == [f"{tree['root']}/dir\\xfe/inside.wav"]
        assert base64.b64decode(inside[0]["path_bytes"]) == os.fsencode(tree["inside"])
        similar = client.get("/api/similar", params={"window_id": window, "path": "*\\xfe/*"}).json()
        assert [hit["path"] for hit in similar] == [f"{tree['root']}/dir\\xfe/inside.wav"]
        page = client.get("/", params={"q": "a tone", "path": shown_folder})
        assert page.status_code == 200 and "dir\\xfe/inside.wav" in page.text and "odd\\xff" not in page.text


def test_remove_matches_odd_files_and_folders(tree, indexed, tmp_path):
    db = tmp_path / "copy.db"
    db.write_bytes(Path(indexed["db"]).read_bytes())
    folder = json.loads(run("remove", tree["folder"], "--db", db, "--json").stdout)
    assert folder["removed_files"] == 1 and base64.b64decode(folder["path_bytes"]) == os.fsencode(tree["folder"])
    one = run("remove", tree["odd"], "--db", db)
    assert one.exit_code == EXIT_OK and "odd\\xff\\xfe.wav" in one.stdout
    gone = run("remove", tree["odd"], "--db", db)
    assert gone.exit_code == 1 and "odd\\xff\\xfe.wav: nothing in the index" in gone.stderr
    with Store.open(str(db)) as store:
        assert [Path(record.path).name for record in store.files_under(tree["root"])] == [
            "empty.wav",
            "good.wav",
            "rain.flac",
        ]
    assert_consistent(db)


def test_prefix_queries_keep_odd_folders_apart(tmp_path):
    folder = os.fsdecode(b"/lib/dir\xfe")
    names = [folder, f"{folder}/a.wav", f"{folder}x/b.wav", os.fsdecode(b"/lib/dir\xff/c.wav"), "/lib/dir/d.wav"]
    with Store.open(str(tmp_path / "lib.db")) as store:
        for name in names:
            store.record_file_error(name, f"broken {name}", size=1, mtime=1.0)
        assert [r.path for r in store.files_under(folder)] == names[:2]
        assert store.get_file(names[3]).error == f"broken {names[3]}"
        assert store.all_file_stamps(under=folder).keys() == set(names[:2])
        assert store.remove(folder) == 2
        assert [r.path for r in store.files_under("/lib")] == sorted(names[2:])


def test_errors_show_the_name_escaped():
    error = PengiSearchError(os.fsdecode(b"/x/\xff.wav"), "broken")
    assert str(error) == "/x/\\xff.wav: broken" and error.where == os.fsdecode(b"/x/\xff.wav")


@pytest.mark.parametrize("command", ["describe", "similar", "classify"])
@pytest.mark.parametrize(
    ("name", "shown"), [(b"gone\xff.wav", "gone\\xff.wav"), (b"two\nlines.wav", "two\\nlines.wav")]
)
def test_a_missing_file_is_named_escaped_on_one_line(command, name, shown, tmp_path, tiny_model_dir):
    """The name as every other message shows it: not Python's surrogate escape, and not cut at its line break."""
    missing = odd(tmp_path, name)
    (tmp_path / "labels.txt").write_text("dog\nrain\n")
    extra = {"similar": ("--db", tmp_path / "none.db"), "classify": ("--labels", tmp_path / "labels.txt")}
    result = run(command, missing, "--model", tiny_model_dir, *extra.get(command, ()))
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.output.strip().splitlines() == [f"error: {tmp_path}/{shown}: no such file or folder"]


def test_a_failure_that_cannot_be_recorded_is_reported_and_the_run_goes_on(tree, tmp_path, tiny_model_dir, monkeypatch):
    real = Store.record_file_error

    def refuse_the_empty_file(self, path, reason, **kwargs):
        if path == tree["empty"]:
            raise StoreError(path, "database is locked")
        return real(self, path, reason, **kwargs)

    monkeypatch.setattr(Store, "record_file_error", refuse_the_empty_file)
    summary = run_index(quick_options([Path(tree["root"])], tmp_path / "lib.db", tiny_model_dir))
    assert summary.indexed == 4
    assert [(item.path, item.message) for item in summary.failed] == [
        (tree["empty"], "empty file (0 bytes) (not recorded in the database: database is locked)")
    ]
    assert_consistent(tmp_path / "lib.db")
    with Library.open(str(tmp_path / "lib.db")) as library:
        assert library.store.get_file(tree["empty"]) is None


def test_eval_classify_reports_the_odd_files(tree, indexed, tiny_model_dir, tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("file,label\ngood.wav,tone\nrain.flac,rain\n")
    common = ("--truth", truth, "--db", indexed["db"], "--model", tiny_model_dir, *QUICK, "--quiet")
    result = run("eval", "classify", tree["root"], *common, "-o", tmp_path / "report")
    assert result.exit_code == EXIT_PARTIAL  # the empty file is left out, and said so
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert [item["path"] for item in report["skipped"]] == [tree["empty"]]
    rows = (tmp_path / "report" / "predictions.csv").read_text(encoding="utf-8")
    assert "odd\\xff\\xfe.wav" in rows


def test_a_database_path_that_is_not_utf8_is_refused_with_the_reason(tmp_path):
    result = run("stats", "--db", odd(tmp_path, b"db\xff") + "/lib.db")
    assert result.exit_code == 2 and "db\\xff/lib.db: the database's path is not valid UTF-8" in result.stderr


def test_json_stays_json_where_stdout_does_not_write_utf8(tiny_model_dir, tmp_path):
    """A Latin-1 locale (or PYTHONIOENCODING, a Windows code page) cannot write 😀: Python wrote `\\U0001f600`,
    which no JSON reader takes, and é as a Latin-1 byte where JSON is UTF-8. There the JSON is ASCII, its `\\u`
    escapes read back by any JSON reader; on a UTF-8 stream it stays readable text."""
    clip = str(write_tone(tmp_path / "😀 café.wav", 1.0, freq=500))
    latin1 = CliRunner(charset="latin-1").invoke(
        app, ["describe", clip, "--model", str(tiny_model_dir), *QUICK, "--json"]
    )
    assert latin1.exit_code == 0, latin1.output
    assert latin1.stdout_bytes.isascii() and json.loads(latin1.stdout_bytes)[0]["path"] == clip

    for encoding in ("latin-1", "utf-8"):  # export's JSON lines, on such a stdout and on a UTF-8 one
        stream = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="backslashreplace")
        _write_rows([{"path": clip}], stream)
        stream.flush()
        written = stream.buffer.getvalue()
        assert json.loads(written) == {"path": clip} and written.isascii() == (encoding == "latin-1")

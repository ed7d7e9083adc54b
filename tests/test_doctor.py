"""`pengi-search doctor`: a healthy installation, and each fault it must find with the command that fixes it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pengi_search.cli import app
from pengi_search.db import Store
from pengi_search.db.migrate import SCHEMA_HEAD

from .indexing import write_tone
from .test_store import folder_state

runner = CliRunner()
QUICK = ("--workers", "0", "--beam", "1", "--max-len", "2", "--device", "cpu", "--quiet")


@pytest.fixture()
def installation(tiny_model_dir, tmp_path, isolated_home) -> Path:
    """`base` installed (the tiny model) and one folder indexed with it; returns the database file."""
    shutil.copytree(tiny_model_dir, isolated_home / "models" / "base")
    write_tone(tmp_path / "sounds" / "bell.wav", 2.0)
    db = tmp_path / "lib.db"
    result = runner.invoke(app, ["index", str(tmp_path / "sounds"), "--db", str(db), *QUICK])
    assert result.exit_code == 0, result.output
    return db


def doctor(db: Path | str) -> tuple[int, dict]:
    result = runner.invoke(app, ["doctor", "--db", str(db), "--json"])
    return result.exit_code, json.loads(result.stdout)


def problems(report: dict) -> dict[str, tuple[str, str]]:
    return {problem["where"]: (problem["what"], problem["fix"]) for problem in report["problems"]}


def test_a_healthy_installation(installation, isolated_home):
    code, report = doctor(installation)
    assert (code, report["healthy"], report["problems"]) == (0, True, [])
    env = report["environment"]
    assert env["torch"]["version"] and env["faiss"]["gpu_build"] in (True, False) and env["offline"] is None
    assert all(env["av"]["decoders"].values())
    assert report["devices"]["torch_threads"] >= 1 and report["devices"]["auto_device"] in ("cpu", "cuda")
    [model] = report["models"]["installed"]
    assert report["models"]["in_use"] == model  # the installed default, checked once
    assert (model["name"], model["checksum_ok"], model["variant"]) == ("base", True, "base")
    assert model["tokenizers"] == {"gpt2": "model directory", "clip": "model directory"} and model["bytes"] > 0
    database = report["database"]
    assert (database["schema_revision"], database["integrity"], database["running_runs"]) == (SCHEMA_HEAD, "ok", [])
    assert database["files"]["indexed"] == 1 and database["vectors"] == {"text": 1, "audio": 1}
    assert {kind: info["state"] for kind, info in database["vector_indexes"].items()} == {"text": "ok", "audio": "ok"}
    text = runner.invoke(app, ["doctor", "--db", str(installation)])
    assert text.exit_code == 0 and "healthy: no problem found" in text.stdout
    # Every version the JSON gives, the text gives too: it left out sentence-transformers, which embeds texts
    transformers = f"{env['transformers']}, sentence-transformers {env['sentence_transformers']}"
    assert f"  transformers   {transformers}\n" in text.stdout


def test_python_dash_m_runs_the_same_commands(installation, isolated_home):
    """`python -m pengi_search`, for an environment whose scripts folder is not on PATH."""
    command = [sys.executable, "-m", "pengi_search", "doctor", "--db", str(installation), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["healthy"] is True, done.stderr


def test_a_damaged_model_file_is_found_by_its_checksum(installation, isolated_home):
    weights = isolated_home / "models" / "base" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, report = doctor(installation)
    assert code == 1 and report["models"]["installed"][0]["checksum_ok"] is False
    what, fix = problems(report)["model base"]
    assert f"{weights} is damaged or was changed" in what
    assert fix.startswith("pengi-search model fetch base")
    text = runner.invoke(app, ["doctor", "--db", str(installation)])
    assert text.exit_code == 1 and "fix: pengi-search model fetch base" in text.stdout
    assert "\n1 problem\n" in text.stdout  # not "1 problem(s)"


def test_an_imported_model_is_fixed_by_importing_it_again(installation, isolated_home):
    config = isolated_home / "models" / "base" / "config.json"
    meta = json.loads(config.read_text())
    (isolated_home / "models" / "base").rename(isolated_home / "models" / "mine")
    config = isolated_home / "models" / "mine" / "config.json"
    config.write_text(json.dumps({**meta, "source": "/data/pengi.pth", "weights_sha256": "0" * 64}))
    shutil.rmtree(isolated_home / "models" / "mine" / "tokenizer" / "clip")
    code, report = doctor(installation)
    assert code == 1
    model_problems = [p for p in report["problems"] if p["where"] == "model mine"]
    assert [p["fix"] for p in model_problems] == ["pengi-search model import /data/pengi.pth --name mine"] * 2
    assert "the clip tokenizer is in neither" in model_problems[1]["what"]
    what, fix = problems(report)["models"]
    assert "no Pengi model is installed" in what and fix == "pengi-search model fetch base"


def doctor_with(*options: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["doctor", *options, "--json"])
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.parametrize("named_by", ["PENGI_SEARCH_MODEL", "--model"])
def test_doctor_checks_the_model_the_other_commands_would_use(tiny_model_dir, tmp_path, monkeypatch, named_by):
    """A model directory named by the environment or `--model`, as `describe` and `index` would load it, is the
    one reported in use and checked: its weights against their recorded sha256, its tokenizers."""
    model = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, model)
    options = ("--model", str(model)) if named_by == "--model" else ()
    if named_by == "PENGI_SEARCH_MODEL":
        monkeypatch.setenv("PENGI_SEARCH_MODEL", str(model))
    code, report = doctor_with(*options)
    assert code == 0 and report["models"]["installed"] == []
    in_use = report["models"]["in_use"]
    assert (in_use["path"], in_use["checksum_ok"], in_use["variant"]) == (str(model), True, "base")
    assert in_use["tokenizers"] == {"gpt2": "model directory", "clip": "model directory"}
    text = runner.invoke(app, ["doctor", *options])
    assert f"in use         {model}" in text.stdout
    # its name, then its variant named as such and its size in the unit that reads best (a tiny model: MiB, not GiB)
    size = sum(item.stat().st_size for item in model.rglob("*") if item.is_file()) / 2**20
    assert f"\n  my-model       variant base, {size:.1f} MiB, sha256 ok; " in text.stdout

    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, report = doctor_with(*options)
    what, fix = problems(report)[f"model {model}"]
    assert code == 1 and f"{weights} is damaged or was changed" in what
    assert fix.startswith(f"write {model} again")


def test_doctor_says_what_a_named_model_folder_lacks(tiny_model_dir, tmp_path, monkeypatch):
    """A folder that `--model` names but no command could load (its weights unreadable or gone, its configuration
    a folder) is checked, not reported as naming nothing."""
    model = tmp_path / "half"
    shutil.copytree(tiny_model_dir, model)

    def unreadable(path: Path) -> str:
        raise PermissionError(13, "Permission denied")  # chmod 000 cannot show it to root, who runs CI

    monkeypatch.setattr("pengi_search.doctor.file_sha256", unreadable)
    what = problems(doctor_with("--model", str(model))[1])[f"model {model}"][0]
    assert what == f"{model / 'model.safetensors'} cannot be read (Permission denied)"
    (model / "model.safetensors").unlink()
    code, report = doctor_with("--model", str(model))
    assert code == 1 and report["models"]["in_use"]["path"] == str(model)
    assert problems(report)[f"model {model}"][0] == "model.safetensors is missing"
    (model / "config.json").unlink()
    (model / "config.json").mkdir()
    what = problems(doctor_with("--model", str(model))[1])[f"model {model}"][0]
    assert what == "cannot be read (Is a directory)"


def test_doctor_says_a_named_model_that_is_not_there(tmp_path, monkeypatch):
    code, report = doctor_with("--model", str(tmp_path / "nowhere"))
    assert code == 1 and report["models"]["in_use"] is None
    assert problems(report)["models"] == (
        f"--model {tmp_path / 'nowhere'} names no model",
        "point --model at a model directory",
    )
    monkeypatch.setenv("PENGI_SEARCH_MODEL", str(tmp_path / "nowhere"))
    what, fix = problems(doctor_with()[1])["models"]
    assert (what, fix) == (
        f"PENGI_SEARCH_MODEL={tmp_path / 'nowhere'} names no model",
        "point PENGI_SEARCH_MODEL at a model directory, or unset it",
    )


@pytest.mark.usefixtures("ids_sorted_not_hashed")
@pytest.mark.parametrize("damage", ["garbage", "stale"])
def test_a_damaged_or_stale_faiss_file_is_found(installation, damage):
    path = installation.with_name("lib.text.faiss")
    if damage == "garbage":
        path.write_bytes(b"not a faiss index")
    else:
        with Store.open(installation) as store:  # the database changes behind the index's back
            store.remove(str(installation.parent / "sounds"))
    code, report = doctor(installation)
    assert code == 1
    what, fix = problems(report)["text index"]
    if damage == "garbage":
        assert what.startswith(f"{path} is damaged")
    else:
        assert what == f"{path} differs from the database: 0 vectors missing, 1 extra"
    assert fix == f"pengi-search rebuild-index --db {installation}"
    assert runner.invoke(app, ["rebuild-index", "--db", str(installation)]).exit_code == 0  # the fix works
    assert doctor(installation)[0] == 0


def test_a_faiss_file_left_by_a_deleted_library_is_found(installation):
    """`rm lib.db*` leaves the FAISS files; the library then made at the same path holds other vectors under the
    same window ids, which a check of the ids alone would find in order."""
    path = installation.with_name("lib.text.faiss")
    leftover = path.read_bytes()
    for part in installation.parent.glob("lib.db*"):
        part.unlink()
    sounds = installation.parent / "sounds"
    assert runner.invoke(app, ["index", str(sounds), "--db", str(installation), *QUICK]).exit_code == 0
    path.write_bytes(leftover)
    code, report = doctor(installation)
    assert code == 1 and report["database"]["vector_indexes"]["text"]["state"] == "other library"
    what, fix = problems(report)["text index"]
    assert what == f"{path} was written for another library (one deleted before this database was made)"
    assert fix == f"pengi-search rebuild-index --db {installation}"
    assert runner.invoke(app, ["rebuild-index", "--db", str(installation)]).exit_code == 0
    assert doctor(installation)[0] == 0


def test_a_run_left_running_is_reported(installation):
    with Store.open(installation) as store:
        run = store.start_run()  # as a run killed with -9 leaves it
    code, report = doctor(installation)
    assert code == 1 and [r["id"] for r in report["database"]["running_runs"]] == [run]
    what, fix = problems(report)["indexing runs"]
    assert what.startswith(f"run {run} (started ") and "is still marked running" in what
    # to paste: the folder that holds the library's files, the library as named
    sounds = installation.parent / "sounds"
    assert fix.startswith(f"pengi-search index {sounds} --db {installation}  (the library's folders: ")


def test_nothing_is_created_for_a_missing_database(tmp_path, isolated_home):
    db = tmp_path / "no where" / "lib.db"
    code, report = doctor(db)
    assert code == 1 and report["database"]["exists"] is False and not db.parent.exists()
    assert set(problems(report)) == {"models"}  # no model yet; no database yet is no fault
    creates = f"`pengi-search index PATH... --db '{db}'` creates it"  # quoted: the folder's name has a space
    assert report["database"]["error"] == f"neither {db} nor its folder exists yet ({creates}, folder included)"
    db.parent.mkdir()
    assert doctor(db)[1]["database"]["error"] == f"no database file at {db} yet ({creates})"
    text = runner.invoke(app, ["doctor", "--db", str(db)])
    assert f"state          no database file at {db} yet" in text.stdout


@pytest.mark.parametrize("where", ["a folder", "in a file"])
def test_a_database_path_no_database_can_be_made_at_is_a_problem(tmp_path, isolated_home, where):
    """A folder where the file should be, or a file where a folder should be: `index` could not make the library."""
    (tmp_path / "notes.txt").write_text("a file")
    db = tmp_path if where == "a folder" else tmp_path / "notes.txt" / "lib.db"
    code, report = doctor(db)
    what, fix = problems(report)["database"]
    assert code == 1 and report["database"]["exists"] is False and report["database"]["error"] == what
    if where == "a folder":
        assert what == f"{tmp_path} is a folder, not a database file" and "at a database file" in fix
    else:
        assert what == f"{tmp_path / 'notes.txt'} is a file, not a folder: no database can be made at {db}"


def test_a_data_folder_that_is_a_file_is_the_problem_and_another_data_folder_the_fix(tmp_path, monkeypatch):
    """Doctor told to fetch the model (which could not land) and to check a --db nobody gave: the default library
    and the models are the data folder's, and its trouble is fixed as every command says."""
    taken = tmp_path / "taken"
    taken.write_text("a file where the data folder should be")
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(taken))
    result = runner.invoke(app, ["doctor", "--json"])
    found = problems(json.loads(result.stdout))
    home = "choose another data folder with PENGI_SEARCH_HOME=FOLDER"
    assert result.exit_code == 1
    assert found["models"] == (
        f"{taken} is a file, not a folder: no model can be installed in {taken / 'models'}",
        home,
    )
    assert found["database"] == (
        f"{taken} is a file, not a folder: no database can be made at {taken / 'index.db'}",
        f"{home}, or another library file with --db FILE",
    )


def test_an_unreadable_database_is_reported(tmp_path, isolated_home):
    db = tmp_path / "lib.db"
    db.write_bytes(b"SQLite format 3\x00" + b"this is no database" * 100)  # a SQLite file, damaged
    code, report = doctor(db)
    what, fix = problems(report)["database"]
    assert code == 1 and what.startswith("cannot be read: file is not a database")
    assert "restore the database from a backup" in fix


def test_a_file_that_is_no_database_is_no_library_and_is_left_alone(tmp_path, isolated_home):
    """`--db clip.mp3`: the wrong file given, as commands say (exit code 2); not a database to restore."""
    clip = tmp_path / "clip.mp3"
    clip.write_bytes(b"ID3" + bytes(500))
    code, report = doctor(clip)
    what, fix = problems(report)["database"]
    assert code == 1 and report["database"]["exists"] is False and report["database"]["error"] == what
    assert what == f"{clip} is not a SQLite database"
    assert fix == f"point --db or PENGI_SEARCH_DB at a database file, not at {clip}"
    assert clip.read_bytes() == b"ID3" + bytes(500)


def test_a_database_doctor_cannot_use_is_named_as_typed_as_every_command_names_it(tmp_path, isolated_home, monkeypatch):
    """`--db ../shelf/clip.mp3` is `../shelf/clip.mp3` in doctor's problem and its fix, as in `stats`' error."""
    (tmp_path / "shelf").mkdir()
    (tmp_path / "shelf" / "clip.mp3").write_bytes(b"ID3" + bytes(500))
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    what, fix = problems(doctor("../shelf/clip.mp3")[1])["database"]
    assert what == "../shelf/clip.mp3 is not a SQLite database"
    assert fix == "point --db or PENGI_SEARCH_DB at a database file, not at ../shelf/clip.mp3"
    stats = runner.invoke(app, ["stats", "--db", "../shelf/clip.mp3"])
    assert stats.stderr.startswith(f"error: {what}: ")


def test_doctor_tells_an_unreachable_server_from_a_damaged_database():
    """A login or connection failure is fixed by checking the URL and the server, not by restoring a backup; the
    password is never shown."""
    import socket

    from pengi_search.doctor import check_database

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens on it once closed
    data, [problem] = check_database(f"postgresql+psycopg://me:Secret-PW@127.0.0.1:{port}/pengi")
    assert data["url"] == f"postgresql+psycopg://me:***@127.0.0.1:{port}/pengi"
    assert problem.what.startswith("cannot be read: connection failed") and "(psycopg." not in problem.what
    assert "check the URL" in problem.fix and "backup" not in problem.fix
    assert "Secret-PW" not in json.dumps([data, problem.what, problem.fix])
    assert (data["exists"], data["error"]) == (None, problem.what)  # unknown, and why: not "exists" by default


@pytest.mark.parametrize("driver", ["postgres", "postgresql", "postgresql+psycopg"])
def test_doctor_and_stats_show_a_servers_url_one_way_whatever_its_spelling(isolated_home, driver):
    """The three spellings are one database (and one pair of FAISS files): `doctor` shows the URL as `stats` and
    every message do, with the driver it is used through and the password hidden, not as it was typed."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens on it once closed
    typed, shown = (f"{scheme}://me:Secret-PW@127.0.0.1:{port}/pengi" for scheme in (driver, "postgresql+psycopg"))
    shown = shown.replace("Secret-PW", "***")
    assert doctor(typed)[1]["database"]["url"] == shown
    stats = runner.invoke(app, ["stats", "--db", typed])
    assert stats.exit_code == 1 and stats.stderr.startswith(f"error: {shown}: cannot open the database"), stats.stderr


def test_whether_a_library_exists_is_unknown_when_the_server_cannot_be_reached_or_the_url_used(isolated_home):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens on it once closed
    for url, reason in (
        (f"postgresql+psycopg://nobody@127.0.0.1:{port}/nope", "cannot be read: connection failed"),
        ("postgresql+pyscopg://nobody@127.0.0.1/nope", "cannot use this database URL: no database driver"),
        ("postgresql+psycopg//nobody@127.0.0.1/nope", "not a database URL"),
    ):
        code, report = doctor(url)
        database = report["database"]
        assert code == 1 and database["exists"] is None and database["error"].startswith(reason), url
        assert problems(report)["database"][0] == database["error"]
        text = runner.invoke(app, ["doctor", "--db", url])
        assert f"state          unknown: {reason}" in text.stdout and "not created yet" not in text.stdout


def test_doctor_on_a_database_that_is_empty_or_another_applications(tmp_path):
    import sqlite3

    from pengi_search.doctor import check_database

    sqlite3.connect(tmp_path / "empty.db").close()
    creates = f"`pengi-search index PATH... --db {tmp_path / 'empty.db'}` makes it"
    assert check_database(str(tmp_path / "empty.db")) == (
        {
            "url": f"sqlite:///{tmp_path / 'empty.db'}",
            "exists": False,
            "error": f"an empty database, with no library yet ({creates})",
            "schema_revision": None,
        },
        [],
    )
    assert (tmp_path / "empty.db").stat().st_size == 0  # doctor changes nothing: not even a header written into it
    with sqlite3.connect(tmp_path / "other.db") as other:
        other.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    before = folder_state(tmp_path)
    _data, [problem] = check_database(str(tmp_path / "other.db"))
    assert "another application's tables (users)" in problem.what and "of pengi-search's own" in problem.fix
    assert folder_state(tmp_path) == before  # not switched to WAL: another application's file is not written to

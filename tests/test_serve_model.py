"""A server runs with one model (`--model`): one that did not build the library is refused, as `similar --model
other` is, for what only compares stored vectors too: at start, and once the library is indexed by another."""

from __future__ import annotations

import html
import json
import shlex
import shutil
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from pengi_search.db import OtherModelError, Store
from pengi_search.db.schema import WindowRow
from pengi_search.serve import create_app
from pengi_search.testing import make_tiny_model_dir

from .search_library import CaptionLibrary, caption_library, model_info
from .serving import LOCAL, ServeProcess, settings_for

START_WITH_ITS_MODEL = "start the server with the library's model (--model)"


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "other", seed=1)


def test_a_server_of_another_model_does_not_start_and_says_the_command_that_indexes_the_library_anew(
    captions, other_model
):
    with pytest.raises(OtherModelError) as refused:
        create_app(settings_for(captions, other_model))
    said = str(refused.value)
    assert "the index was built with model 'tiny-base'" in said and f"{START_WITH_ITS_MODEL}, or index" in said
    reindex = ["--reindex", "--model", str(other_model), "--db", captions.db]
    assert shlex.split(said.split("`")[1]) == ["pengi-search", "index", str(captions.root), *reindex]


def test_a_library_indexed_by_another_model_while_served_is_refused_in_similar_by_window(
    tmp_path, tiny_model_dir, other_model
):
    """Started on an empty library (nothing to differ), the server then finds it built by another model: similar
    from a stored window, which needs no model, is refused as a search is (409, naming the library's model), on
    its page too, rather than answered under the server's model's name."""
    library = CaptionLibrary(str(tmp_path / "index.db"), tmp_path / "sounds", {})
    Store.open(library.db).close()
    with TestClient(create_app(settings_for(library, other_model)), base_url=LOCAL) as client:
        caption_library(library.db, library.root, tiny_model_dir)
        with Store.open(library.db, read_only=True) as store, store.session() as session:
            window_id = session.scalars(select(WindowRow.id).limit(1)).one()
        for path in ("/api/similar", "/similar"):
            answer = client.get(path, params={"window_id": window_id})
            said = html.unescape(answer.text)  # the page's text, as the API's JSON has it
            assert answer.status_code == 409, (path, said)
            assert "built with model 'tiny-base'" in said and START_WITH_ITS_MODEL in said
        assert client.get("/api/search", params={"q": "a bell rings"}).status_code == 409


def _upload_similar(client: TestClient, clip: Path) -> Any:
    return client.post("/api/similar", params={"k": 3}, files={"file": ("clip.wav", clip.read_bytes())})


def test_an_upload_without_model_is_embedded_by_the_installed_copy_of_the_librarys_model(
    captions, tiny_model_dir, isolated_home
):
    """Without --model the server runs with the library's own model, as `query` finds it: the default model is
    another, so an installed copy with the library's weights embeds the upload, and it finds what the server of
    that model finds, rather than being refused."""
    models = isolated_home / "models"
    make_tiny_model_dir(models / "base", seed=1)  # the default, but not what built the library
    shutil.copytree(tiny_model_dir, models / "zz-tiny")
    clip = captions.files["bell.wav"]
    with TestClient(create_app(settings_for(captions, tiny_model_dir)), base_url=LOCAL) as client:
        expected = _upload_similar(client, clip)
    with TestClient(create_app(replace(settings_for(captions, tiny_model_dir), model=None)), base_url=LOCAL) as client:
        answer = _upload_similar(client, clip)
        assert answer.status_code == 200, answer.text
        assert answer.json() == expected.json()
        described = client.post("/api/describe", files={"file": ("clip.wav", clip.read_bytes())})
        assert described.status_code == 200, described.text  # the default model describes, as `describe` does


def test_an_upload_without_model_is_refused_when_the_librarys_model_is_not_installed(
    tmp_path, tiny_model_dir, isolated_home
):
    """Started on an empty library, the server then finds it built by a model not installed here (the default is
    another): an upload is refused (409) with what to do, on the API and the page, not embedded by the default
    model to be compared with another model's vectors."""
    make_tiny_model_dir(isolated_home / "models" / "base", seed=1)
    library = CaptionLibrary(str(tmp_path / "index.db"), tmp_path / "sounds", {})
    Store.open(library.db).close()
    settings = replace(settings_for(library, tiny_model_dir), model=None)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        built = caption_library(library.db, library.root, tiny_model_dir)
        clip = built.files["bell.wav"].read_bytes()
        answer = client.post("/api/similar", params={"k": 3}, files={"file": ("clip.wav", clip)})
        assert answer.status_code == 409, answer.text
        said = answer.json()["detail"]
        assert "built with model 'tiny-base'" in said and "which is not installed here" in said, said
        assert START_WITH_ITS_MODEL in said
        page = client.post("/upload/similar", files={"file": ("clip.wav", clip)}, data={"k": "3"})
        assert page.status_code == 409 and START_WITH_ITS_MODEL in html.unescape(page.text)


INSTALL_IT = "install it (`pengi-search model import CHECKPOINT --name tiny-base`)"


def test_a_server_without_model_whose_librarys_model_is_not_installed_starts_and_refuses_only_what_needs_it(
    captions, tiny_model_dir, isolated_home, caplog
):
    """No model installed here, and the library built by one: the server starts (was: it did not) and says at start
    what it refuses; files, players, spectrograms, waveforms, statistics and "more like this" from a stored window
    need no model and are served. A text search is refused (409) in one line that names the model and how to install
    it, on the API and the page; describe, which needs the default model, says how to fetch it. Installed while the
    server runs, the model is found at the next search."""
    caplog.set_level("WARNING", logger="pengi_search.serve")
    with TestClient(create_app(replace(settings_for(captions, tiny_model_dir), model=None)), base_url=LOCAL) as client:
        assert [record.getMessage() for record in caplog.records] == [
            f"text search needs the library's model: {captions.db}: the index was built with model 'tiny-base' "
            f"(fingerprint {model_info(tiny_model_dir).fingerprint[:16]}), which is not installed here: {INSTALL_IT}, "
            f"or {START_WITH_ITS_MODEL}, or index the library anew with the default model: "
            f"`pengi-search index {captions.root} --reindex --db {captions.db}`"
        ]
        with Store.open(captions.db, read_only=True) as store:
            file_id = store.get_file(str(captions.files["bell.wav"])).id
        window_id = client.get(f"/api/files/{file_id}").json()["windows"][0]["window_id"]
        served = [
            f"/files/{file_id}",
            f"/api/files/{file_id}/audio",
            f"/api/files/{file_id}/spectrogram.png",
            f"/api/windows/{window_id}/peaks",
            f"/api/similar?window_id={window_id}",
            f"/similar?window_id={window_id}",
            "/api/stats",
            "/library",
            "/",
        ]
        assert {path: client.get(path).status_code for path in served} == dict.fromkeys(served, 200)
        for rank in ("caption", "audio"):
            refused = client.get("/api/search", params={"q": "a bell rings", "rank": rank})
            assert refused.status_code == 409, refused.text
            detail = refused.json()["detail"]
            assert "built with model 'tiny-base'" in detail and INSTALL_IT in detail and "\n" not in detail
        page = client.get("/", params={"q": "a bell rings"})
        assert page.status_code == 409 and INSTALL_IT in html.unescape(page.text)
        described = client.post("/api/describe", files={"file": ("bell.wav", captions.files["bell.wav"].read_bytes())})
        assert described.status_code == 409 and "run `pengi-search model fetch base`" in described.json()["detail"]
        shutil.copytree(tiny_model_dir, isolated_home / "models" / "tiny-base")
        found = client.get("/api/search", params={"q": "a bell rings", "k": 1})
        assert found.status_code == 200 and found.json()[0]["path"] == str(captions.files["bell.wav"])
    assert [record.levelname for record in caplog.records] == ["WARNING"]  # nothing logged as a failure


def test_serve_without_model_starts_on_a_library_whose_model_is_not_installed_and_says_so(captions, tmp_path):
    """`pengi-search serve` (was: `error: ... pass the library's model ... as model=`, exit 1): it serves, having
    said in one line what it refuses until the model is installed."""
    served = ServeProcess("--db", captions.db, "--device", "cpu", home=tmp_path)
    try:
        address = served.address()
        assert address is not None, served.rest_of_output()
        said = [line for line in served.output if "tiny-base" in line]
        assert len(said) == 1 and said[0].startswith("warning: text search needs the library's model: "), said
        assert INSTALL_IT in said[0]
        with urllib.request.urlopen(f"{address}/api/stats", timeout=30) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{address}/api/search?q=a+bell+rings", timeout=30)
        assert refused.value.code == 409 and INSTALL_IT in json.loads(refused.value.read())["detail"]
    finally:
        served.stop()
    assert "Traceback" not in served.rest_of_output()


def test_a_library_of_a_released_model_not_installed_is_served_and_says_to_fetch_it(tmp_path, tiny_model_dir):
    """The library's model is a release (`base`), and no model is installed here: the server starts, and a text
    search says to fetch it."""
    released = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / "base")
    config = json.loads((released / "config.json").read_text())
    (released / "config.json").write_text(json.dumps({**config, "name": "base"}))
    library = caption_library(str(tmp_path / "index.db"), tmp_path / "sounds", released)
    with TestClient(create_app(replace(settings_for(library, released), model=None)), base_url=LOCAL) as client:
        refused = client.get("/api/search", params={"q": "a bell rings"})
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert "built with model 'base'" in detail and "install it (`pengi-search model fetch base`)" in detail

"""A server runs with one model (`--model`): one that did not build the library is refused, as `similar --model
other` is, for what only compares stored vectors too: at start, and once the library is indexed by another."""

from __future__ import annotations

import html
import shlex
import shutil
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

from .search_library import CaptionLibrary, caption_library
from .serving import LOCAL, settings_for

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

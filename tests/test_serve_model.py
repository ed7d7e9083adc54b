"""A server runs with one model (`--model`): one that did not build the library is refused, as `similar --model
other` is, for what only compares stored vectors too: at start, and once the library is indexed by another."""

from __future__ import annotations

import html
import shlex
from pathlib import Path

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

"""`pengi-search serve`: the pages of results of an approximate index (HNSW) join into one list, as an exact
index's do: no hit comes twice or never, whether the pages are asked for one at a time or all at once (a reload)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pengi_search.choices import By
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_USAGE
from pengi_search.db import EmbedderInfo, TextRecord, WindowInput
from pengi_search.library import Library
from pengi_search.model_dir import ModelDir
from pengi_search.search import SearchScope, search_pages
from pengi_search.serve import ServeSettings
from pengi_search.serve.kept_clips import KeptClip
from pengi_search.serve.service import SearchParams
from pengi_search.text_query import NumpyTextEmbedder
from pengi_search.vectors import VectorIndex

from .search_library import CAPTION, CaptionLibrary, model_info
from .serving import client_for

FILES, WINDOWS = 400, 5  # 2,000 windows: a page of 5 is searched approximately, not exactly (LARGE_K_SHARE)
PAGE, PAGES = 5, 4
runner = CliRunner()


@dataclass
class RandomLibrary:
    served: CaptionLibrary
    vectors: dict[str, np.ndarray]  # kind -> the windows' vectors, in the order of their ids (`ids`)
    ids: np.ndarray


@pytest.fixture(scope="module")
def approximate(tmp_path_factory, tiny_model_dir) -> RandomLibrary:
    """400 files of 5 windows of random caption and audio vectors, in HNSW files that search with efSearch 1: a
    page's search walks the graph as widely as its candidates (4 a result), and a deeper one more widely, finding
    hits the shallower missed."""
    root = tmp_path_factory.mktemp("approximate")
    db = str(root / "index.db")
    embedder = NumpyTextEmbedder.from_model_dir(ModelDir.read(tiny_model_dir))
    rng = np.random.default_rng(0)
    vectors = {
        kind: rng.standard_normal((FILES * WINDOWS, embedder.dim)).astype(np.float32) for kind in ("text", "audio")
    }
    with Library.open(db) as library:
        library.store.set_index_meta(model_info(tiny_model_dir), EmbedderInfo(embedder.id, embedder.dim))
        for file in range(FILES):
            file_id = library.store.upsert_file(f"/lib/{file:03d}.wav", size=1, mtime=1.0)
            rows = range(file * WINDOWS, (file + 1) * WINDOWS)
            windows = [
                WindowInput(
                    w,
                    7.0 * w,
                    7.0 * w + 7.0,
                    [TextRecord(CAPTION, f"{file} {w}")],
                    {k: v[row] for k, v in vectors.items()},
                )
                for w, row in enumerate(rows)
            ]
            library.store.replace_file_windows(file_id, windows)
        library.sync_vector_indexes("hnsw")
        ids = np.sort(library.vector_index("text").ids())
        for kind in vectors:
            index, tag = VectorIndex.load(library.index_path(kind))
            index.tune(ef_search=1)
            index.save(library.index_path(kind), tag)
    return RandomLibrary(CaptionLibrary(db, root, {}), vectors, ids)


def identities(hits: list[dict], by: str) -> list:
    return [hit["path"] if by == "file" else hit["window_id"] for hit in hits]


def one_by_one(client, endpoint: str, by: str, **params) -> list:
    """The pages of a search asked for one at a time, as "More results" asks for them, joined."""
    joined = []
    for offset in range(0, PAGE * PAGES, PAGE):
        response = client.get(f"/api/{endpoint}", params={**params, "k": PAGE, "by": by, "offset": offset})
        assert response.status_code == 200, response.text
        joined += identities(response.json(), by)
    return joined


TEXTS = ["a dog barks", "birds sing", "engine", "water"]  # near some of them, a deeper search finds more


@pytest.mark.parametrize("by", ["window", "file"])
def test_a_text_searchs_pages_asked_one_at_a_time_are_the_list_a_reload_shows(approximate, tiny_model_dir, by):
    """Each page of an approximate index continues the one before exactly: no hit twice, none skipped; and the list
    they make is the one the search page shows all at once (`pages=4`, a reload or Back after "More results")."""
    with client_for(approximate.served, tiny_model_dir) as client:
        service = client.app.state.service
        for text in TEXTS:
            joined = one_by_one(client, "search", by, q=text)
            at_once = service.search(text, SearchParams(k=PAGE, by=by, pages=PAGES)).hits
            assert len(joined) == len(set(joined)) == PAGE * PAGES, text
            assert joined == identities(at_once, by), text


@pytest.mark.parametrize("by", ["window", "file"])
def test_an_uploaded_clips_pages_asked_one_at_a_time_are_the_list_a_reload_shows(approximate, tiny_model_dir, by):
    """The same for the similar sounds of an uploaded clip, paged by its token (`GET /api/similar?upload=`)."""
    clips = np.random.default_rng(1).standard_normal((4, 2, approximate.vectors["audio"].shape[1])).astype(np.float32)
    with client_for(approximate.served, tiny_model_dir) as client:
        service = client.app.state.service
        for number, clip in enumerate(clips):
            token = service.kept.keep(KeptClip("clip.wav", "0" * 64, clip, [(0.0, 7.0), (3.0, 10.0)]))
            joined = one_by_one(client, "similar", by, upload=token)
            _, at_once = service.similar_to_kept(token, SearchParams(k=PAGE, by=by, pages=PAGES))
            assert len(joined) == len(set(joined)) == PAGE * PAGES, number
            assert joined == identities(at_once, by), number


def test_later_pages_hold_every_hit_an_exact_search_ranks_above_them(approximate):
    """Nothing is skipped: past the first page (the index's fast, approximate search), the pages hold the exact
    search's best windows, those the first page's search missed too."""
    vectors = approximate.vectors["text"] / np.linalg.norm(approximate.vectors["text"], axis=1, keepdims=True)
    queries = np.random.default_rng(2).standard_normal((20, vectors.shape[1])).astype(np.float32)
    missed = 0
    with Library.open(approximate.served.db, read_only=True) as library:
        index = library.vector_index("text")
        for query in queries:
            exact = approximate.ids[np.argsort(-(vectors @ query))].tolist()
            pages = [
                search_pages(library, index, query[None], SearchScope(PAGE, By.window), offset=offset)
                for offset in range(0, PAGE * PAGES, PAGE)
            ]
            joined = [hit.window_id for page in pages for hit in page]
            assert len(set(joined)) == len(joined) == PAGE * PAGES
            assert set(exact[: PAGE * (PAGES - 1)]) <= set(joined)
            missed += set(joined[:PAGE]) != set(exact[:PAGE])
    assert missed  # the first pages of some queries missed hits of the exact first page


# -- the limits: `serve --max-results` and `--max-offset` -----------------------------------------------------------


def test_serve_takes_its_paging_limits_from_the_command_line(served, tiny_model_dir, monkeypatch):
    """`--max-results` and `--max-offset` are the server's `max_k` and `max_offset` (shown in `--help`, with the
    server's own defaults)."""
    started = []

    def serve_app(settings: ServeSettings, _listener, announce: Callable[[], None]) -> None:
        started.append(settings)
        announce()  # says where it serves, as once it answers, and stops at once

    monkeypatch.setattr("pengi_search.cli.serve._serve_app", serve_app)
    args = ["serve", "--db", served.db, "--port", "0", "--max-results", "3", "--max-offset", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    [settings] = started
    assert (settings.max_k, settings.max_offset) == (3, 4)
    shown = runner.invoke(app, ["serve", "--help"]).output
    assert "--max-results" in shown and "--max-offset" in shown
    options = {param.opts[0]: param for param in typer.main.get_command(app).commands["serve"].params}
    defaults = ServeSettings()
    assert (options["--max-results"].default, options["--max-offset"].default) == (defaults.max_k, defaults.max_offset)


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--max-results", "0", "Input should be greater than or equal to 1"),
        ("--max-results", "ten", "Input should be a valid integer"),
        ("--max-offset", "-1", "Input should be greater than or equal to 0"),
    ],
)
def test_serve_refuses_paging_limits_that_are_no_count(served, option, value, says):
    """One line, before anything is loaded (exit 2)."""
    result = runner.invoke(app, ["serve", "--db", served.db, "--port", "0", option, value])
    assert result.exit_code == EXIT_USAGE
    assert result.output.startswith(f"error: Invalid value for '{option}': {says}")
    assert len(result.output.splitlines()) == 1


def test_the_api_and_the_pages_keep_the_servers_limits(served, tiny_model_dir):
    with client_for(served, tiny_model_dir, max_k=3, max_offset=4) as client:
        search = {"q": "a bell rings", "by": "window"}
        assert client.get("/api/search", params={**search, "k": 3, "offset": 4}).status_code == 200
        too_many = client.get("/api/search", params={**search, "k": 4}).json()
        assert too_many["errors"] == [{"field": "k", "message": "the number of results must be between 1 and 3"}]
        too_deep = client.get("/api/similar", params={"window_id": 1, "k": 2, "offset": 5}).json()
        assert too_deep["errors"] == [{"field": "offset", "message": "the results skipped must be between 0 and 4"}]
        page = client.get("/", params={**search, "k": 4})
        assert page.status_code == 422 and "the number of results must be between 1 and 3" in page.text
        assert 'name="k" min="1" max="3"' in client.get("/").text

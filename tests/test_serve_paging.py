"""`pengi-search serve`: the pages of results of an approximate index (HNSW) join into one list, as an exact
index's do: no hit comes twice or never, whether the pages are asked for one at a time or all at once (a reload)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
from pengi_search.serve.ranked_pages import LOOK_AHEAD
from pengi_search.serve.service import SearchParams
from pengi_search.text_query import NumpyTextEmbedder

from .search_library import CAPTION, CaptionLibrary, caption_library, model_info
from .serving import client_for
from .test_serve_live import store_window_without_faiss

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
        library.tune(ef_search=1)  # recorded in the database too, whose knobs every machine's files follow
        ids = np.sort(library.vector_index("text").ids())
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


# -- the pages after the first: cut from one deeper search, kept until the library changes --------------------------


def count_searches(monkeypatch) -> list[int]:
    """The pages each search of the server's asks `search_pages` for, one entry per search."""
    asked: list[int] = []

    def counted(*args, pages: int = 1, **kwargs):
        asked.append(pages)
        return search_pages(*args, pages=pages, **kwargs)

    monkeypatch.setattr("pengi_search.serve.service.search_pages", counted)
    return asked


@pytest.mark.parametrize("by", ["window", "file"])
def test_later_pages_are_cut_from_one_deeper_search_and_are_the_pages_searched_alone(
    approximate, tiny_model_dir, monkeypatch, by
):
    """ "More results" does not search again for each page: the second page's search goes LOOK_AHEAD pages deeper,
    and the next pages are cut from its hits. Each page is still the one a search for it alone gives
    (`search_pages` at its offset, as every page was before), on an approximate index too."""
    asked = count_searches(monkeypatch)
    embedder = NumpyTextEmbedder.from_model_dir(ModelDir.read(tiny_model_dir))
    with client_for(approximate.served, tiny_model_dir) as client, Library.open(approximate.served.db) as library:
        index = library.vector_index("text")
        for text in TEXTS:
            asked.clear()
            joined = one_by_one(client, "search", by, q=text)
            assert asked == [1, 2 + LOOK_AHEAD], text  # the first page, then the second and LOOK_AHEAD more
            query = embedder.embed([text])
            alone = [
                search_pages(library, index, query, SearchScope(PAGE, By(by)), offset=offset)
                for offset in range(0, PAGE * PAGES, PAGE)
            ]
            assert joined == [hit.path if by == "file" else hit.window_id for page in alone for hit in page], text


def test_a_library_changed_since_a_page_was_kept_is_searched_anew(tmp_path, tiny_model_dir, monkeypatch):
    """The hits kept for the next pages are of the library as it was: once the server finds it changed (here a
    window that ranks first is added), the next page is searched again, and holds the hit pushed down to it."""
    library = caption_library(str(tmp_path / "index.db"), tmp_path / "sounds", tiny_model_dir)
    asked = count_searches(monkeypatch)
    search = {"q": "an owl hoots", "by": "window", "k": 1}
    with client_for(library, tiny_model_dir) as client:
        first, second = (client.get("/api/search", params={**search, "offset": n}).json() for n in (0, 1))
        third = client.get("/api/search", params={**search, "offset": 2}).json()
        assert len(asked) == 2  # the third page was cut from the second's search
        store_window_without_faiss(library.db, tiny_model_dir, "/late/owl.wav", "an owl hoots")
        assert client.get("/api/search", params={**search, "offset": 1}).json() == first
        assert client.get("/api/search", params={**search, "offset": 2}).json() == second
        assert len(asked) == 3 and third != second


def test_a_later_page_says_a_file_gone_from_disk_since_its_hits_were_kept_is_missing(tmp_path, tiny_model_dir):
    """A page cut from kept hits says whether each file is on disk now, as a search does, not as it was kept."""
    library = caption_library(str(tmp_path / "index.db"), tmp_path / "sounds", tiny_model_dir)
    search = {"q": "a dog barks", "by": "window", "k": 1}
    with client_for(library, tiny_model_dir) as client:
        _, third = (client.get("/api/search", params={**search, "offset": n}).json()[0] for n in (1, 2))  # 3 is kept
        assert not third["missing"]
        Path(third["path"]).unlink()
        assert client.get("/api/search", params={**search, "offset": 2}).json() == [{**third, "missing": True}]


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

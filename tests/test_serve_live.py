"""The server follows the index: files indexed by another writer while it runs appear in the next search, and
searches during the writes never fail."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pengi_search.db import StoreError
from pengi_search.library import Library
from pengi_search.serve.live import GuardedIndex, SharedLock

from .indexing import write_tone
from .search_library import caption_library, index_folder
from .serving import client_for
from .test_store import db_url  # noqa: F401 (the fixture: SQLite, and PostgreSQL when a server is given)


def window_paths(client) -> set[str]:
    response = client.get("/api/search", params={"q": "a bell rings", "by": "window", "k": 200})
    assert response.status_code == 200, response.text
    return {hit["path"] for hit in response.json()}


def test_new_windows_appear_without_a_restart(tmp_path, tiny_model_dir):
    library = caption_library(str(tmp_path / "index.db"), tmp_path / "sounds", tiny_model_dir)
    new_root = tmp_path / "new"
    new_files = [write_tone(new_root / f"tone-{i}.wav", 2.0 + 6 * i, freq=500.0 + 100 * i) for i in range(3)]
    with client_for(library, tiny_model_dir) as client:
        before = window_paths(client)
        assert before == {str(path) for path in library.files.values()}
        failures: list[str] = []
        searches = 0
        stop = threading.Event()

        def search_while_indexing() -> None:
            nonlocal searches
            while not stop.is_set():
                response = client.get("/api/search", params={"q": "a bell rings", "by": "window", "k": 50})
                searches += 1
                if response.status_code != 200:
                    failures.append(response.text)
                stop.wait(0.02)  # leave the indexer room on a small machine

        searcher = threading.Thread(target=search_while_indexing)
        searcher.start()
        try:
            index_folder(library.db, new_root, tiny_model_dir)  # another writer: the real indexer
        finally:
            stop.set()
            searcher.join()
        assert failures == [] and searches > 0
        assert window_paths(client) == before | {str(path) for path in new_files}
        stats = client.get("/api/stats").json()
        with Library.open(library.db) as opened:
            expected = len(opened.store.vector_ids("text"))
        assert stats["vector_indexes"]["text"]["vectors_in_memory"] == stats["vectors"]["text"] == expected


def store_window_without_faiss(db: str, model_dir, path: str, caption: str) -> None:
    """Commit one window to the database as the indexer does, but leave the FAISS files as they are."""
    from pengi_search.db import Store, TextRecord, WindowInput
    from pengi_search.model_dir import ModelDir
    from pengi_search.text_query import NumpyTextEmbedder

    text = NumpyTextEmbedder.from_model_dir(ModelDir.read(model_dir)).embed([caption])[0]
    with Store.open(db) as store:
        _, audio = store.vectors("audio")
        file_id = store.upsert_file(path, size=1, mtime=1.0)
        window = WindowInput(
            0, 0.0, 3.0, [TextRecord("generate audio caption", caption)], {"text": text, "audio": audio[0]}
        )
        store.replace_file_windows(file_id, [window])


def test_windows_committed_before_the_faiss_files_are_saved_are_found(tmp_path, tiny_model_dir):
    """The database is the source of truth: a window committed but not yet in a FAISS file is searchable, and the
    FAISS files saved later replace the server's indexes."""
    library = caption_library(str(tmp_path / "index.db"), tmp_path / "sounds", tiny_model_dir)
    faiss_files = sorted(tmp_path.glob("*.faiss"))
    stamps = [path.stat().st_mtime_ns for path in faiss_files]
    with client_for(library, tiny_model_dir) as client:
        assert len(window_paths(client)) == 4
        store_window_without_faiss(library.db, tiny_model_dir, "/late/owl.wav", "an owl hoots")
        assert [path.stat().st_mtime_ns for path in faiss_files] == stamps
        hits = client.get("/api/search", params={"q": "an owl hoots", "k": 1}).json()
        assert (hits[0]["caption"], hits[0]["path"]) == ("an owl hoots", "/late/owl.wav")
        with Library.open(library.db) as writer:  # what an indexing run does at its end
            writer.sync_vector_indexes()
        assert [path.stat().st_mtime_ns for path in faiss_files] != stamps
        hits = client.get("/api/search", params={"q": "an owl hoots", "k": 1}).json()
        assert (hits[0]["caption"], hits[0]["path"]) == ("an owl hoots", "/late/owl.wav")
        assert client.get("/api/stats").json()["vector_indexes"]["text"]["vectors_in_memory"] == 6


def test_the_server_reads_every_backend_read_only(db_url, tmp_path, tiny_model_dir):  # noqa: F811 (a fixture)
    library = caption_library(db_url, tmp_path / "sounds", tiny_model_dir)
    with client_for(library, tiny_model_dir) as client:
        assert len(window_paths(client)) == 4
        with pytest.raises(StoreError):
            client.app.state.service.library.store.upsert_file("/tmp/x.wav", size=1, mtime=1.0)
        store_window_without_faiss(db_url, tiny_model_dir, "/late/owl.wav", "an owl hoots")
        hits = client.get("/api/search", params={"q": "an owl hoots", "k": 1}).json()
        assert hits[0]["path"] == "/late/owl.wav"


def test_the_default_ranking_follows_captions_as_they_arrive(tmp_path, tiny_model_dir):
    """A window without captions yet (pass 1 done) makes a text search rank by audio; once the caption pass has
    written its captions and saved the FAISS files, by caption again. The server counts captions once per refresh,
    not per search."""
    from pengi_search.db import Store, TextRecord, WindowCaptions, WindowInput, add_captions
    from pengi_search.model_dir import ModelDir
    from pengi_search.text_query import NumpyTextEmbedder

    library = caption_library(str(tmp_path / "index.db"), tmp_path / "sounds", tiny_model_dir)

    def ranking(client) -> str:
        response = client.get("/api/search", params={"q": "an owl hoots", "k": 3})
        assert response.status_code == 200, response.text
        return response.json()[0]["ranking"]

    with client_for(library, tiny_model_dir) as client:
        assert ranking(client) == "caption"
        with Store.open(library.db) as store:
            _, audio = store.vectors("audio")
            file_id = store.upsert_file("/late/owl.wav", size=1, mtime=1.0)
            added = store.replace_file_windows(file_id, [WindowInput(0, 0.0, 3.0, [], {"audio": audio[0]})])
        (window_id,) = added.added_window_ids
        assert ranking(client) == "audio"
        caption = NumpyTextEmbedder.from_model_dir(ModelDir.read(tiny_model_dir)).embed(["an owl hoots"])[0]
        with Library.open(library.db) as writer:
            texts = [TextRecord("generate audio caption", "an owl hoots")]
            add_captions(writer.store, [WindowCaptions(window_id, texts, caption)])
            writer.sync_vector_indexes()
        assert ranking(client) == "caption"


# -- searches share the index, growth has it alone ------------------------------------------------------------


def test_shared_lock_lets_searches_overlap_and_growth_wait_for_them():
    lock = SharedLock()
    inside, both_in, grown = threading.Barrier(2, timeout=5), threading.Event(), threading.Event()
    grown_during_a_search: list[bool] = []

    def search() -> None:
        with lock.shared():
            inside.wait()  # only passes when the other search holds the lock at the same time
            both_in.set()
            grown_during_a_search.append(grown.wait(0.2))

    def grow() -> None:
        both_in.wait(5)
        with lock.exclusive():
            grown.set()

    threads = [threading.Thread(target=f) for f in (search, search, grow)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert grown_during_a_search == [False, False] and grown.is_set()


class _Asked:
    """Stands in for the index a `GuardedIndex` guards: records what each search asked of it."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, dict]] = []

    def search(self, queries: np.ndarray, k: int, **how) -> tuple[np.ndarray, np.ndarray]:
        self.asked.append((k, how))
        return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)


def test_a_guarded_index_passes_a_search_on_with_everything_it_asks():
    guarded, allowed = _Asked(), np.array([3, 7])
    GuardedIndex(guarded).search(np.ones((1, 4), np.float32), 2, allowed_ids=allowed, exact_top=1, exact=True)
    [(k, how)] = guarded.asked
    assert k == 2 and how.pop("allowed_ids") is allowed and how == {"exact_top": 1, "exact": True}


def test_shared_lock_holds_new_searches_back_while_growth_waits():
    lock = SharedLock()
    order: list[str] = []
    first_in, late_arriving = threading.Event(), threading.Event()

    def first_search() -> None:
        with lock.shared():
            first_in.set()
            late_arriving.wait(10)  # growth is queued (it cannot pass this search) and the late search comes
            time.sleep(0.2)  # room for a late search wrongly let in to get in before this one ends
            order.append("first search")

    def grow() -> None:
        first_in.wait(10)
        with lock.exclusive():
            order.append("growth")

    def late_search() -> None:
        while not lock._waiting:  # arrive once growth is queued
            time.sleep(0.001)
        late_arriving.set()
        with lock.shared():
            order.append("late search")

    threads = [threading.Thread(target=f) for f in (first_search, grow, late_search)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert order == ["first search", "growth", "late search"]

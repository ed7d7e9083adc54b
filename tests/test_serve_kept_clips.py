"""`pengi-search serve`: an uploaded clip's similar sounds page as a text search's do, by the token of its kept
embedding (`serve/kept_clips.py`), from the API and on the upload page, until the token expires."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from markupsafe import escape

from pengi_search.serve.kept_clips import KEEP_S, MOST_KEPT, KeptClip, KeptClips

from .serving import client_for

GONE = (
    "this clip's results are no longer kept (they are kept 15 minutes after they were last asked for): "
    "send the clip again"
)


class Clock:
    """A clock the test moves on (KeptClips dates its files by it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def client(served, tiny_model_dir):
    with client_for(served, tiny_model_dir) as client:
        yield client


def bell_clip(served) -> tuple[str, bytes]:
    return ("bell.wav", served.files["bell.wav"].read_bytes())


def upload(client, served, **params) -> tuple[str, list[tuple[str, float]]]:
    """POST /api/similar with bell.wav: the token it answers with, and its hits."""
    response = client.post("/api/similar", params=params, files={"file": bell_clip(served)})
    assert response.status_code == 200, response.text
    return response.headers["X-Pengi-Upload"], paths_and_scores(response.json())


def paths_and_scores(hits: list[dict]) -> list[tuple[str, float]]:
    return [(hit["path"], hit["score"]) for hit in hits]


def page(client, token: str, **params) -> list[tuple[str, float]]:
    response = client.get("/api/similar", params={"upload": token, **params})
    assert response.status_code == 200, response.text
    return paths_and_scores(response.json())


# -- the API -----------------------------------------------------------------------------------------------------


def test_an_uploads_next_pages_are_asked_for_by_its_token_without_sending_it_again(client, served):
    """The pages (`offset=0, k`, `offset=k, k`, ...) are the hits of one longer search, as a text search's are: the
    first is the upload's own answer, the next ones `GET /api/similar?upload=TOKEN` (its file left out, as there)."""
    _, whole = upload(client, served, k=4, by="window")
    token, first = upload(client, served, k=2, by="window")
    assert len(whole) == 4 and str(served.files["bell.wav"]) not in {path for path, _ in whole}
    assert first + page(client, token, k=2, by="window", offset=2) == whole
    assert page(client, token, k=2, by="window") == first  # asked for again: the same page
    assert page(client, token, k=2, by="window", offset=len(whole) + 20) == []


def test_every_server_process_sharing_the_folder_answers_an_uploads_pages(served, tiny_model_dir, tmp_path):
    """`serve --workers N`: a page may land on any worker; each reads the embeddings the others kept."""
    with (
        client_for(served, tiny_model_dir, kept_dir=tmp_path) as one,
        client_for(served, tiny_model_dir, kept_dir=tmp_path) as other,
    ):
        _, whole = upload(one, served, k=4, by="window")
        token, first = upload(one, served, k=2, by="window")
        assert first + page(other, token, k=2, by="window", offset=2) == whole


def test_an_upload_is_kept_15_minutes_after_it_was_last_asked_for(served, tiny_model_dir, tmp_path):
    with client_for(served, tiny_model_dir, kept_dir=tmp_path) as client:
        clock = client.app.state.service.kept.clock = Clock()
        token, first = upload(client, served, k=2)
        clock.now += KEEP_S - 1
        assert page(client, token, k=2) == first  # and kept 15 minutes from now on
        clock.now += KEEP_S - 1
        assert page(client, token, k=2) == first
        clock.now += KEEP_S + 1
        response = client.get("/api/similar", params={"upload": token, "k": 2})
        assert response.status_code == 404
        assert response.json() == {"detail": f"upload {token}: {GONE}"}
        assert list(tmp_path.iterdir()) == []  # nothing is left behind of it


@pytest.mark.parametrize(
    ("query", "status", "field", "message"),
    [
        ("upload=../../etc/passwd", 422, "upload", "not a token this server gave: send the clip again"),
        ("upload=" + "A" * 24, 404, None, GONE),
        ("upload=" + "A" * 24 + "&window_id=1", 422, "upload", "send one of window_id and upload, not both"),
        ("", 422, "window_id", "missing: send window_id or upload"),
    ],
)
def test_a_token_the_server_did_not_give_is_refused_in_a_sentence(client, query, status, field, message):
    response = client.get(f"/api/similar?{query}")
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail.endswith(message) and "\n" not in detail
    if field is not None:
        assert response.json()["errors"] == [{"field": field, "message": message}]


# -- the kept embeddings -----------------------------------------------------------------------------------------


def clip(name: str) -> KeptClip:
    return KeptClip(name, "0" * 64, np.ones((2, 4), dtype=np.float32), [(0.0, 7.0), (3.0, 10.0)])


def test_a_kept_clip_reads_back_as_it_was_kept(tmp_path):
    kept = KeptClips(tmp_path)
    token = kept.keep(KeptClip("été <1>.wav", "ab" * 32, np.arange(8, dtype=np.float32).reshape(2, 4), [(0, 7)] * 2))
    back = kept.get(token)
    assert (back.name, back.sha256, back.spans) == ("été <1>.wav", "ab" * 32, [(0.0, 7.0), (0.0, 7.0)])
    assert back.vectors.dtype == np.float32 and back.vectors.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [path.name for path in tmp_path.iterdir()] == [f"{token}.npz"]  # named by the token alone
    assert len({kept.keep(clip("same.wav")) for _ in range(20)}) == 20


def test_at_most_64_are_kept_the_least_recently_used_dropped_first(tmp_path):
    clock = Clock()
    kept = KeptClips(tmp_path, clock=clock)
    tokens = []
    for number in range(MOST_KEPT):
        clock.now += 1
        tokens.append(kept.keep(clip(f"{number}.wav")))
    clock.now += 1
    assert kept.get(tokens[0]).name == "0.wav"  # used again: now the second one is the least recently used
    clock.now += 1
    newest = kept.keep(clip("new.wav"))
    assert len(list(tmp_path.iterdir())) == MOST_KEPT
    with pytest.raises(Exception, match="no longer kept"):
        kept.get(tokens[1])
    assert kept.get(tokens[0]).name == "0.wav" and kept.get(newest).name == "new.wav"


def test_a_server_starting_on_the_folder_drops_what_has_expired(tmp_path):
    clock = Clock()
    old = KeptClips(tmp_path, clock=clock).keep(clip("old.wav"))
    (tmp_path / ".partial-left-by-a-worker-that-died.npz").write_bytes(b"half")
    clock.now += 60
    recent = KeptClips(tmp_path, clock=clock).keep(clip("recent.wav"))
    clock.now += KEEP_S - 30
    KeptClips(tmp_path, clock=clock)
    assert [path.name for path in tmp_path.iterdir()] == [f"{recent}.npz"]
    assert old != recent


# -- the upload page ---------------------------------------------------------------------------------------------


def ranks_and_more(text: str) -> tuple[list[int], dict[str, str] | None]:
    ranks = [int(rank) for rank in re.findall(r'<li class="hit" id="hit-(\d+)">', text)]
    link = re.search(r'<a class="more-results" href="([^"]+)" data-next="([^"]+)"', text)
    return ranks, link and {"href": html.unescape(link[1]), "next": html.unescape(link[2])}


def test_finding_similar_sounds_leads_to_an_address_that_a_reload_shows_again_and_more_results_pages(client, served):
    """The form sends the clip once: the browser is sent on to its results' own address (the token and the boxes
    set), which a reload, or Back, shows again, and whose "More results" adds the next page as a search's does."""
    sent = client.post(
        "/upload/similar", files={"file": bell_clip(served)}, data={"k": "2", "by": "window"}, follow_redirects=False
    )
    assert sent.status_code == 303
    address = sent.headers["location"]
    token = re.fullmatch(r"/upload/similar\?upload=([\w-]{24})&k=2&by=window#result", address)[1]
    base = f"/upload/similar?upload={token}&k=2&by=window"
    shown = client.get(base)
    assert shown.status_code == 200 and "<h2>Sounds like bell.wav</h2>" in shown.text
    assert 'name="k" min="1" max="200" value="2"' in shown.text and '<option value="window" selected>' in shown.text
    assert ranks_and_more(shown.text) == ([1, 2], {"href": f"{base}&pages=2#hit-3", "next": f"{base}&offset=2"})
    assert ranks_and_more(client.get(f"{base}&offset=2").text)[0] == [3, 4]
    assert ranks_and_more(client.get(f"{base}&pages=2").text)[0] == [1, 2, 3, 4]
    assert ranks_and_more(client.get(base).text) == ranks_and_more(shown.text)  # a reload


def test_an_expired_uploads_page_says_to_send_the_clip_again(client):
    gone = client.get("/upload/similar", params={"upload": "B" * 24, "k": "3"})
    assert gone.status_code == 404
    assert f'<p class="error" id="form-error" role="alert">upload {"B" * 24}: {escape(GONE)}</p>' in gone.text
    assert '<form class="upload"' in gone.text and 'name="k" min="1" max="200" value="3"' in gone.text


def test_the_upload_page_says_how_long_the_embedding_is_kept(client):
    assert "its similar sounds keep its embedding 15 minutes" in client.get("/upload").text


def test_a_library_reindexed_by_another_model_refuses_an_uploads_next_pages(client, served, monkeypatch):
    """Its vectors are not comparable with the clip's any more: refused as a new upload would be (409)."""
    token, _ = upload(client, served, k=2)
    another = SimpleNamespace(fingerprint="another", path=Path("/elsewhere/another-model"))
    monkeypatch.setattr(client.app.state.service, "model_dir", lambda: another)
    response = client.get("/api/similar", params={"upload": token})
    assert response.status_code == 409 and "audio embeddings of different models cannot be compared" in response.text

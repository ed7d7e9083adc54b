"""`pengi-search serve`'s security: the token rule, the Host check, and audio served only for indexed files."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

from pengi_search.serve import LOOPBACK_NAMES, is_loopback, required_token

from .serving import client_for

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def file_ids(served, tiny_model_dir):
    with client_for(served, tiny_model_dir) as client:
        hits = client.get("/api/search", params={"q": "a bell rings", "by": "window", "k": 20}).json()
    return {hit["path"]: hit["file_id"] for hit in hits}


# -- the token rule ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("example.org", False)],
)  # fmt: skip
def test_which_addresses_are_loopback(host, loopback):
    assert is_loopback(host) is loopback
    token = required_token(host, None)
    assert (token is None) is loopback
    if token is not None:
        assert len(token) >= 32 and token != required_token(host, None)  # random, never a fixed default
    assert required_token(host, "given") == "given"


REQUESTS = [
    ("get", "/", {}),
    ("get", "/api/search", {"params": {"q": "a bell rings"}}),
    ("get", "/api/stats", {}),
    ("get", "/static/app.js", {}),
    ("get", "/docs", {}),
    ("get", "/openapi.json", {}),
    ("get", "/api/files/1/audio", {}),
    ("post", "/api/describe", {"files": {"file": ("x.wav", b"RIFF")}}),
]


@pytest.mark.parametrize(("method", "path", "extra"), REQUESTS)
def test_every_request_without_the_token_gets_401(served, tiny_model_dir, method, path, extra):
    with client_for(served, tiny_model_dir, token=TOKEN) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"X-Pengi-Token": TOKEN[:-1]},
            {"Cookie": "pengi_token=x"},
        ):
            response = getattr(client, method)(path, headers=headers, **extra)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "token" in response.json()["detail"]


def test_the_token_opens_every_door(served, tiny_model_dir):
    with client_for(served, tiny_model_dir, token=TOKEN) as client:
        for headers in (
            {"Authorization": f"Bearer {TOKEN}"},
            {"X-Pengi-Token": TOKEN},
            {"Cookie": f"pengi_token={TOKEN}"},
        ):
            assert client.get("/api/search", params={"q": "a bell rings"}, headers=headers).status_code == 200
            assert client.get("/static/style.css", headers=headers).status_code == 200


def test_the_printed_address_sets_the_cookie(served, tiny_model_dir):
    with client_for(served, tiny_model_dir, token=TOKEN) as client:
        first = client.get("/", params={"token": TOKEN, "q": "bell"}, follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/?q=bell"
        cookie = first.headers["set-cookie"]
        assert cookie.startswith(f"pengi_token={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert client.get("/?q=bell").status_code == 200  # the client keeps the cookie
        assert client.post("/api/describe", params={"token": TOKEN}).status_code != 303  # only GET, and only once


def test_loopback_needs_no_token_but_checks_the_host(served, tiny_model_dir):
    with client_for(served, tiny_model_dir, allowed_hosts=LOOPBACK_NAMES) as client:
        assert client.get("/api/stats").status_code == 200
        for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "localhost"):
            assert client.get("/api/stats", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example", ""):
            assert client.get("/api/stats", headers={"Host": host}).status_code == 400, host


# -- what audio may be served ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/files/../../../etc/passwd",
        "/api/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd/audio",
        "/api/files/..%2F..%2Fetc%2Fpasswd/audio",
        "/api/files//etc/passwd/audio",
        "/api/files/%2Fetc%2Fpasswd/audio",
        "/api/files/-1/audio",
        "/api/files/999999/audio",
        "/api/files/1e3/audio",
        "/api/windows/999999/audio",
        "/static/../serve/app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2f..%2fstore.py",
        "/static//etc/passwd",
    ],
)
def test_traversal_attempts_serve_nothing(served, tiny_model_dir, path):
    with client_for(served, tiny_model_dir) as client:
        response = client.get(path)
    assert response.status_code in (404, 422), (path, response.status_code)
    assert b"root:" not in response.content and b"import" not in response.content


def test_a_path_in_the_request_is_never_used(served, tiny_model_dir, file_ids):
    bell = file_ids[str(served.files["bell.wav"])]
    with client_for(served, tiny_model_dir) as client:
        response = client.get(f"/api/files/{bell}/audio", params={"path": "/etc/passwd", "file": "/etc/passwd"})
    assert response.status_code == 200 and response.content == served.files["bell.wav"].read_bytes()


@contextmanager
def swapped(path, replacement):
    """`replacement` (a callable making a new entry at `path`) in place of `path` for a while."""
    backup = path.with_name(path.name + ".bak")
    shutil.move(path, backup)
    try:
        replacement(path)
        yield
    finally:
        path.unlink(missing_ok=True)
        shutil.move(backup, path)


def test_a_link_out_of_the_root_is_refused(served, tiny_model_dir, file_ids, tmp_path):
    bell = served.files["bell.wav"]
    outside = tmp_path / "elsewhere" / "bell.wav"  # an identical copy (same size and time): only the link differs
    outside.parent.mkdir()
    shutil.copy2(bell, outside)
    bell_id = file_ids[str(bell)]
    with swapped(bell, lambda path: path.symlink_to(outside)):
        with client_for(served, tiny_model_dir) as client:
            for path in (f"/api/files/{bell_id}/audio", f"/api/files/{bell_id}/spectrogram.png"):
                response = client.get(path)
                assert response.status_code == 403 and "outside the folders" in response.json()["detail"]
        with client_for(served, tiny_model_dir, roots=(served.root.resolve(),)) as client:
            assert client.get(f"/api/files/{bell_id}/audio").status_code == 403
        with client_for(served, tiny_model_dir, roots=(outside.parent,)) as client:
            assert client.get(f"/api/files/{bell_id}/audio").status_code == 200  # a root the link points into


def test_a_link_to_a_system_file_is_refused(served, tiny_model_dir, file_ids):
    bell = served.files["bell.wav"]
    with swapped(bell, lambda path: path.symlink_to("/etc/passwd")), client_for(served, tiny_model_dir) as client:
        response = client.get(f"/api/files/{file_ids[str(bell)]}/audio")
    assert response.status_code == 403 and b"root:" not in response.content


def test_a_changed_or_missing_file_is_not_served(served, tiny_model_dir, file_ids):
    dog = served.files["animals/dog.wav"]
    dog_id = file_ids[str(dog)]
    stamp = dog.stat()
    with client_for(served, tiny_model_dir) as client:
        os.utime(dog, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
        try:
            response = client.get(f"/api/files/{dog_id}/audio")
            assert response.status_code == 409 and "changed on disk" in response.json()["detail"]
        finally:
            os.utime(dog, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        assert client.get(f"/api/files/{dog_id}/audio").status_code == 200
        moved = dog.with_name("moved.wav")
        dog.rename(moved)
        try:
            assert client.get(f"/api/files/{dog_id}/audio").status_code == 404
        finally:
            moved.rename(dog)


def test_the_page_of_a_changed_or_missing_file_says_why_it_cannot_be_played(served, tiny_model_dir, file_ids):
    """Not a player and a spectrogram that fail without a word: the page says what the audio's API says, and its
    windows do not offer to play (they still show what Pengi wrote, and lead to similar sounds)."""
    dog = served.files["animals/dog.wav"]
    dog_id = file_ids[str(dog)]
    stamp = dog.stat()
    with client_for(served, tiny_model_dir) as client:
        playable = client.get(f"/files/{dog_id}").text
        os.utime(dog, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
        try:
            changed = client.get(f"/files/{dog_id}")
        finally:
            os.utime(dog, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        moved = dog.with_name("moved.wav")
        dog.rename(moved)
        try:
            missing = client.get(f"/files/{dog_id}")
        finally:
            moved.rename(dog)
    assert 'id="file-player"' in playable and "data-start" in playable and "cannot be played" not in playable
    reasons = {
        "the file changed on disk since it was indexed; index it again": changed,
        "no longer readable on disk (no such file or directory)": missing,
    }
    for reason, page in reasons.items():
        assert page.status_code == 200
        assert f'<p class="error">The audio cannot be played: {reason}</p>' in page.text
        assert not any(part in page.text for part in ('id="file-player"', "spectrogram.png", "data-start"))
        assert "a dog barks" in page.text and "More like this" in page.text

"""`pengi-search serve`: every JSON endpoint and page through FastAPI's test client, uploads and escaping."""

from __future__ import annotations

import hashlib
import html
import io
import json
import mimetypes
import os
import re
import shutil
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import pytest
import soundfile as sf
from markupsafe import escape
from typer.testing import CliRunner

from pengi_search.audio import AUDIO_EXTENSIONS
from pengi_search.choices import DEFAULT_HYBRID_WEIGHT, Captions
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_FAILED, EXIT_USAGE
from pengi_search.db import Store, StoreError
from pengi_search.embedders import TextEmbedderError
from pengi_search.serve import api, media
from pengi_search.serve.conversions import Conversions
from pengi_search.serve.http_cache import content_disposition
from pengi_search.serve.media import browser_type
from pengi_search.serve.pages import FILTER_BOXES, when
from pengi_search.units import duration_text

from .indexing import write_tone
from .search_library import CaptionLibrary, index_folder
from .serving import BROKEN, BROKEN_REASON, HOSTILE, client_for
from .test_cli_search import HIT_KEYS, clip_tokens

SEARCH_HIT_KEYS = HIT_KEYS | {"ranking", "file_id"}  # as `query --json`, with the file's id
SIMILAR_HIT_KEYS = HIT_KEYS | {"query_start_s", "query_end_s", "file_id"}  # as `similar --json`, with the file's id
runner = CliRunner()


@pytest.fixture(scope="module")
def client(served, tiny_model_dir):
    with client_for(served, tiny_model_dir) as client:
        yield client


def search(client, q, **params):
    response = client.get("/api/search", params={"q": q, **params})
    assert response.status_code == 200, response.text
    return response.json()


def hit_for(client, served, name):
    hits = search(client, SERVED_CAPTION[name], k=1)
    assert hits[0]["path"] == str(served.files[name])
    return hits[0]


def invalid(response, *fields):
    """The answer to invalid parameters, the same for every JSON endpoint: 422, `detail` one line, `errors` one
    {field, message} per parameter at fault, with the API's names (never a command-line option)."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    assert [problem["field"] for problem in body["errors"]] == list(fields)
    assert all(set(problem) == {"field", "message"} and problem["message"] for problem in body["errors"])
    assert isinstance(body["detail"], str) and "\n" not in body["detail"]
    assert "--" not in body["detail"] and "query." not in body["detail"] and "body." not in body["detail"]
    return body


SERVED_CAPTION = {
    "weather/rain.flac": "thunder rolls in the distance",
    "bell.wav": "a bell rings",
    "loops/hum.aiff": "a low hum",
    "odd/<i>cat</i>.wav": HOSTILE,
}


# -- search ------------------------------------------------------------------------------------------------------


def test_search_has_the_cli_shape_and_finds_the_window(client, served):
    hits = search(client, "thunder rolls in the distance", k=3)
    assert len(hits) == 3
    assert all(set(hit) == SEARCH_HIT_KEYS for hit in hits)
    top = hits[0]
    assert top["path"] == str(served.files["weather/rain.flac"])
    assert (top["start_s"], top["end_s"]) == (3.0, 10.0)
    assert top["caption"] == "thunder rolls in the distance" and top["ranking"] == "caption"
    assert isinstance(top["file_id"], int) and top["score"] == pytest.approx(1.0, abs=1e-5)


def test_hits_are_those_of_the_commands_json_with_the_file_id(client, served, tiny_model_dir):
    """A script reads one shape, from the command or the server: a field a hit does not have (a text search's
    `query_start_s`, an audio search's `ranking`, a UTF-8 name's `path_bytes`) is left out, never null."""
    options = ("--db", served.db, "--model", tiny_model_dir, "-k", 3, "--json")
    command = runner.invoke(app, [str(a) for a in ("query", "a bell rings", *options)])
    assert command.exit_code == 0, command.output
    hits = search(client, "a bell rings", k=3)
    assert [{key: value for key, value in hit.items() if key != "file_id"} for hit in hits] == json.loads(
        command.stdout
    )
    clip = served.files["bell.wav"]
    command = runner.invoke(app, [str(a) for a in ("similar", clip, *options, "--device", "cpu")])
    assert command.exit_code == 0, command.output
    uploaded = client.post("/api/similar", params={"k": 3}, files={"file": ("clip.wav", clip.read_bytes())})
    assert uploaded.status_code == 200, uploaded.text
    shapes = {frozenset(hit) for hit in json.loads(command.stdout)}
    assert (
        shapes
        == {frozenset(hit) - {"file_id"} for hit in uploaded.json()}
        == {frozenset(SIMILAR_HIT_KEYS - {"file_id"})}
    )


@pytest.mark.parametrize("rank", ["caption", "hybrid"])
def test_a_query_the_text_embedder_cuts_is_said_to_the_client_in_a_header_and_on_the_page(
    client, served, tiny_model_dir, capsys, rank
):
    """As `query` warns on stderr, once (a hybrid ranking embeds the text with the one tower): the API still answers
    its list of hits, and says the warning in `X-Pengi-Warnings`, a JSON list (`[]` when none; ASCII, as a header
    must be, whatever the text); a repeated search (its embedding kept) says it again; the page shows it."""
    text = "rain on a roof, café " * 12
    said = (
        f"query of {clip_tokens(tiny_model_dir, text)} tokens cut to its first 77, all that Pengi's text tower "
        "reads: 'rain on a roof, café rain on a roof, caf...'"
    )
    for _ in range(2):
        response = client.get("/api/search", params={"q": text, "rank": rank})
        assert response.status_code == 200 and response.json()[0]["path"] == str(served.files["weather/rain.flac"])
        assert response.headers["X-Pengi-Warnings"].isascii()
        assert json.loads(response.headers["X-Pengi-Warnings"]) == [said]
    plain = client.get("/api/search", params={"q": "rain on a roof", "rank": rank})
    assert json.loads(plain.headers["X-Pengi-Warnings"]) == []
    page = client.get("/", params={"q": text, "rank": rank})
    assert page.status_code == 200 and f'<p class="note warning">{escape(said)}</p>' in page.text
    assert '<p class="note warning">' not in client.get("/", params={"q": "rain on a roof"}).text
    assert "X-Pengi-Warnings" in client.get("/openapi.json").text
    assert "cut to its first" not in capsys.readouterr().err


def test_search_filters(client, served):
    only_wav = search(client, "a bell rings", ext="wav", by="window", k=20)
    assert {hit["path"].rsplit(".", 1)[1] for hit in only_wav} == {"wav"}
    animals = search(client, "a dog barks", path="*/animals/*", k=20)
    assert [hit["path"] for hit in animals] == [str(served.files["animals/dog.wav"])]
    long_files = search(client, "a bell rings", min_duration=5, k=20)
    assert {hit["path"] for hit in long_files} == {str(served.files["weather/rain.flac"])}
    by_window = search(client, "rain on a roof", by="window", k=20)
    assert len(by_window) == 6  # every window of the 5 files


def hits_of(client, served, endpoint, **params):
    """The hits of a text search, "more like this" (bell.wav's window) or an uploaded clip's similar sounds."""
    if endpoint == "similar":
        params["window_id"] = hit_for(client, served, "bell.wav")["window_id"]
    if endpoint == "upload":
        clip = ("clip.wav", served.files["bell.wav"].read_bytes())
        response = client.post("/api/similar", params=params, files={"file": clip})
    else:
        response = client.get(f"/api/{endpoint}", params={"q": "a bell rings", **params})
    assert response.status_code == 200, response.text
    return [(hit["path"], hit["window_id"], hit["score"]) for hit in response.json()]


@pytest.mark.parametrize("endpoint", ["search", "similar", "upload"])
@pytest.mark.parametrize("filters", [{"by": "window"}, {"by": "window", "ext": "wav,flac"}, {"min_duration": 2.5}])
def test_pages_of_results_are_one_longer_search_cut_in_pages(client, served, endpoint, filters):
    """`offset` skips results: page after page (`offset=0, k`, `offset=k, k`, ...) are the hits of one search of
    the pages' length, in its order, with the same filters; past the last result a page is empty."""
    whole = hits_of(client, served, endpoint, k=4, **filters)
    assert len(whole) >= 3  # so that the second page is not empty
    first, second = (hits_of(client, served, endpoint, k=2, offset=offset, **filters) for offset in (0, 2))
    assert first + second == whole
    assert hits_of(client, served, endpoint, k=2, offset=len(whole) + 5, **filters) == []


def test_the_deepest_page_is_served_and_one_deeper_refused(client):
    assert client.get(SEARCH + "offset=1000&k=200").status_code == 200
    [problem] = invalid(client.get(SEARCH + "offset=1001"), "offset")["errors"]
    assert problem["message"] == "the results skipped must be between 0 and 1000"
    assert "At most the server's `--max-offset` (1000 unless set)" in client.get("/openapi.json").text


@pytest.mark.parametrize("path", ["animals/*", "dog.wav", "~/sounds/*"])
def test_a_relative_path_glob_is_refused_not_taken_from_the_servers_folder(client, served, path):
    response = client.get("/api/search", params={"q": "a dog barks", "path": path})
    [problem] = invalid(response, "path")["errors"]
    assert "starts with / or a wildcard" in problem["message"] and f"*/{path}" in problem["message"]
    page = client.get("/", params={"q": "a dog barks", "path": path})
    assert page.status_code == 422 and "starts with / or a wildcard" in page.text


# -- similar -----------------------------------------------------------------------------------------------------


def test_similar_to_a_window_leaves_its_file_out(client, served):
    rain = hit_for(client, served, "weather/rain.flac")
    response = client.get("/api/similar", params={"window_id": rain["window_id"], "k": 10})
    assert response.status_code == 200
    hits = response.json()
    assert hits and all(set(hit) == SIMILAR_HIT_KEYS for hit in hits)
    assert str(served.files["weather/rain.flac"]) not in {hit["path"] for hit in hits}
    assert {(hit["query_start_s"], hit["query_end_s"]) for hit in hits} == {(3.0, 10.0)}
    assert client.get("/api/similar", params={"window_id": 999_999}).status_code == 404


def test_more_like_this_leaves_out_copies_of_its_file_as_similar_file_does(tiny_model_dir, tmp_path):
    """A window's file is left out of its similar sounds with every library file holding its bytes (a copy, a link
    of another name), as `similar FILE` and an upload leave them out; a file that sounds the same in other bytes is
    a hit."""
    sounds, db = tmp_path / "sounds", tmp_path / "lib.db"
    x = write_tone(sounds / "x.wav", 3.0, freq=300.0)
    shutil.copy(x, sounds / "copy-of-x.wav")
    (sounds / "link-to-x.wav").symlink_to(x)
    same_sound = sounds / "x-as-flac.flac"
    sf.write(same_sound, *sf.read(x), subtype="PCM_16")
    index_folder(str(db), sounds, tiny_model_dir)
    with Store.open(db) as store:
        [window] = [w for w in store.window_details(store.vector_ids("audio")).values() if w.path == str(x)]
    with client_for(CaptionLibrary(str(db), sounds, {}), tiny_model_dir) as client:
        response = client.get("/api/similar", params={"window_id": window.window_id, "k": 10})
    assert response.status_code == 200, response.text
    assert [hit["path"] for hit in response.json()] == [str(same_sound)]


def test_a_window_or_file_gone_since_the_page_was_made_says_so_and_what_to_do(tiny_model_dir, tmp_path):
    """A page's hits name windows and files by id; indexed again (a changed file's windows are new ones) or removed
    while the page is open, they are gone: said so, not "no such window", which the page would contradict. The
    newest file's too: ids are never given again, so one up to the highest ever given was there. An id that never
    named one is still no such window."""
    sounds, db = tmp_path / "sounds", tmp_path / "lib.db"
    for i, name in enumerate(["a.wav", "b.wav", "c.wav"]):
        write_tone(sounds / name, 2.0, freq=300.0 + 100 * i)
    index_folder(str(db), sounds, tiny_model_dir)
    with client_for(CaptionLibrary(str(db), sounds, {}), tiny_model_dir) as client:
        hits = client.get("/api/search", params={"q": "a tone", "k": 3, "rank": "audio"}).json()
        first = max(hits, key=lambda hit: hit["window_id"])  # the newest window, of the newest file
        assert first["file_id"] == max(hit["file_id"] for hit in hits)
        with Store.open(db) as store:
            assert store.remove(first["path"]) == 1
        gone = "no longer in the index (its file was indexed again, moved or removed since): search again"
        for path, what in [
            (f"/api/windows/{first['window_id']}/audio", f"window {first['window_id']}"),
            (f"/api/windows/{first['window_id']}/peaks", f"window {first['window_id']}"),
            (f"/api/similar?window_id={first['window_id']}", f"window {first['window_id']}"),
            (f"/api/files/{first['file_id']}/audio", f"file {first['file_id']}"),
        ]:
            response = client.get(path)
            assert (response.status_code, response.json()) == (404, {"detail": f"{what}: {gone}"}), path
        page = client.get(f"/similar?window_id={first['window_id']}")
        assert page.status_code == 404 and html.escape(gone, quote=True) in page.text
        never = client.get("/api/windows/999999/audio")
        assert never.json() == {"detail": "window 999999: no such window in the index"}
        assert client.get("/api/files/999999").json() == {"detail": "file 999999: no such file in the index"}


def test_similar_to_an_uploaded_clip(client, served, tmp_path):
    """A clip that is not in the library: the library's file that sounds the same (here: the same samples, in
    another container) comes first."""
    samples, rate = sf.read(served.files["bell.wav"], dtype="float32")
    sf.write(tmp_path / "bell.flac", samples, rate)
    clip = (tmp_path / "bell.flac").read_bytes()
    response = client.post("/api/similar", params={"k": 2}, files={"file": ("clip.flac", clip, "audio/flac")})
    assert response.status_code == 200, response.text
    hits = response.json()
    assert hits[0]["path"] == str(served.files["bell.wav"]) and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_an_uploaded_clip_that_is_a_library_file_leaves_that_file_out_as_the_command_does(
    client, served, tiny_model_dir
):
    """`similar FILE` leaves FILE out of its hits (README): an upload with the bytes (sha256) of a library file is
    that file, so it is left out too, and the upload finds what the command finds, from the API and the page."""
    bell = served.files["bell.wav"]
    options = ("--db", served.db, "--model", tiny_model_dir, "-k", 3, "--device", "cpu", "--json")
    command = runner.invoke(app, [str(a) for a in ("similar", bell, *options)])
    assert command.exit_code == 0, command.output
    expected = [hit["path"] for hit in json.loads(command.stdout)]
    assert len(expected) == 3 and str(bell) not in expected
    clip = ("clip.wav", bell.read_bytes())
    response = client.post("/api/similar", params={"k": 3}, files={"file": clip})
    assert response.status_code == 200, response.text
    assert [hit["path"] for hit in response.json()] == expected
    page = client.post("/upload/similar", files={"file": clip}, data={"k": "3"}).text
    assert page.count('class="hit"') == 3 and html.escape(str(bell)) not in page


# -- files and windows -------------------------------------------------------------------------------------------


def test_file_lists_its_windows_with_texts(client, served):
    rain = hit_for(client, served, "weather/rain.flac")
    info = client.get(f"/api/files/{rain['file_id']}").json()
    assert info["path"] == str(served.files["weather/rain.flac"]) and info["status"] == "indexed"
    assert [(w["start_s"], w["end_s"]) for w in info["windows"]] == [(0.0, 7.0), (3.0, 10.0)]
    assert [w["texts"][0]["text"] for w in info["windows"]] == ["rain on a roof", "thunder rolls in the distance"]
    assert info["windows"][1]["window_id"] == rain["window_id"]
    assert client.get("/api/files/999999").status_code == 404


def test_a_file_is_the_row_export_writes_with_its_ids(client, served):
    """The same fields as `export`, plus the file's `id` and each window's `window_id`: a UTF-8 name has no
    `path_bytes`, left out as `export` leaves it out, never null."""
    rain = hit_for(client, served, "weather/rain.flac")
    info = client.get(f"/api/files/{rain['file_id']}").json()
    command = runner.invoke(app, ["export", "--db", served.db, "--under", str(served.files["weather/rain.flac"])])
    assert command.exit_code == 0, command.output
    (row,) = [json.loads(line) for line in command.stdout.splitlines()]
    assert "path_bytes" not in info and set(info) - {"id"} == set(row)
    assert [set(window) - {"window_id"} for window in info["windows"]] == [set(window) for window in row["windows"]]


def test_file_audio_is_the_file_with_range_support(client, served):
    bell = hit_for(client, served, "bell.wav")
    data = served.files["bell.wav"].read_bytes()
    whole = client.get(f"/api/files/{bell['file_id']}/audio")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "audio/wav" and whole.headers["accept-ranges"] == "bytes"
    part = client.get(f"/api/files/{bell['file_id']}/audio", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"


def test_a_range_of_a_unit_other_than_bytes_is_ignored_and_a_malformed_one_refused(client, served):
    """RFC 9110 (14.2): a server ignores a range unit it does not know, answering the whole file (200)."""
    bell = hit_for(client, served, "bell.wav")
    data = served.files["bell.wav"].read_bytes()
    for unit in ("items=0-1", "ITEMS=0-1", "seconds"):
        whole = client.get(f"/api/files/{bell['file_id']}/audio", headers={"Range": unit})
        assert (whole.status_code, whole.content) == (200, data), unit
        assert "content-range" not in whole.headers
    assert client.get(f"/api/files/{bell['file_id']}/audio", headers={"Range": "bytes=x-y"}).status_code == 400
    assert client.get(f"/api/files/{bell['file_id']}/audio", headers={"Range": "Bytes=0-1"}).status_code == 206


def test_audio_spectrograms_and_waveforms_the_browser_holds_are_not_sent_again(client, served, monkeypatch):
    """Each carries an ETag; asked again with it (If-None-Match, as browsers re-request media), the answer is 304
    without a body, and nothing is cut or drawn for it. `Cache-Control: no-cache`: a file changed on disk since is
    refused (409) rather than answered from the browser's copy."""
    rain = hit_for(client, served, "weather/rain.flac")
    hum = hit_for(client, served, "loops/hum.aiff")
    paths = [
        f"/api/files/{rain['file_id']}/audio",  # the file as it is
        f"/api/files/{hum['file_id']}/audio",  # transcoded
        f"/api/windows/{rain['window_id']}/audio",
        f"/api/files/{rain['file_id']}/spectrogram.png",
        f"/api/windows/{rain['window_id']}/peaks",  # a waveform: each page load asked for it again
    ]
    tags = {}
    for path in paths:
        first = client.get(path)
        assert first.status_code == 200 and first.headers["cache-control"] == "no-cache", path
        tags[path] = first.headers["etag"]
        assert client.get(path, headers={"If-None-Match": '"other"'}).content == first.content  # another: sent
    assert len(set(tags.values())) == len(paths)

    def never(*_args, **_kwargs):
        raise AssertionError("made again for a client that holds it")

    monkeypatch.setattr(media, "window_wav", never)
    monkeypatch.setattr(media, "spectrogram_png", never)
    monkeypatch.setattr(media, "peaks", never)
    for path, tag in tags.items():
        for sent in (tag, f"W/{tag}", f'"other", {tag}', "*"):
            for method in ("GET", "HEAD"):
                again = client.request(method, path, headers={"If-None-Match": sent})
                assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", tag), (path, sent)
    rain_path = served.files["weather/rain.flac"]
    stamp = rain_path.stat()
    os.utime(rain_path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    try:
        changed = client.get(paths[0], headers={"If-None-Match": tags[paths[0]]})
    finally:
        os.utime(rain_path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert changed.status_code == 409


@pytest.mark.parametrize("asset", ["app.js", "style.css", "favicon.svg"])
def test_the_pages_script_and_style_are_checked_each_time_so_an_upgrade_reaches_the_browser(client, asset):
    """`Cache-Control: no-cache`: the browser asks whether its copy is current (304 while it is) rather than keeping
    an old script for days after an upgrade, beside pages it does not fit."""
    first = client.get(f"/static/{asset}")
    assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"
    again = client.get(f"/static/{asset}", headers={"If-None-Match": first.headers["etag"]})
    assert (again.status_code, again.content, again.headers["cache-control"]) == (304, b"", "no-cache")


STATIC = Path(api.__file__).parent / "static"
PAGE_SCRIPT = re.compile(r'<script type="module" src="/static/([\w-]+\.js)"></script>')
MODULE_IMPORT = re.compile(r'^import .* from "\./([\w-]+\.js)";$', re.MULTILINE)


def page_scripts(client) -> set[str]:
    """The script modules a page loads: the one it names, and those that one imports, in turn."""
    loaded: set[str] = set()
    to_load = PAGE_SCRIPT.findall(client.get("/").text)
    while to_load:
        name = to_load.pop()
        if name not in loaded:
            loaded.add(name)
            to_load += MODULE_IMPORT.findall(client.get(f"/static/{name}").text)
    return loaded


def test_every_script_module_the_pages_load_is_served_as_javascript_and_checked_each_time(client):
    """A module script runs only if it comes with a JavaScript type; each module is asked about each time, as
    app.js alone was, so that an upgrade reaches the browser with modules that fit each other. Every module beside
    app.js is one it loads (none left behind by a change)."""
    scripts = page_scripts(client)
    assert "app.js" in scripts and scripts == {path.name for path in STATIC.glob("*.js")}
    for name in scripts:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == "text/javascript; charset=utf-8", name
        assert response.headers["cache-control"] == "no-cache", name


def test_a_script_is_sent_as_javascript_whatever_the_systems_type_table_says(client, monkeypatch):
    """Python's type table comes from the system's: on Windows from the registry, which may map .js to text/plain,
    a type browsers refuse to run as a module (every page's script would stop)."""
    mimetypes.guess_type("app.js")  # the table read, before it is changed
    monkeypatch.setitem(mimetypes.types_map, ".js", "text/plain")
    assert mimetypes.guess_type("app.js")[0] == "text/plain"
    assert client.get("/static/player.js").headers["content-type"] == "text/javascript; charset=utf-8"
    assert client.get("/static/style.css").headers["content-type"] == "text/css; charset=utf-8"


def test_formats_browsers_cannot_play_are_transcoded_to_flac(client, served):
    hum = hit_for(client, served, "loops/hum.aiff")
    assert browser_type(served.files["loops/hum.aiff"]) is None
    response = client.get(f"/api/files/{hum['file_id']}/audio")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/flac"
    samples, rate = sf.read(io.BytesIO(response.content))
    original, _ = sf.read(served.files["loops/hum.aiff"])
    assert rate == 44_100 and len(samples) == len(original)
    np.testing.assert_allclose(samples, original, atol=2e-4)  # 16-bit FLAC of the same audio
    again = client.get(f"/api/files/{hum['file_id']}/audio", headers={"Range": "bytes=0-9"})
    assert again.status_code == 206 and again.content == response.content[:10]


def test_a_transcode_evicted_by_another_before_its_answer_opens_it_is_still_sent(client, served, monkeypatch):
    """The file's answer opens the transcode after the cache handed it out: another file's transcode that needs its
    room meanwhile (forced here, between the two) drops it from the cache but leaves it on disk until it is sent
    (was: 500, the file gone)."""
    svc = client.app.state.service
    source = served.files["loops/hum.aiff"]
    info = sf.info(source)
    room = media.flac_bound(info.duration, info.samplerate, info.channels)
    monkeypatch.setattr(svc.transcodes, "max_bytes", room + room // 2)  # one such file at a time
    answer = api.file_response

    def another_transcode_first(*args: object) -> object:
        svc.transcodes.flac(("another file", 1), source, 60.0).release()  # evicts the one about to be sent
        return answer(*args)

    monkeypatch.setattr(api, "file_response", another_transcode_first)
    hum = hit_for(client, served, "loops/hum.aiff")
    response = client.get(f"/api/files/{hum['file_id']}/audio")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/flac"
    assert len(sf.read(io.BytesIO(response.content))[0]) == info.frames
    assert svc.transcodes.held_bytes() <= svc.transcodes.max_bytes


def test_audio_work_past_what_the_server_holds_at_once_is_a_503_to_ask_again_for(served, tiny_model_dir, caplog):
    """Transcodes, waveforms and cut windows hold a bounded share of the server's threads: past it, a request is
    answered 503 with when to ask again at once (the pages' players retry), rather than waiting for a thread that
    searches need. Not a failure of the server's, nor a database that does not answer: nothing is logged."""
    caplog.set_level("WARNING", logger="pengi_search.serve")
    with client_for(served, tiny_model_dir) as client:
        svc = client.app.state.service
        svc.conversions = svc.transcodes._conversions = Conversions(slots=1, max_held=1)
        hum = hit_for(client, served, "loops/hum.aiff")
        started, finish = threading.Event(), threading.Event()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(svc.conversions.run, "a long transcode", lambda: started.set() or finish.wait(60))
            assert started.wait(60)
            try:
                answers = [
                    client.get(f"/api/files/{hum['file_id']}/audio"),
                    client.get(f"/api/windows/{hum['window_id']}/peaks"),
                    client.get(f"/api/windows/{hum['window_id']}/audio"),
                ]
            finally:
                finish.set()
        assert [(answer.status_code, answer.headers.get("retry-after")) for answer in answers] == [(503, "5")] * 3
        assert "busy converting audio" in answers[0].json()["detail"]
        assert client.get(f"/api/files/{hum['file_id']}/audio").status_code == 200  # once it is free again
    assert not caplog.records


def test_window_audio_is_the_window_cut_as_wav(client, served):
    rain = hit_for(client, served, "weather/rain.flac")
    response = client.get(f"/api/windows/{rain['window_id']}/audio")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    samples, rate = sf.read(io.BytesIO(response.content))
    original, _ = sf.read(served.files["weather/rain.flac"])
    assert rate == 44_100 and len(samples) == 7 * 44_100
    np.testing.assert_allclose(samples, original[3 * 44_100 :], atol=1e-4)
    assert client.get("/api/windows/999999/audio").status_code == 404


def test_audio_is_saved_under_the_name_of_its_file(client, served):
    """A player's "Download" saves the audio under the name of the file it comes from, not under the address's
    last part (`audio`, for every file alike): the file's own name, with `.flac` where it is transcoded; a window's
    with its time."""
    names = {
        f"/api/files/{hit_for(client, served, 'bell.wav')['file_id']}/audio": "bell.wav",
        f"/api/files/{hit_for(client, served, 'loops/hum.aiff')['file_id']}/audio": "hum.flac",
        f"/api/windows/{hit_for(client, served, 'weather/rain.flac')['window_id']}/audio": "rain_3.0-10.0s.wav",
        f"/api/files/{hit_for(client, served, 'odd/<i>cat</i>.wav')['file_id']}/audio": "i>.wav",  # in `<i>cat<`
    }
    for path, name in names.items():
        for method in ("GET", "HEAD"):
            sent = client.request(method, path).headers["content-disposition"]
            assert sent == f"inline; filename=\"{name}\"; filename*=UTF-8''{quote(name, safe='')}", (path, method)


@pytest.mark.parametrize(
    ("name", "plain", "encoded"),
    [
        ("café.wav", "caf_.wav", "caf%C3%A9.wav"),
        ('say "hi" \\ bye.wav', "say _hi_ _ bye.wav", "say%20%22hi%22%20%5C%20bye.wav"),
        (os.fsdecode(b"\xff.wav"), "_xff.wav", "%5Cxff.wav"),  # not UTF-8: as pages show it (\xff)
        ("line\nbreak.wav", "line_nbreak.wav", "line%5Cnbreak.wav"),  # escaped (\n): never a header's line break
    ],
)
def test_a_name_that_is_not_plain_ascii_is_saved_as_utf_8_with_an_ascii_one_beside_it(name, plain, encoded):
    """RFC 6266 and 8187: `filename*` is the name itself, as UTF-8; `filename`, for clients that read only that,
    the name with what a quoted ASCII string cannot hold replaced."""
    assert content_disposition(name) == f"inline; filename=\"{plain}\"; filename*=UTF-8''{encoded}"


def test_window_peaks_follow_the_waveform(client, served):
    bell = hit_for(client, served, "bell.wav")
    peaks = client.get(f"/api/windows/{bell['window_id']}/peaks").json()["peaks"]
    assert len(peaks) == 120 and all(low <= high for low, high in peaks)
    assert max(high for _, high in peaks) == pytest.approx(0.3, abs=0.05)  # write_tone's amplitude


def test_spectrogram_is_a_png(client, served):
    rain = hit_for(client, served, "weather/rain.flac")
    response = client.get(f"/api/files/{rain['file_id']}/spectrogram.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", response.content[16:24])
    assert (width, height) == (1200, 160)


@pytest.mark.parametrize(
    "path",
    [
        "/api/files/99999999999999999999",
        "/api/files/-9223372036854775809",
        "/api/files/9223372036854775808/audio",
        "/api/files/99999999999999999999/spectrogram.png",
        "/api/windows/99999999999999999999/audio",
        "/api/windows/99999999999999999999/peaks",
        "/api/similar?window_id=99999999999999999999",
        "/files/99999999999999999999",
        "/similar?window_id=99999999999999999999",
    ],
)
def test_an_id_past_the_databases_integers_is_not_found(client, path):
    assert client.get(path).status_code == 404


def test_head_is_answered_wherever_get_is(client, served):
    bell = hit_for(client, served, "bell.wav")
    for path in (
        f"/api/files/{bell['file_id']}/audio",
        f"/api/windows/{bell['window_id']}/audio",
        "/api/search?q=a+bell+rings",
        "/",
    ):
        got, head = client.get(path), client.head(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == got.headers["content-length"]
    assert client.head(f"/api/files/{bell['file_id']}/audio").headers["accept-ranges"] == "bytes"
    assert client.head("/api/files/424242").status_code == 404
    assert "head" not in client.get("/openapi.json").json()["paths"]["/api/search"]


# -- uploads -----------------------------------------------------------------------------------------------------


def test_describe_an_uploaded_clip(client, served):
    response = client.post(
        "/api/describe", files={"file": ("my clip.flac", served.files["weather/rain.flac"].read_bytes())}
    )
    assert response.status_code == 200, response.text
    described = response.json()
    assert described["path"] == "my clip.flac" and described["duration_s"] == 10.0 and described["error"] is None
    assert [(w["start_s"], w["end_s"]) for w in described["windows"]] == [(0.0, 7.0), (3.0, 10.0)]
    assert set(described["windows"][0]["answers"]) == {"caption", "metadata", "sound_event"}


def test_classify_an_uploaded_clip_with_typed_or_sent_labels(client, served):
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    typed = client.post("/api/classify", files={"file": clip}, data={"labels": "a bell rings\na dog barks\n"})
    assert typed.status_code == 200, typed.text
    result = typed.json()
    assert result["labels"] == ["a bell rings", "a dog barks"] and result["method"] == "text"
    assert result["results"][0]["path"] == "clip.wav" and len(result["results"][0]["top"]) == 2
    labels_csv = ("labels.csv", b"file,label\nx.wav,a bell rings\ny.wav,a dog barks\nz.wav,a bell rings\n")
    sent = client.post("/api/classify", files={"file": clip, "labels_file": labels_csv}, data={"method": "loglik"})
    assert sent.status_code == 200, sent.text
    assert sent.json()["labels"] == ["a bell rings", "a dog barks"] and sent.json()["method"] == "loglik"


def test_a_label_the_text_embedder_cuts_is_said_to_the_client_not_only_on_the_servers_stderr(
    client, served, tiny_model_dir, capsys
):
    """As `classify` warns on stderr: the API's answer lists it in `warnings` (empty when none), the page shows it."""
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    long_label = ("a bell rings and " * 20).strip()
    tokens = clip_tokens(tiny_model_dir, long_label)  # the default template is the label itself
    said = (
        f"label of {tokens} tokens cut to its first 77, all that Pengi's text tower reads: "
        "'a bell rings and a bell rings and a bell...'"
    )
    labels = {"labels": f"a bell rings\n{long_label}\n"}
    assert client.post("/api/classify", files={"file": clip}, data=labels).json()["warnings"] == [said]
    page = client.post("/upload/classify", files={"file": clip}, data=labels)
    assert page.status_code == 200 and f'<p class="note warning">{escape(said)}</p>' in page.text
    plain = client.post("/api/classify", files={"file": clip}, data={"labels": "a bell rings\na dog barks"})
    assert plain.json()["warnings"] == [] and '"warnings"' in client.get("/openapi.json").text
    assert "cut to its first" not in capsys.readouterr().err


def test_classify_with_a_label_map_scores_its_answers_and_reports_its_labels(client, served):
    """A `train init` label map (label, answer): the model is asked about the answer, as `classify` does."""
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    typed = client.post("/api/classify", files={"file": clip}, data={"labels": "a bell rings\na dog barks"}).json()
    label_map = ("labels.csv", b"label,answer\na_bell,a bell rings\na_dog,a dog barks\n")
    mapped = client.post("/api/classify", files={"file": clip, "labels_file": label_map}).json()
    assert mapped["labels"] == ["a_bell", "a_dog"]
    scores = {row["label"]: row["score"] for row in typed["results"][0]["top"]}
    assert {row["label"]: row["score"] for row in mapped["results"][0]["top"]} == {
        "a_bell": scores["a bell rings"],
        "a_dog": scores["a dog barks"],
    }


@pytest.mark.parametrize(
    ("labels", "message"), [("dog\ndog", "duplicate label 'dog' on line 2"), ("", "no labels"), ("a\n\nb", "blank")]
)
def test_classify_refuses_bad_labels(client, served, labels, message):
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    response = client.post("/api/classify", files={"file": clip}, data={"labels": labels})
    assert message in invalid(response, "labels")["detail"]


@pytest.mark.parametrize(
    ("endpoint", "files", "data", "field"),
    [
        ("/api/describe", None, {"file": "not a file"}, "file"),
        ("/api/classify", {"labels": ("labels.txt", b"dog\ncat\n")}, {"file": "x"}, "file"),
        ("/api/classify", {"file": ("clip.wav", b"RIFF")}, {"labels_file": "dog"}, "labels_file"),
    ],
)
def test_a_form_field_of_the_wrong_kind_is_a_422_that_names_it(client, endpoint, files, data, field):
    response = client.post(endpoint, files=files, data=data)
    assert response.status_code == 422, response.text
    assert field in {problem["field"] for problem in response.json()["errors"]}


def test_typed_labels_and_a_labels_file_together_are_refused(client, served):
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    labels_file = ("labels.txt", b"a bell rings\na dog barks\n")
    response = client.post("/api/classify", files={"file": clip, "labels_file": labels_file}, data={"labels": "rain"})
    assert "send one of them" in invalid(response, "labels")["detail"]
    blank = client.post("/api/classify", files={"file": clip, "labels_file": labels_file}, data={"labels": " \n"})
    assert blank.status_code == 200 and blank.json()["labels"] == ["a bell rings", "a dog barks"]


def test_a_file_sent_as_typed_labels_is_named_in_the_422(client, served):
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    response = client.post("/api/classify", files={"file": clip, "labels": ("labels.txt", b"dog\ncat\n")})
    [problem] = invalid(response, "labels")["errors"]
    assert problem["message"] == "Input should be a valid string"


def corrupt_flac(served) -> bytes:
    data = bytearray(served.files["weather/rain.flac"].read_bytes())
    data[200:] = bytes(range(256)) * ((len(data) - 200) // 256) + bytes((len(data) - 200) % 256)
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("empty.wav", lambda served: b"", "empty file"),
        ("notes.wav", lambda served: b"these are words, not sound\n" * 40, "not a readable audio file"),
        ("cut.flac", corrupt_flac, "corrupt or truncated audio data"),
    ],
)
def test_bad_uploads_get_the_decoder_reason(client, served, name, make, reason):
    for endpoint in ("/api/describe", "/api/similar"):
        response = client.post(endpoint, files={"file": (name, make(served))})
        body = invalid(response, "file")  # the clip is the parameter at fault; the message names it as sent
        assert body["detail"].startswith(f"{name}: ") and reason in body["detail"]
        assert body["errors"][0]["message"] == body["detail"]


def test_uploads_are_bounded_in_bytes_and_seconds(served, tiny_model_dir, tmp_path):
    clip = served.files["weather/rain.flac"].read_bytes()
    with client_for(served, tiny_model_dir, max_upload_bytes=len(clip) - 1, max_upload_s=5.0) as small:
        too_big = small.post("/api/describe", files={"file": ("rain.flac", clip)})
        assert too_big.status_code == 413 and "larger than the server's limit" in too_big.json()["detail"]
        huge = small.post("/api/describe", files={"file": ("huge.wav", bytes(len(clip) + (2 << 20)))})
        assert huge.status_code == 413 and "request body is larger" in huge.json()["detail"]  # from Content-Length
        boundary = "pengi-boundary"
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.wav"\r\n\r\n'.encode()
        chunks = iter([head, *[bytes(1 << 20)] * 3, f"\r\n--{boundary}--\r\n".encode()])  # no Content-Length
        streamed = small.post(
            "/api/describe", content=chunks, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
        assert streamed.status_code == 413 and "request body is larger" in streamed.json()["detail"]
        long_clip = write_tone(tmp_path / "long.wav", 6.0, sr=8000).read_bytes()
        too_long = small.post("/api/describe", files={"file": ("long.wav", long_clip)})
        assert too_long.status_code == 413 and "longer than the server's limit of 5 s" in too_long.json()["detail"]


# -- the served, pages and escaping -----------------------------------------------------------------------------


def test_stats(client, served):
    stats = client.get("/api/stats").json()
    assert stats["files"] == {"total": 6, "pending": 0, "indexed": 5, "error": 1}
    assert stats["window_count"] == 6 and stats["vectors"] == {"text": 6, "audio": 6}
    # as `stats --json`'s `vector_indexes`, with the vectors this server holds in memory
    command = runner.invoke(app, ["stats", "--db", served.db, "--json"])
    assert command.exit_code == 0, command.output
    said = json.loads(command.stdout)
    expected = said["vector_indexes"]
    assert stats["vector_indexes"] == {kind: {**index, "vectors_in_memory": 6} for kind, index in expected.items()}
    # every other key of `stats --json`, with its value (the server shows as many runs and failed files as these)
    assert {key: stats.get(key) for key in said if key != "vector_indexes"} == {
        key: value for key, value in said.items() if key != "vector_indexes"
    }
    assert {index["index_type"] for index in stats["vector_indexes"].values()} == {"flat"}
    assert stats["failed"] == [{"path": BROKEN, "error": BROKEN_REASON}]
    assert stats["model"]["model"] == "tiny-base"
    # as `stats --json`: captioned windows by how their texts were made
    assert stats["captions"] == {"window_count": 6, "captioned": 6, "missing": 0, "by_mode": {"exact": 6}}


def test_pages_render(client, served):
    rain = hit_for(client, served, "weather/rain.flac")
    page = client.get("/", params={"q": "thunder rolls in the distance", "ext": "flac"}).text
    assert "thunder rolls in the distance" in page and f"/api/files/{rain['file_id']}/audio#t=3.000,10.000" in page
    assert 'class="hit"' in page and f"/similar?window_id={rain['window_id']}" in page
    similar = client.get("/similar", params={"window_id": rain["window_id"]})
    assert similar.status_code == 200 and "Sounds like" in similar.text
    file_page = client.get(f"/files/{rain['file_id']}").text
    assert f'id="w{rain["window_id"]}"' in file_page and "rain on a roof" in file_page
    assert f"/api/files/{rain['file_id']}/spectrogram.png" in file_page
    library_page = client.get("/library").text
    assert BROKEN in library_page and BROKEN_REASON in library_page
    assert "<th>text index</th><td>flat, 6 vectors</td>" in library_page
    assert "Drop a clip" in client.get("/upload").text


def test_every_page_has_one_heading_a_skip_link_and_its_place_in_the_navigation(client, served):
    """A screen reader user jumps to each page's heading (the search page's is for them alone: the search box says
    it to the eye), skips the header's links from the page's first link, and hears which of the navigation's pages
    this is (aria-current; a file's page and an error are none of them)."""
    rain = hit_for(client, served, "weather/rain.flac")
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    pages = [
        (client.get("/"), "/", '<h1 class="visually-hidden">Search</h1>'),
        (client.get("/", params={"q": "a bell rings"}), "/", '<h1 class="visually-hidden">Results for “a bell rings”'),
        (client.get("/", params={"q": "a bell rings", "k": "0"}), "/", '<h1 class="visually-hidden">Search</h1>'),
        (client.get("/similar", params={"window_id": rain["window_id"]}), "/", '<h1 class="results-heading">Sounds'),
        (client.get("/upload"), "/upload", "<h1>Drop a clip</h1>"),
        (client.post("/upload/describe", files={"file": clip}), "/upload", "<h1>Drop a clip</h1>"),
        (client.get("/library"), "/library", "<h1>Library</h1>"),
        (client.get("/docs"), "/docs", "<h1>pengi-search API"),
        (client.get(f"/files/{rain['file_id']}"), None, f'<h1 class="file-path">{rain["path"]}</h1>'),
        (client.get("/nowhere"), None, "<h1>Error 404</h1>"),
    ]
    for response, current, heading in pages:
        page = response.text
        where = f"{response.request.method} {response.request.url}"
        assert page.count("<h1") == 1 and heading in page, where
        assert re.search(r"<body>\s*<a [^>]*>", page)[0].endswith('<a class="skip-link" href="#main">'), where
        assert '<main id="main" tabindex="-1">' in page, where
        assert re.findall(r'<a href="([^"]*)" aria-current="page">', page) == ([current] if current else []), where


def test_windows_that_play_when_pressed_are_labelled_and_reached_by_the_tab_key_once(client, served):
    """A file's timeline and the hits' waveforms play a window when pressed: each is a button whose label says the
    file, the window's start and end, and its caption. The timeline's first alone is a Tab stop (the arrow keys move
    on); a hit's waveform is none (the page's script makes each hit one Tab stop, its controls reached by the arrow
    keys, as the list's hidden note says once the script has made it so)."""
    rain = hit_for(client, served, "weather/rain.flac")
    path = served.files["weather/rain.flac"]
    page = client.get(f"/files/{rain['file_id']}").text
    assert 'role="toolbar" aria-label="The file\'s windows">' in page  # the lanes are one group
    lanes = re.findall(r'<span class="lane" [^>]*>', page)
    assert len(lanes) == 2 and all('role="button"' in lane for lane in lanes)
    assert [re.search(r'tabindex="(-?\d)"', lane)[1] for lane in lanes] == ["0", "-1"]
    assert f'aria-label="Play {path}, 0.0 to 7.0 s: rain on a roof"' in lanes[0]
    assert f'aria-label="Play {path}, 3.0 to 10.0 s: thunder rolls in the distance"' in lanes[1]
    results = client.get("/", params={"q": "thunder rolls in the distance", "k": 3}).text
    waveforms = re.findall(r'<canvas class="waveform" [^>]*>', results)
    assert len(waveforms) == 3 and all('role="button"' in canvas for canvas in waveforms)
    assert [re.search(r'tabindex="(-?\d)"', canvas)[1] for canvas in waveforms] == ["-1", "-1", "-1"]
    assert re.search(
        r'<p id="hits-keys" class="visually-hidden" hidden>Each result is one stop of the Tab key', results
    )
    assert f'aria-label="Play {path}, 3.0 to 10.0 s: thunder rolls in the distance"' in waveforms[0]


def test_a_hit_whose_file_is_gone_or_changed_says_why_it_cannot_be_played(client, served):
    """As a file's page does: where *Play hit* would do nothing visible, the hit says why instead, on the results of
    a search, of "more like this" and of an uploaded clip."""
    bell, dog = served.files["bell.wav"], served.files["animals/dog.wav"]
    rain = hit_for(client, served, "weather/rain.flac")
    clip = ("clip.flac", served.files["weather/rain.flac"].read_bytes())
    stamp = bell.stat()
    os.utime(bell, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    dog.rename(dog.with_name("away.wav"))
    try:
        pages = [
            client.get("/", params={"q": "a bell rings", "k": 10}).text,
            client.get("/similar", params={"window_id": rain["window_id"], "k": 10}).text,
            client.post("/upload/similar", files={"file": clip}, data={"k": "10"}).text,
        ]
    finally:
        os.utime(bell, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        dog.with_name("away.wav").rename(dog)
    for page in pages:
        hits = {
            html.unescape(re.search(r'class="path" href="[^"]*">([^<]*)<', item)[1]): item
            for item in re.findall(r'<li class="hit".*?</li>', page, re.S)
        }
        assert len(hits) >= 4 and str(bell) in hits and str(dog) in hits
        changed, gone = hits.pop(str(bell)), hits.pop(str(dog))
        assert "The audio cannot be played: the file changed on disk since it was indexed; index it again" in changed
        assert "The audio cannot be played: no longer readable on disk" in gone
        assert not any("play-hit" in item or "<audio" in item for item in (changed, gone))
        assert all("play-hit" in item and "cannot be played" not in item for item in hits.values())
    assert "cannot be played" not in client.get("/", params={"q": "a bell rings", "k": 10}).text  # all back


def test_the_pages_take_the_same_filter_boxes(client, served):
    """Search and "more like this" read the filters the same way: as typed, an empty box being no filter."""
    bell = hit_for(client, served, "bell.wav")
    boxes = {"k": "2", "by": "window", "min_score": "", "path": "*/weather/*", "ext": "", "min_duration": ""}
    page = client.get("/", params={"q": "a bell rings", **boxes}).text
    assert page.count('class="hit"') == 2 and "rain.flac" in page and "bell.wav" not in page
    similar = client.get("/similar", params={"window_id": bell["window_id"], **boxes}).text
    assert similar.count('class="hit"') == 2 and "rain.flac" in similar and "dog.wav" not in similar
    refused = client.get("/", params={"q": "a bell rings", "min_duration": "long"})
    assert refused.status_code == 422 and "&#39;long&#39; is not a number" in refused.text
    not_a_number = client.get("/similar", params={"window_id": bell["window_id"], "k": "many"})
    assert not_a_number.status_code == 422 and "k: &#39;many&#39; is not a number" in not_a_number.text


def test_a_refused_search_shows_the_boxes_as_typed_and_open(client, served):
    page = client.get("/", params={"q": "a bell rings", "k": "0", "path": "*/weather/*", "ext": "flac"})
    assert page.status_code == 422 and "k: the number of results must be between 1 and 200" in page.text
    assert '<details class="filters" open>' in page.text  # the box at fault is in sight
    assert 'name="k" min="1" max="200" value="0"' in page.text  # not the default 10
    assert 'value="*/weather/*"' in page.text and 'value="flac"' in page.text  # nothing typed is lost


def box(page: str, name: str) -> str:
    """The tag of the search form's box called `name`."""
    return re.search(rf'<(?:input|select) [^>]*name="{name}"[^>]*>', page)[0]


FAULT = ' aria-invalid="true" aria-describedby="form-error" autofocus'


@pytest.mark.parametrize(
    ("boxes", "fault"),
    [
        ({"k": "0"}, "k"),
        ({"by": "folder"}, "by"),
        ({"path": "dogs/*"}, "path"),
        ({"min_duration": "long"}, "min_duration"),
        ({"rank": "loudness"}, "rank"),
    ],
)
def test_a_refused_search_puts_the_focus_in_the_box_at_fault_which_says_why(client, served, boxes, fault):
    """A keyboard user lands in the box to correct (not in the text box, far from it), and a screen reader says it is
    invalid and reads the error with it."""
    page = client.get("/", params={"q": "a bell rings", **boxes}).text
    assert '<p class="error" id="form-error" role="alert">' in page
    assert box(page, fault).endswith(f"{FAULT}>")
    assert [name for name in ("q", *FILTER_BOXES, "rank") if "autofocus" in box(page, name)] == [fault]
    if fault != "rank":  # "more like this" has the same boxes but the ranking
        bell = hit_for(client, served, "bell.wav")
        similar = client.get("/similar", params={"window_id": bell["window_id"], **boxes}).text
        assert box(similar, fault).endswith(f"{FAULT}>") and "autofocus" not in box(similar, "q")


def test_a_search_refused_for_no_box_in_particular_keeps_the_focus_in_the_text_box(client, served, monkeypatch):
    def no_text_tower():
        raise TextEmbedderError("--rank", "no text tower: use --rank caption")

    monkeypatch.setattr(client.app.state.service, "audio_embedder", no_text_tower)
    page = client.get("/", params={"q": "a bell rings", "rank": "audio"}).text
    assert '<p class="error" id="form-error" role="alert">' in page and "aria-invalid" not in page
    assert box(page, "q").endswith(' autofocus aria-label="What to look for">')


@pytest.mark.parametrize(
    "boxes",
    [
        {"k": "0"},
        {"min_score": "abc"},
        {"by": "folder"},
        {"path": "dogs/*"},
        {"ext": ","},
        {"min_duration": "5", "max_duration": "1"},
        {"rank": "loudness"},
        {"hybrid_weight": "2"},
        {"rank": "loudness", "hybrid_weight": "0.7"},
        {"rank": "caption", "hybrid_weight": "2"},
    ],
)
def test_a_refused_search_page_has_the_apis_status_and_keeps_the_page(client, served, boxes):
    """Scripts, caches and monitoring read the status: a search the API refuses is refused by the page with the
    same status (422 for a box at fault), on the search page itself, with the reason and the boxes as typed."""
    query = {"q": "a bell rings", **boxes}
    api = client.get("/api/search", params=query)
    page = client.get("/", params=query)
    assert api.status_code >= 400 and page.status_code == api.status_code, page.text
    assert '<form class="search"' in page.text and '<p class="error" id="form-error" role="alert">' in page.text
    for name, value in boxes.items():
        if name not in ("by", "rank"):  # a menu cannot show a value it does not offer
            assert f'value="{value}"' in page.text
    bell = hit_for(client, served, "bell.wav")
    similar = client.get("/similar", params={"window_id": bell["window_id"], **boxes})
    if "rank" not in boxes and "hybrid_weight" not in boxes:  # "more like this" has no ranking to choose
        assert similar.status_code == api.status_code and '<form class="search"' in similar.text
        assert f'<input type="hidden" name="window_id" value="{bell["window_id"]}">' in similar.text


def test_more_like_this_keeps_the_filters_of_the_search(client, served):
    """A result's "more like this" searches the part of the library the user was looking at: the search's filters
    go with it (not its ranking: audio is compared with audio), and its page shows them in its boxes."""
    boxes = {"k": "5", "by": "window", "ext": "wav,aiff", "min_duration": "3", "min_score": "-1"}
    page = client.get("/", params={"q": "a bell rings", **boxes, "rank": "caption"}).text
    links = [html.unescape(href) for href in re.findall(r'<a class="more" href="([^"]+)"', page)]
    assert len(links) == 2  # dog.wav (3 s) and hum.aiff (4 s): the only long enough files of those types
    address = urlsplit(links[0])
    assert address.path == "/similar"
    sent = {name: values for name, values in parse_qs(address.query).items() if name != "window_id"}
    assert sent == {"k": ["5"], "by": ["window"], "ext": ["wav,aiff"], "min_duration": ["3.0"], "min_score": ["-1.0"]}
    similar = client.get(links[0]).text
    shown = set(re.findall(r'<a class="path" href="[^"]*">([^<]*)</a>', similar))
    assert shown and shown <= {str(served.files["animals/dog.wav"]), str(served.files["loops/hum.aiff"])}
    assert len(shown) == 1  # the other file: the window's own is left out
    assert 'value="wav,aiff"' in similar and 'name="k" min="1" max="200" value="5"' in similar


def test_more_like_this_holds_only_the_filters_that_were_set(client, served):
    """As the search form sends only its boxes set (static/app.js): an address to read and share, and one that
    works, as a box left out is its default."""
    for boxes in ({}, {"k": "10", "by": "file", "path": "", "ext": "", "min_score": ""}):
        page = client.get("/", params={"q": "a bell rings", **boxes}).text
        links = [html.unescape(href) for href in re.findall(r'<a class="more" href="([^"]+)"', page)]
        assert links and all(re.fullmatch(r"/similar\?window_id=\d+", link) for link in links), links
        assert client.get(links[0]).status_code == 200
    narrowed = client.get("/", params={"q": "a bell rings", "k": "3", "by": "file", "ext": "wav"}).text
    assert re.search(r'<a class="more" href="/similar\?window_id=\d+&amp;k=3&amp;ext=wav">', narrowed)
    assert 'data-default="10"' in box(narrowed, "k") and 'data-default="file"' in box(narrowed, "by")
    assert f'data-default="{DEFAULT_HYBRID_WEIGHT}"' in box(narrowed, "hybrid_weight")


def test_the_similar_pages_boxes_refine_it_and_its_text_box_searches(client, served):
    bell = hit_for(client, served, "bell.wav")
    page = client.get("/similar", params={"window_id": bell["window_id"]}).text
    assert '<form class="search" method="get" action="/similar">' in page
    assert f'<input type="hidden" name="window_id" value="{bell["window_id"]}">' in page
    assert 'name="rank"' not in page  # audio against audio: no ranking to choose
    assert f"<title>Sounds like {served.files['bell.wav']} · pengi-search</title>" in page
    typed = client.get(
        "/similar", params={"window_id": bell["window_id"], "q": "rain", "ext": "flac"}, follow_redirects=False
    )
    assert typed.status_code == 303 and typed.headers["location"] == "/?q=rain&ext=flac"


def ranks_and_more(page: str) -> tuple[list[int], dict[str, str] | None]:
    """The ranks of a results page's hits, and its "More results" link (href and data-next) if it has one."""
    ranks = [int(rank) for rank in re.findall(r'<li class="hit" id="hit-(\d+)">', page)]
    assert ranks == [int(rank) for rank in re.findall(r'<span class="rank">(\d+)</span>', page)]
    link = re.search(r'<a class="more-results" href="([^"]+)" data-next="([^"]+)"', page)
    return ranks, link and {"href": html.unescape(link[1]), "next": html.unescape(link[2])}


@pytest.mark.parametrize("similar", [False, True])
def test_more_results_links_the_next_page_and_the_page_that_shows_one_page_more(client, served, similar):
    """A full page of results links "More results": the page with one more page of results (where a reload of the
    page after the script added one is), scrolled to its first new hit, and the next page alone (which the script
    adds), its hits ranked from where the first page ended; both with every box of the search kept."""
    base = "/?q=a+bell+rings"
    if similar:
        base = f"/similar?window_id={hit_for(client, served, 'bell.wav')['window_id']}"
    ranks, more = ranks_and_more(client.get(f"{base}&by=window&k=2").text)
    assert ranks == [1, 2]
    assert more == {"href": f"{base}&by=window&k=2&pages=2#hit-3", "next": f"{base}&by=window&k=2&offset=2"}
    longer, next_page = client.get(more["href"]).text, client.get(more["next"]).text
    assert ranks_and_more(longer) == (
        [1, 2, 3, 4],
        {"href": f"{base}&by=window&k=2&pages=3#hit-5", "next": f"{base}&by=window&k=2&offset=4"},
    )
    assert ranks_and_more(next_page) == (
        [3, 4],
        {"href": f"{base}&by=window&k=2&offset=2&pages=2#hit-5", "next": f"{base}&by=window&k=2&offset=4"},
    )
    paths = re.findall(r'<a class="path" href="[^"]*">([^<]*)</a>', longer)
    assert paths[2:] == re.findall(r'<a class="path" href="[^"]*">([^<]*)</a>', next_page)


def test_a_page_showing_every_result_has_no_more_results_and_one_past_them_says_so(client, served):
    every = search(client, "a bell rings", by="window", k=20)
    ranks, more = ranks_and_more(client.get("/", params={"q": "a bell rings", "by": "window", "k": 4}).text)
    assert ranks == [1, 2, 3, 4] and more is not None and len(every) == 6
    ranks, more = ranks_and_more(client.get("/", params={"q": "a bell rings", "by": "window", "k": 4, "pages": 2}).text)
    assert ranks == [1, 2, 3, 4, 5, 6] and more is None  # fewer than asked for: that is all
    past = client.get("/", params={"q": "a bell rings", "by": "window", "k": 3, "offset": 6}).text
    assert ranks_and_more(past) == ([], None) and '<p class="empty">No more results.</p>' in past


def test_more_results_stops_at_the_deepest_page_the_server_serves(served, tiny_model_dir):
    with client_for(served, tiny_model_dir, max_offset=2) as shallow:
        page = {"q": "a bell rings", "by": "window", "k": 2}
        assert ranks_and_more(shallow.get("/", params=page).text)[1] is not None  # the next page starts at 2
        assert ranks_and_more(shallow.get("/", params={**page, "pages": 2}).text) == ([1, 2, 3, 4], None)
        refused = shallow.get("/", params={**page, "pages": 3})
        assert refused.status_code == 422 and "the deepest page must start at result 3 or before" in refused.text


def test_upload_pages(client, served):
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    described = client.post("/upload/describe", files={"file": clip})
    assert described.status_code == 200 and "caption" in described.text
    similar = client.post("/upload/similar", files={"file": clip}, data={"k": "3"})
    assert similar.status_code == 200 and similar.text.count('class="hit"') == 3  # bell.wav itself left out
    classified = client.post("/upload/classify", files={"file": clip}, data={"labels": "a bell rings\nsilence"})
    assert classified.status_code == 200 and "a bell rings" in classified.text
    bad = client.post("/upload/describe", files={"file": ("x.wav", b"not audio at all" * 10)})
    assert bad.status_code == 422 and "not a readable audio file" in bad.text and "<html" in bad.text


def test_a_clip_box_shows_every_file_the_server_reads_in_the_file_chooser(client):
    """By type (`audio/*`) and by each extension the server decodes: a system whose type table does not call `.opus`,
    `.wv` or `.caf` audio would hide them in the chooser, to be found only under "All files"."""
    boxes = upload_boxes(client.get("/upload").text)
    for form in ("describe", "similar", "classify"):
        accepted = re.search(r'accept="([^"]*)"', boxes[form]["file"])[1].split(",")
        assert accepted[0] == "audio/*" and set(accepted[1:]) == AUDIO_EXTENSIONS, form


def test_a_very_short_uploaded_clips_length_does_not_read_as_empty(client):
    """As its window's time and the terminal's `describe` show it: 0.01 s, not 0.0 s."""
    clip = io.BytesIO()
    sf.write(clip, np.full(441, 0.1), 44_100, format="WAV")  # 0.01 s
    page = client.post("/upload/describe", files={"file": ("click.wav", clip.getvalue())})
    assert page.status_code == 200, page.text
    assert '<span class="note">(0.01 s)</span>' in page.text and "0.00–0.01 s" in page.text


def test_an_uploaded_clips_similar_sounds_take_the_filters_and_more_like_this_keeps_them(client, served):
    """The upload page's "Find similar sounds" has the search's filter boxes; what the user chose there narrows
    the results, and each result's "more like this" carries it on, as a search's results do."""
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    boxes = {"k": "3", "by": "window", "ext": "wav,aiff", "min_duration": "3", "min_score": "-1"}
    page = client.post("/upload/similar", files={"file": clip}, data=boxes)
    assert page.status_code == 200, page.text
    shown = re.findall(r'<a class="path" href="[^"]*">([^<]*)</a>', page.text)
    assert sorted(shown) == sorted(str(served.files[name]) for name in ("animals/dog.wav", "loops/hum.aiff"))
    links = [urlsplit(html.unescape(href)) for href in re.findall(r'<a class="more" href="([^"]+)"', page.text)]
    assert len(links) == 2 and {link.path for link in links} == {"/similar"}
    for link in links:
        sent = {name: values for name, values in parse_qs(link.query).items() if name != "window_id"}
        assert sent == {name: [value] for name, value in boxes.items()}
    assert '<details class="filters" open>' in page.text and 'name="k" min="1" max="200" value="3"' in page.text
    assert '<option value="window" selected>' in page.text and 'value="wav,aiff"' in page.text
    similar = client.get(f"{links[0].path}?{links[0].query}").text
    assert 'value="wav,aiff"' in similar and 'name="k" min="1" max="200" value="3"' in similar
    a_file = client.post("/upload/similar", files={"file": clip, "ext": ("ext.txt", b"wav")})
    assert a_file.status_code == 422 and "ext: a file was sent where a value is typed" in a_file.text


def test_a_refused_upload_is_said_on_the_upload_page_with_what_was_typed(client, served):
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    no_labels = client.post("/upload/classify", files={"file": clip}, data={"labels": " ", "method": "loglik"})
    assert no_labels.status_code == 422
    assert '<p class="error" id="form-error" role="alert">labels: no labels' in no_labels.text
    assert '<form class="upload"' in no_labels.text and '<option value="loglik" selected>' in no_labels.text
    bad = ("x.wav", b"not audio at all" * 10)
    kept = client.post("/upload/classify", files={"file": bad}, data={"labels": "a bell rings\n<b>rain</b>"})
    assert kept.status_code == 422 and "not a readable audio file" in kept.text
    assert "a bell rings\n&lt;b&gt;rain&lt;/b&gt;</textarea>" in kept.text  # typed again by no one
    many = client.post("/upload/similar", files={"file": clip}, data={"k": "0"})
    assert many.status_code == 422 and "k: the number of results" in many.text and 'value="0"' in many.text
    page = client.get("/upload").text
    assert 'action="/upload/classify#result"' in page and "Up to 64 MiB and 600 s." in page


def upload_boxes(page: str) -> dict[str, dict[str, str]]:
    """The upload page's boxes, form by form (by the last part of the form's address): name -> tag."""
    boxes = {}
    for form in re.finditer(r'<form class="upload" [^>]*action="/upload/(\w+)#result".*?</form>', page, re.S):
        tags = re.findall(r'<(?:input|select|textarea) [^>]*name="\w+"[^>]*>', form[0])
        boxes[form[1]] = {re.search(r'name="(\w+)"', tag)[1]: tag for tag in tags}
    return boxes


NOT_AUDIO = ("x.wav", b"not audio at all" * 10)


@pytest.mark.parametrize(
    ("form", "files", "data", "fault"),
    [
        ("similar", {}, {"k": "0"}, "k"),
        ("similar", {}, {"min_score": "high"}, "min_score"),
        ("similar", {"file": NOT_AUDIO}, {"k": "3"}, "file"),
        ("describe", {"file": NOT_AUDIO}, {}, "file"),
        ("classify", {"file": NOT_AUDIO}, {"labels": "a bell rings"}, "file"),
        ("classify", {}, {"labels": " "}, "labels"),
        ("classify", {"labels_file": ("labels.csv", b"name,kind\nx.wav,dog\n")}, {}, "labels_file"),
    ],
)
def test_a_refused_upload_puts_the_focus_in_the_box_at_fault_of_the_form_sent(client, served, form, files, data, fault):
    """As on the search page: the box to correct is marked invalid, described by the error and focused; it is the
    one of the form that was sent, not a box of the same name in another form (each has a "Clip" box, `file`)."""
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    page = client.post(f"/upload/{form}", files={"file": clip, **files}, data=data)
    assert page.status_code == 422 and '<p class="error" id="form-error" role="alert">' in page.text
    boxes = upload_boxes(page.text)
    assert list(boxes) == ["describe", "similar", "classify"]
    assert boxes[form][fault].endswith(f"{FAULT}>")
    marked = [(sent, name) for sent, tags in boxes.items() for name, tag in tags.items() if "aria-invalid" in tag]
    assert marked == [(form, fault)] and page.text.count("autofocus") == 1
    if form == "similar" and fault != "file":
        assert '<details class="filters" open>' in page.text  # the box at fault is in sight
    assert "aria-invalid" not in client.get("/upload").text


LIMITS = {"max_upload_bytes": 40_000, "max_upload_s": 2.0}  # a clip's


@pytest.mark.parametrize(
    ("form", "files", "fault", "said"),
    [
        ("describe", {"file": ("long.wav", "3 s")}, "file", "long.wav: longer than the server's limit of 2 s"),
        ("similar", {"file": ("big.wav", "50 KB")}, "file", "big.wav: larger than the server's limit of 40000 bytes"),
        ("classify", {"labels_file": ("labels.txt", "2 MiB")}, "labels_file", "labels_file: larger than the"),
    ],
)
def test_an_upload_past_the_limits_is_a_413_that_names_the_box_at_fault(
    served, tiny_model_dir, tmp_path, form, files, fault, said
):
    """A clip too long or too large is the clip's fault, as one that cannot be read is: the JSON names its field,
    and the upload page marks and focuses that box of the form sent, as the page does with a clip it refuses
    before sending it (past the size limit); so with a labels file past its limit."""
    sent = {
        "1 s": ("clip.wav", write_tone(tmp_path / "short.wav", 1.0, sr=8_000).read_bytes()),  # 16 KB
        "3 s": write_tone(tmp_path / "long.wav", 3.0, sr=4_000).read_bytes(),  # 24 KB
        "50 KB": write_tone(tmp_path / "big.wav", 1.5, sr=16_000).read_bytes(),
        "2 MiB": b"dog\n" * (1 << 19),
    }
    files = {"file": sent["1 s"]} | {name: (file_name, sent[size]) for name, (file_name, size) in files.items()}
    data = {"labels": ""} if form == "classify" else {}
    limits = LIMITS if fault == "file" else {}  # the labels file's limit is its own (1 MiB)
    with client_for(served, tiny_model_dir, **limits) as small:
        page = small.post(f"/upload/{form}", files=files, data=data)
        assert page.status_code == 413 and html.unescape(page.text).count(said) == 1
        boxes = upload_boxes(page.text)
        assert [(sent, name) for sent, tags in boxes.items() for name, tag in tags.items() if FAULT in tag] == [
            (form, fault)
        ]
        api = small.post("/api/classify" if form == "classify" else f"/api/{form}", files=files, data=data)
        assert api.status_code == 413 and api.json()["detail"].startswith(said)
        assert [problem["field"] for problem in api.json()["errors"]] == [fault]


def test_the_upload_page_holds_its_limits_and_says_them_as_the_server_does(served, tiny_model_dir):
    """Each file box carries its limit in bytes and the server's own words past it, which the page says before
    sending a file too large (static/app.js; the browser test sends one)."""
    with client_for(served, tiny_model_dir, max_upload_bytes=3 << 19) as small:
        boxes = upload_boxes(small.get("/upload").text)
        said = "larger than the server&#39;s limit of 1.5 MiB"
        assert all(f'data-max-bytes="{3 << 19}" data-too-large="{said}"' in form["file"] for form in boxes.values())
        labels = 'data-max-bytes="1048576" data-too-large="larger than the server&#39;s limit of 1 MiB"'
        assert labels in boxes["classify"]["labels_file"]
        refused = small.post("/api/describe", files={"file": ("big.wav", bytes((3 << 19) + 1))})
        assert (refused.status_code, refused.json()["detail"]) == (413, f"big.wav: {html.unescape(said)}")


def test_unknown_pages_and_bodies_past_the_limit_get_a_page_and_the_api_json(served, tiny_model_dir):
    clip = served.files["weather/rain.flac"].read_bytes()
    with client_for(served, tiny_model_dir, max_upload_bytes=1 << 20) as small:
        missing = small.get("/nowhere")
        assert missing.status_code == 404 and "<html" in missing.text and "/nowhere: no such page" in missing.text
        api_missing = small.get("/api/nowhere")  # the same sentence, in the API's error shape
        assert (api_missing.status_code, api_missing.json()) == (404, {"detail": "/api/nowhere: no such page"})
        assert small.post("/library").status_code == 405 and "<html" in small.post("/library").text
        huge = bytes(len(clip) + (3 << 20))
        page = small.post("/upload/describe", files={"file": ("huge.wav", huge)})
        assert page.status_code == 413 and "<html" in page.text
        assert "the request body is larger than the upload limit of 1 MiB" in page.text
        api = small.post("/api/describe", files={"file": ("huge.wav", huge)})
        assert api.json() == {"detail": "the request body is larger than the upload limit of 1 MiB"}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/api/search?q=rain", "GET, HEAD"),
        ("DELETE", "/api/files/1", "GET, HEAD"),
        ("GET", "/api/describe", "POST"),
        ("PUT", "/upload/similar", "POST, GET, HEAD"),  # two routes: both named
        ("POST", "/static/app.js", "GET, HEAD"),
    ],
)
def test_a_method_not_allowed_says_which_are(client, method, path, allowed):
    """405 in the API's words, naming the methods the path answers (HEAD too, wherever GET is), as `Allow` does."""
    response = client.request(method, path)
    assert (response.status_code, response.headers["allow"]) == (405, allowed)
    said = f"{method} {path.partition('?')[0]}: method not allowed (send {allowed.replace(', ', ' or ')})"
    assert response.json() == {"detail": said} if path.startswith("/api/") else html.escape(said) in response.text


def test_the_library_and_a_failed_file_read_as_words(client, served):
    assert when("2026-01-31T14:05:09.123456+00:00") == "2026-01-31 14:05:09 UTC"  # runs' times, to the second
    assert when("2026-01-31T14:05:09+02:00") == "2026-01-31 14:05:09 +0200" and when(None) == ""
    assert [duration_text(s) for s in (21.4, 587.1, 11520.0)] == ["21 s", "9.8 min", "3.2 h"]
    assert re.search(r"<th>indexed audio</th><td>\d+ s</td>", client.get("/library").text)  # not "0.0 h"
    broken = next(info for i in range(1, 20) if (info := client.get(f"/api/files/{i}").json()).get("path") == BROKEN)
    page = client.get(f"/files/{broken['id']}").text
    assert f"This file could not be indexed: {BROKEN_REASON}" in page
    assert '<p class="file-meta">0 windows' in page  # no dangling separator before it


def test_a_library_waiting_for_its_captions_says_which_command_writes_them(tiny_model_dir, tmp_path):
    """The command is set as code, not between the backticks of a terminal's text."""
    sounds, db = tmp_path / "sounds", tmp_path / "lib.db"
    write_tone(sounds / "x.wav", 3.0)
    index_folder(str(db), sounds, tiny_model_dir, captions=Captions.later)
    with client_for(CaptionLibrary(str(db), sounds, {}), tiny_model_dir) as client:
        page = client.get("/library").text
    assert "(1 waiting for <code>pengi-search index</code>; text search ranks by audio embeddings" in page
    assert "`" not in page


def test_model_output_and_paths_are_escaped_everywhere(client, served):
    cat = hit_for(client, served, "odd/<i>cat</i>.wav")
    assert cat["caption"] == HOSTILE  # JSON keeps the text as written
    pages = [
        client.get("/", params={"q": HOSTILE}).text,
        client.get(f"/files/{cat['file_id']}").text,
        client.get("/similar", params={"window_id": hit_for(client, served, "bell.wav")["window_id"]}).text,
    ]
    for page in pages:
        assert "<script>alert" not in page and "<i>cat</i>" not in page
        assert "&lt;script&gt;alert(&#39;pengi&#39;)&lt;/script&gt;" in page or "&lt;i&gt;cat&lt;/i&gt;" in page
    assert "&lt;script&gt;alert" in pages[0] and "&lt;i&gt;cat&lt;/i&gt;" in pages[0]
    response = client.get("/", params={"q": HOSTILE})
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in response.headers  # no CORS


def test_docs_list_every_api_route(client):
    page = client.get("/docs").text
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/api/search",
        "/api/similar",
        "/api/files/{file_id}",
        "/api/files/{file_id}/audio",
        "/api/files/{file_id}/spectrogram.png",
        "/api/windows/{window_id}/audio",
        "/api/windows/{window_id}/peaks",
        "/api/describe",
        "/api/classify",
        "/api/stats",
    }
    for path in spec["paths"]:
        assert f"<code>{path}</code>" in page
    assert "<script" not in page.split("</head>")[1]  # the reference page needs no script


def strings(node, key=""):
    """Every string in a JSON document, with the key it is found under (a list's items: the list's key)."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from strings(value, name)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value, key)
    elif isinstance(node, str):
        yield key, node


def test_the_api_reference_renders_the_descriptions_markdown(client):
    """OpenAPI descriptions are Markdown (written, as docstrings, with `code` in backticks); summaries and titles are
    plain text and hold none. /docs shows commands and globs as code: no raw backtick, no glob's * read as emphasis."""
    spec = client.get("/openapi.json").json()
    plain = [text for key, text in strings(spec) if key in ("summary", "title")]
    assert plain and [text for text in plain if "`" in text] == []
    main = client.get("/docs").text.split('<main id="main" tabindex="-1">')[1]
    assert "`" not in main and "<em>" not in main
    assert "<p>Windows that match the text, best first (<code>pengi-search query --json</code>)" in main
    assert "<td>Glob over full paths, e.g. <code>*/dogs/*</code>; " in main
    assert "are the CLI's <code>--json</code>." in main


# -- read only ---------------------------------------------------------------------------------------------------


def digest(paths):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


def test_the_server_never_writes_to_the_index(served, tiny_model_dir):
    root = served.root.parent
    files = sorted(p for p in root.iterdir() if p.is_file())
    before = digest(files)
    with client_for(served, tiny_model_dir) as client:
        search(client, "a bell rings")
        client.get("/api/stats")
        service = client.app.state.service
        with pytest.raises(StoreError, match="readonly|read-only|query_only"):
            service.library.store.upsert_file("/tmp/x.wav", size=1, mtime=1.0)
    assert digest(sorted(p for p in root.iterdir() if p.is_file())) == before


# -- error answers -----------------------------------------------------------------------------------------------


def test_json_errors_name_the_problem(client):
    response = client.get("/api/files/424242")
    assert response.status_code == 404 and json.loads(response.text) == {
        "detail": "file 424242: no such file in the index"
    }


SEARCH = "/api/search?q=a+bell+rings&"
LABELS = {"labels": "a bell rings\nsilence"}


@pytest.mark.parametrize(
    ("method", "url", "data", "field"),
    [
        # number of results: both ends of the range are the same kind of error
        ("GET", SEARCH + "k=0", None, "k"),
        ("GET", SEARCH + "k=201", None, "k"),  # past the server's max_k (200)
        ("GET", SEARCH + "k=many", None, "k"),
        ("GET", "/api/similar?window_id=1&k=0", None, "k"),
        ("GET", "/api/similar?window_id=1&k=201", None, "k"),
        ("POST", "/api/similar?k=0", {}, "k"),
        ("POST", "/api/similar?k=201", {}, "k"),
        ("GET", SEARCH + "offset=-1", None, "offset"),
        ("GET", SEARCH + "offset=1001", None, "offset"),  # past the server's max_offset (1000)
        ("GET", "/api/similar?window_id=1&offset=1001", None, "offset"),
        ("POST", "/api/similar?offset=first", {}, "offset"),
        # every filter, with the API's parameter names (the core's errors name the CLI's --min-score, --ext, ...)
        ("GET", SEARCH + "by=folder", None, "by"),
        ("GET", SEARCH + "min_score=nan", None, "min_score"),
        ("GET", SEARCH + "min_score=high", None, "min_score"),
        ("GET", SEARCH + "ext=,", None, "ext"),
        ("GET", SEARCH + "path=animals/*", None, "path"),
        ("GET", SEARCH + "min_duration=-1", None, "min_duration"),
        ("GET", SEARCH + "max_duration=inf", None, "max_duration"),
        ("GET", SEARCH + "min_duration=5&max_duration=1", None, "min_duration"),
        ("GET", "/api/similar?window_id=1&ext=,", None, "ext"),
        ("GET", "/api/similar?window_id=1&min_score=nan", None, "min_score"),
        ("POST", "/api/similar?ext=,", {}, "ext"),
        ("POST", "/api/similar?min_duration=5&max_duration=1", {}, "min_duration"),
        # the rest of each endpoint's parameters
        ("GET", "/api/search?q=+", None, "q"),
        ("GET", "/api/search", None, "q"),
        ("GET", SEARCH + "rank=loudest", None, "rank"),
        ("GET", SEARCH + "hybrid_weight=2", None, "hybrid_weight"),
        ("GET", SEARCH + "hybrid_weight=nan", None, "hybrid_weight"),
        ("GET", "/api/similar?window_id=-1", None, "window_id"),
        ("GET", "/api/similar", None, "window_id"),
        ("GET", "/api/files/first", None, "file_id"),
        ("GET", "/api/windows/first/peaks", None, "window_id"),
        ("POST", "/api/classify", {"top": "0", **LABELS}, "top"),
        ("POST", "/api/classify", {"top": "101", **LABELS}, "top"),
        ("POST", "/api/classify", {"method": "guess", **LABELS}, "method"),
        ("POST", "/api/classify", {"labels": "dog\ndog"}, "labels"),
    ],
)
def test_an_invalid_parameter_is_a_422_that_names_it_as_the_api_does(client, served, method, url, data, field):
    files = None if data is None else {"file": ("clip.wav", served.files["bell.wav"].read_bytes())}
    body = invalid(client.request(method, url, data=data, files=files), field)
    assert body["detail"] == f"{field}: {body['errors'][0]['message']}"


def test_every_problem_of_a_request_is_listed(client):
    body = invalid(client.get(SEARCH + "k=0&by=folder&min_score=x"), "k", "by", "min_score")
    assert body["detail"].count("; ") == 2  # one line: "k: ...; by: ...; min_score: ..."


def test_the_largest_k_is_served_and_the_next_one_refused(client):
    assert client.get(SEARCH + "k=200").status_code == 200
    assert invalid(client.get(SEARCH + "k=201"), "k")["errors"][0]["message"].endswith("between 1 and 200")


def test_a_labels_file_that_cannot_be_used_names_labels_file(client, served):
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    labels_file = ("labels.csv", b"name,kind\nx.wav,dog\n")
    response = client.post("/api/classify", files={"file": clip, "labels_file": labels_file})
    assert "needs a 'label' column" in invalid(response, "labels_file")["detail"]


@pytest.mark.parametrize("rank", [None, "caption", "audio"])
def test_a_hybrid_weight_without_rank_hybrid_is_a_400_that_names_it(client, rank):
    """Only rank=hybrid reads the weight: given with another ranking it would change nothing, without a word (the
    CLI refuses `--hybrid-weight` without `--rank hybrid`, exit 2)."""
    ranked = {} if rank is None else {"rank": rank}
    response = client.get("/api/search", params={"q": "a bell rings", "hybrid_weight": 0.7, **ranked})
    assert response.status_code == 400
    assert response.json() == {
        "detail": "hybrid_weight: weighs the two scores of rank=hybrid: add rank=hybrid, or leave it out",
        "errors": [
            {
                "field": "hybrid_weight",
                "message": "weighs the two scores of rank=hybrid: add rank=hybrid, or leave it out",
            }
        ],
    }
    weighed = client.get("/api/search", params={"q": "a bell rings", "hybrid_weight": 0.7, "rank": "hybrid"})
    assert weighed.status_code == 200 and weighed.json()[0]["ranking"] == "hybrid"


@pytest.mark.parametrize("rank", [None, "caption", "audio"])
def test_the_search_page_refuses_a_hybrid_weight_without_rank_hybrid_as_the_api_does(client, rank):
    """Without scripts the weight's box is shown whatever the ranking: a weight typed there with another ranking is
    refused as the API refuses it (400, in its words), kept in its box, which is marked and focused. It was read by
    nothing, without a word. A box left empty is no weight."""
    query = {"q": "a bell rings", "hybrid_weight": "0.7", **({} if rank is None else {"rank": rank})}
    page, api_answer = client.get("/", params=query), client.get("/api/search", params=query)
    assert page.status_code == api_answer.status_code == 400
    assert f'<p class="error" id="form-error" role="alert">{escape(api_answer.json()["detail"])}</p>' in page.text
    assert 'value="0.7"' in box(page.text, "hybrid_weight") and box(page.text, "hybrid_weight").endswith(f"{FAULT}>")
    assert client.get("/", params={**query, "hybrid_weight": ""}).status_code == 200


def test_the_hybrid_weights_box_holds_the_weight_as_typed_with_the_default_as_its_placeholder(client):
    """A hybrid search without a weight typed leaves the box empty, the default shown as its placeholder (and in the
    ranking's note): sent again with another ranking, without scripts, the form sends no weight for the server to
    refuse. It held the default, which the page then refused."""
    hybrid = client.get("/", params={"q": "a bell rings", "rank": "hybrid"}).text
    weight = box(hybrid, "hybrid_weight")
    assert 'value=""' in weight and f'placeholder="{DEFAULT_HYBRID_WEIGHT}"' in weight
    assert f"(caption weight {DEFAULT_HYBRID_WEIGHT})" in hybrid
    weighed = client.get("/", params={"q": "a bell rings", "rank": "hybrid", "hybrid_weight": "0.25"}).text
    assert 'value="0.25"' in box(weighed, "hybrid_weight") and "(caption weight 0.25)" in weighed


@pytest.mark.parametrize(("typed", "used"), [("0.250", "0.25"), ("1e-1", "0.1")])
def test_the_hybrid_rankings_note_says_the_weight_used_while_its_box_keeps_it_as_typed(client, typed, used):
    """The note says the number the search weighed by, as the API reads the parameter (was: the text typed, "caption
    weight 0.250"); the box keeps the text, to be edited as it was typed."""
    page = client.get("/", params={"q": "a bell rings", "rank": "hybrid", "hybrid_weight": typed})
    assert page.status_code == 200, page.text
    assert f'value="{typed}"' in box(page.text, "hybrid_weight")
    assert f"(caption weight {used})" in page.text and f"(caption weight {typed})" not in page.text


def test_a_ranking_the_librarys_model_cannot_do_is_a_400_in_the_apis_words(served, tiny_model_dir, monkeypatch):
    with client_for(served, tiny_model_dir) as client:

        def no_text_tower():  # a base_no_text_enc library: the core says so for the command line
            raise TextEmbedderError("--rank", "no text tower: use --rank caption")

        monkeypatch.setattr(client.app.state.service, "audio_embedder", no_text_tower)
        response = client.get("/api/search", params={"q": "a bell rings", "rank": "audio"})
        page = client.get("/", params={"q": "a bell rings", "rank": "audio"})
    assert page.status_code == 400 and "use rank=caption" in page.text  # the page's status is the API's
    assert response.status_code == 400 and set(response.json()) == {"detail"}
    assert response.json()["detail"].startswith("rank: audio: ") and "use rank=caption" in response.json()["detail"]
    assert "--" not in response.json()["detail"]


def test_other_errors_are_a_detail_line_alone(client, served):
    """Not found (404), too large (413), nothing to search (409): `detail` only, as every error but a 422."""
    assert set(client.get("/api/files/424242").json()) == {"detail"}
    assert set(client.get("/api/similar", params={"window_id": 999_999}).json()) == {"detail"}


def test_a_failure_of_the_servers_own_is_logged_wherever_it_is_answered(client, served, monkeypatch, caplog):
    """A 500 is the server's fault, not the request's: whoever runs the server reads it in the log, one line naming
    the request, whether the API answers it or a page shows it (the search page, the upload page)."""

    def broken(*_args):
        raise StoreError("index.db", "disk I/O error")

    service = client.app.state.service
    for name in ("search", "similar_to_window", "keep_upload"):
        monkeypatch.setattr(service, name, broken)
    clip = ("clip.wav", served.files["bell.wav"].read_bytes())
    caplog.set_level("ERROR", logger="pengi_search.serve")
    answers = [
        client.get("/api/search", params={"q": "a bell rings"}),
        client.get("/", params={"q": "a bell rings"}),
        client.get("/similar", params={"window_id": 1}),
        client.post("/upload/similar", files={"file": clip}),
    ]
    assert [answer.status_code for answer in answers] == [500, 500, 500, 500]
    assert '<form class="search"' in answers[1].text and '<form class="upload"' in answers[3].text
    assert [record.getMessage() for record in caplog.records] == [
        "GET /api/search failed: index.db: disk I/O error",
        "GET / failed: index.db: disk I/O error",
        "GET /similar failed: index.db: disk I/O error",
        "POST /upload/similar failed: index.db: disk I/O error",
    ]
    caplog.clear()
    assert client.get("/", params={"q": "a bell rings", "k": "many"}).status_code == 422
    assert caplog.records == []  # the request's own fault is the user's to read, on the page


def test_a_database_that_does_not_answer_is_a_503_said_once_in_the_log(served, tiny_model_dir, caplog):
    """Not the server's own failure (500) but one that passes: while the database cannot be reached (a server
    stopped, a share gone), every request that needs it is answered 503 with when to ask again, the pages say so,
    and the log says it once, not once per request; once the database answers again, so does the server."""
    db = Path(served.db)
    caplog.set_level("WARNING", logger="pengi_search.serve")
    with client_for(served, tiny_model_dir) as client:
        assert client.get("/api/search", params={"q": "a bell rings"}).status_code == 200
        client.app.state.service.library.store.engine.dispose()  # the next request connects anew
        db.rename(db.with_name("away.db"))
        db.mkdir()  # no database can be opened there: every connection fails
        try:
            answers = [
                client.get("/api/search", params={"q": "a bell rings"}),
                client.get("/api/files/1"),
                client.get("/api/stats"),
                client.get("/", params={"q": "a bell rings"}),
                client.get("/library"),
            ]
        finally:
            db.rmdir()
            db.with_name("away.db").rename(db)
        assert [answer.status_code for answer in answers] == [503] * 5
        assert {answer.headers["retry-after"] for answer in answers} == {"5"}
        assert "cannot reach the database: unable to open database file" in answers[0].json()["detail"]
        assert '<form class="search"' in answers[3].text and "cannot reach the database" in answers[3].text
        assert "Error 503" in answers[4].text and "does not answer. Try again in a moment" in answers[4].text
        assert [record.getMessage() for record in caplog.records] == [
            f"{served.db}: cannot reach the database: unable to open database file; answering 503 until it answers "
            "again"
        ]
        caplog.clear()
        assert client.get("/api/search", params={"q": "a bell rings"}).status_code == 200
        assert [record.getMessage() for record in caplog.records] == ["the database answers again"]


@pytest.mark.parametrize(
    ("method", "url", "files", "data", "field"),
    [
        ("POST", "/api/describe", [("file", "bell.wav"), ("file", "bell.wav")], None, "file"),
        ("POST", "/api/similar", [("file", "bell.wav"), ("file", "bell.wav")], None, "file"),
        ("POST", "/api/classify", [("file", "bell.wav")], {"labels": ["a bell\nrain", "dog\ncat"]}, "labels"),
        ("POST", "/api/classify", [("file", "bell.wav")], {**LABELS, "method": ["text", "loglik"]}, "method"),
        (
            "POST",
            "/api/classify",
            [("file", "bell.wav"), ("labels_file", "a.txt"), ("labels_file", "b.txt")],
            None,
            "labels_file",
        ),
        ("GET", SEARCH + "k=1&k=2", None, None, "k"),
        ("GET", "/api/search?q=rain&q=bell", None, None, "q"),
        ("POST", "/api/similar?k=1&k=2", [("file", "bell.wav")], None, "k"),
    ],
)
def test_a_parameter_sent_twice_is_refused_not_answered_with_the_last(client, served, method, url, files, data, field):
    parts = None
    if files is not None:
        content = {"bell.wav": served.files["bell.wav"].read_bytes(), "a.txt": b"a bell\nrain\n", "b.txt": b"dog\n"}
        parts = [(name, (sent, content[sent])) for name, sent in files]
    body = invalid(client.request(method, url, files=parts, data=data), field)
    assert body["detail"] == f"{field}: sent 2 times; send it once"


@pytest.mark.parametrize(
    ("url", "data", "field", "message"),
    [
        # POST /api/similar reads its filters from the query string, as GET /api/similar does
        ("/api/similar", {"k": "2"}, "k", "send it in the query string: this request does not read it from the form"),
        (
            "/api/similar",
            {"ext": "flac"},
            "ext",
            "send it in the query string: this request does not read it from the form",
        ),
        # POST /api/classify reads method and top from the form, beside the labels
        (
            "/api/classify?top=1",
            LABELS,
            "top",
            "send it in the form: this request does not read it from the query string",
        ),
        (
            "/api/describe?file=bell.wav",
            None,
            "file",
            "send it in the form: this request does not read it from the query string",
        ),
    ],
)
def test_a_parameter_sent_where_it_is_not_read_is_refused_not_ignored(client, served, url, data, field, message):
    """`requests.post(url, files=..., data={"k": 2})` put the filters in the form, where POST /api/similar does not
    look for them: it answered 10 unfiltered hits as if they had not been sent."""
    clip = served.files["bell.wav"].read_bytes()
    body = invalid(client.post(url, files=[("file", ("bell.wav", clip))], data=data), field)
    assert body["detail"] == f"{field}: {message}"


def test_a_parameter_the_request_does_not_take_anywhere_is_let_be(client, served):
    """Clients add their own (jQuery's cache-busting `_`): only a known parameter in the wrong place is refused."""
    clip = served.files["bell.wav"].read_bytes()
    assert client.post("/api/similar?k=1&_=123", files=[("file", ("bell.wav", clip))]).status_code == 200
    assert client.get(SEARCH + "k=1&_=123").status_code == 200


def test_pages_answer_invalid_parameters_with_an_html_page(client, served):
    clip = served.files["bell.wav"].read_bytes()
    page = client.post("/upload/describe", files=[("file", ("a.wav", clip)), ("file", ("b.wav", clip))])
    assert page.status_code == 422 and "<html" in page.text and "file: sent 2 times; send it once" in page.text
    not_an_id = client.get("/similar", params={"window_id": "first"})
    assert not_an_id.status_code == 422 and "<html" in not_an_id.text and "window_id: Input should be" in not_an_id.text


def test_an_empty_library_answers_with_what_to_do(tmp_path, tiny_model_dir):
    db = tmp_path / "index.db"
    Store.open(db).close()
    empty = CaptionLibrary(str(db), tmp_path, {})
    with client_for(empty, tiny_model_dir) as client:
        response = client.get("/api/search", params={"q": "a bell rings"})
        assert response.status_code == 409 and "pengi-search index" in response.json()["detail"]
        assert client.get("/api/stats").json()["files"]["total"] == 0
        page = client.get("/", params={"q": "a bell rings"})
        assert page.status_code == 409 and "pengi-search index" in page.text


def test_the_command_refuses_what_it_cannot_serve(tmp_path):
    missing = runner.invoke(app, ["serve", "--db", str(tmp_path / "none.db"), "--port", "0"])
    assert missing.exit_code == EXIT_FAILED and "no index here yet" in missing.output
    assert not (tmp_path / "none.db").exists()  # never created
    bad_root = runner.invoke(app, ["serve", "--root", str(tmp_path / "nowhere"), "--port", "0"])
    assert bad_root.exit_code == EXIT_USAGE and f"{tmp_path / 'nowhere'}: no such folder" in bad_root.output
    assert "--max-upload-mb" in runner.invoke(app, ["serve", "--help"]).output

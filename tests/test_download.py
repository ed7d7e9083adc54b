"""Downloads against a local HTTP server on 127.0.0.1 that serves byte ranges and misbehaves on request."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pengi_search.download import DownloadError, download, verify_download
from pengi_search.errors import UsageError
from pengi_search.models import fetch_release, fetch_tokenizer
from pengi_search.releases import RELEASES, TOKENIZERS

pytestmark = pytest.mark.usefixtures("no_internet")

PAYLOAD = random.Random(0).randbytes(300_000)
CHUNK = 1 << 16
FAST = {"chunk_size": CHUNK, "backoff": 0.0, "progress": False}


@dataclass
class ServerState:
    """What the handler serves and how it misbehaves; it records every request's headers."""

    payload: bytes = PAYLOAD
    etag: str = '"v1"'
    ranges: bool = True  # False: ignore Range headers and always answer 200 with the whole file
    cuts: list[int] = field(default_factory=list)  # per request, in order: close after this many body bytes
    stall: bool = False  # after a cut, hang (until teardown) instead of closing
    statuses: list[int] = field(default_factory=list)  # per request, in order: answer with this error status
    on_request: Callable[[], None] | None = None
    requests: list[Message] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ckpt.pth"


class RangeHandler(BaseHTTPRequestHandler):
    server: _StateServer

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append(self.headers)
        if state.on_request is not None:
            state.on_request()
        if state.statuses:
            self.send_error(state.statuses.pop(0))
            return
        if self.path != "/ckpt.pth":
            self.send_error(404)
            return
        body, start = state.payload, self._range_start()
        if start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", state.etag)
        self.end_headers()
        self._send(body[start:])

    def _range_start(self) -> int:
        state, value = self.server.state, self.headers.get("Range")
        if value is None or not state.ranges or self.headers.get("If-Range", state.etag) != state.etag:
            return 0
        return int(value.removeprefix("bytes=").rstrip("-"))

    def _send(self, data: bytes) -> None:
        state = self.server.state
        if not state.cuts:
            self.wfile.write(data)
            return
        self.wfile.write(data[: state.cuts.pop(0)])
        self.wfile.flush()
        if state.stall:
            state.released.wait(5)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass


class _StateServer(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@pytest.fixture
def server() -> Iterator[ServerState]:
    httpd = _StateServer(("127.0.0.1", 0), RangeHandler)
    httpd.state = ServerState(port=httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd.state
    httpd.state.released.set()
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _assert_complete(dest: Path, data: bytes) -> None:
    assert dest.read_bytes() == data
    assert not _part(dest).exists()
    assert not dest.with_name(dest.name + ".part.json").exists()


def test_full_download_equals_source_and_records_sidecar(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "base.pth"
    result = download(server.url, dest, expected_sha256=_sha(PAYLOAD).upper(), **FAST)
    assert (result.path, result.size, result.sha256) == (dest, len(PAYLOAD), _sha(PAYLOAD))
    _assert_complete(dest, PAYLOAD)
    record = json.loads((tmp_path / "models" / "base.pth.json").read_text())
    assert record["url"] == server.url
    assert (record["size"], record["sha256"]) == (len(PAYLOAD), _sha(PAYLOAD))
    datetime.fromisoformat(record["completed_at"])
    assert [r.get("Range") for r in server.requests] == [None]


def test_dropped_connection_is_resumed_with_range(server: ServerState, tmp_path: Path) -> None:
    server.cuts = [100_000]
    dest = tmp_path / "base.pth"
    result = download(server.url, dest, **FAST)
    _assert_complete(dest, PAYLOAD)
    assert result.sha256 == _sha(PAYLOAD)
    assert [r.get("Range") for r in server.requests] == [None, "bytes=100000-"]
    assert server.requests[1].get("If-Range") == server.etag


def test_interrupted_call_leaves_part_that_the_next_call_resumes(server: ServerState, tmp_path: Path) -> None:
    server.cuts = [120_000]
    dest = tmp_path / "base.pth"
    with pytest.raises(DownloadError, match="closed after 120000 of 300000 bytes.*run again to resume"):
        download(server.url, dest, retries=0, **FAST)
    assert not dest.exists()
    assert _part(dest).read_bytes() == PAYLOAD[:120_000]
    result = download(server.url, dest, **FAST)
    _assert_complete(dest, PAYLOAD)
    assert result.sha256 == _sha(PAYLOAD)
    assert server.requests[-1].get("Range") == "bytes=120000-"


def test_timeout_is_retried_and_resumed(server: ServerState, tmp_path: Path) -> None:
    server.cuts, server.stall = [50_000], True
    dest = tmp_path / "base.pth"
    download(server.url, dest, timeout=1.0, **FAST)  # far below the stall (5 s), above a loaded machine's replies
    _assert_complete(dest, PAYLOAD)
    assert [r.get("Range") for r in server.requests] == [None, "bytes=50000-"]


def test_server_without_range_support_restarts_from_zero(server: ServerState, tmp_path: Path) -> None:
    server.ranges, server.cuts = False, [100_000]
    dest = tmp_path / "base.pth"
    result = download(server.url, dest, **FAST)
    _assert_complete(dest, PAYLOAD)  # not the first 100 kB followed by the whole file again
    assert result.size == len(PAYLOAD)
    assert server.requests[1].get("Range") == "bytes=100000-"


def test_changed_source_is_fetched_whole_instead_of_spliced(server: ServerState, tmp_path: Path) -> None:
    server.cuts = [100_000]
    dest = tmp_path / "base.pth"
    with pytest.raises(DownloadError):
        download(server.url, dest, retries=0, **FAST)
    server.payload, server.etag = PAYLOAD[::-1], '"v2"'
    result = download(server.url, dest, **FAST)
    _assert_complete(dest, PAYLOAD[::-1])
    assert result.sha256 == _sha(PAYLOAD[::-1])
    assert server.requests[-1].get("If-Range") == '"v1"'


def test_part_of_unknown_origin_is_not_resumed(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "base.pth"
    _part(dest).write_bytes(b"stale bytes from elsewhere")
    download(server.url, dest, **FAST)
    _assert_complete(dest, PAYLOAD)
    assert [r.get("Range") for r in server.requests] == [None]


def test_part_as_long_as_the_file_is_refetched(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "base.pth"
    server.cuts = [100_000]
    with pytest.raises(DownloadError):
        download(server.url, dest, retries=0, **FAST)
    _part(dest).write_bytes(b"\0" * (len(PAYLOAD) + 10))  # corrupt, and longer than the file: 416
    download(server.url, dest, **FAST)
    _assert_complete(dest, PAYLOAD)


def test_checksum_mismatch_raises_and_leaves_nothing(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "base.pth"
    with pytest.raises(DownloadError, match="sha256 mismatch") as caught:
        download(server.url, dest, expected_sha256="0" * 64, **FAST)
    assert _sha(PAYLOAD) in str(caught.value)
    assert caught.value.dest == dest
    assert list(tmp_path.iterdir()) == []


def test_http_404_raises_once_without_retrying(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "base.pth"
    with pytest.raises(DownloadError, match="HTTP 404") as caught:
        download(server.url.replace("ckpt", "missing"), dest, **FAST)
    assert "\n" not in str(caught.value)
    assert len(server.requests) == 1
    assert not dest.exists()


def test_a_release_that_cannot_be_reached_says_how_to_install_a_copy_downloaded_elsewhere(
    server: ServerState, tmp_path: Path, monkeypatch
) -> None:
    how = "download it elsewhere, then `pengi-search model fetch base --url FILE` installs that file"
    options = {"tokenizer_sources": {}, "progress": False}
    missing = server.url.replace("ckpt", "missing")
    with pytest.raises(DownloadError, match="HTTP 404") as caught:
        fetch_release("base", tmp_path / "dl", checkpoint_url=missing, **options)
    assert str(caught.value).endswith(f"HTTP 404 Not Found; {how}")
    monkeypatch.setenv("PENGI_SEARCH_OFFLINE", "1")
    with pytest.raises(DownloadError) as caught:
        fetch_release("base", tmp_path / "dl", **options)
    assert str(caught.value).endswith(f"PENGI_SEARCH_OFFLINE=1 forbids network access; {how}")
    with pytest.raises(UsageError) as caught:  # a local file that is not there: a typo, no download would help
        fetch_release("base", tmp_path / "dl", checkpoint_url=str(tmp_path / "nothing.pth"), **options)
    assert str(caught.value) == f"{tmp_path / 'nothing.pth'}: no such file"


def test_transient_http_status_is_retried(server: ServerState, tmp_path: Path) -> None:
    server.statuses = [503, 502]
    dest = tmp_path / "base.pth"
    download(server.url, dest, **FAST)
    _assert_complete(dest, PAYLOAD)
    assert len(server.requests) == 3


def test_connection_refused_gives_up_after_retries(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="network error.*gave up after 3 failed attempts"):
        download(f"http://127.0.0.1:{port}/ckpt.pth", tmp_path / "base.pth", retries=2, **FAST)


def test_a_name_lookup_that_never_answers_is_bounded_as_the_other_waits_are(tmp_path: Path, monkeypatch) -> None:
    """A socket's timeout bounds connecting and each read, not the name lookup before them (the C library's): a
    resolver that never answers held `model fetch` for ever. The lookup counts against the same timeout, and its
    failure is a network error, retried and then said (the hub's check is bounded the same way)."""
    released = threading.Event()

    def never_answers(*_args: object, **_kwargs: object) -> list:
        released.wait(3)  # the test's own bound; left to itself, a lookup may wait for minutes
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", never_answers)
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError) as caught:
            download(RELEASES["base"].url, tmp_path / "base.pth", timeout=0.2, retries=1, **FAST)
    finally:
        released.set()
    assert time.monotonic() - started < 2
    assert caught.value.reason == (
        "network error: no answer within 0.2 s (name lookup, connection or reply) "
        "(gave up after 2 failed attempts; run again to resume)"
    )
    assert caught.value.unreachable


def test_dest_never_holds_a_partial_file(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "base.pth"
    seen: list[tuple[bool, int | None]] = []
    server.cuts = [70_000, 90_000]
    part = _part(dest)
    server.on_request = lambda: seen.append((dest.exists(), part.stat().st_size if part.exists() else None))
    download(server.url, dest, **FAST)
    _assert_complete(dest, PAYLOAD)
    assert seen == [(False, None), (False, 70_000), (False, 160_000)]


@pytest.mark.skipif(sys.platform == "win32", reason="uses RLIMIT_FSIZE")
def test_write_error_is_reported_and_the_part_kept(server: ServerState, tmp_path: Path) -> None:
    import resource
    import signal

    dest = tmp_path / "base.pth"
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, limits[1]))
        with pytest.raises(DownloadError, match="cannot write .*base.pth.part: file too large"):
            download(server.url, dest, **FAST)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert not dest.exists()
    assert _part(dest).read_bytes() == PAYLOAD[:150_000]
    download(server.url, dest, **FAST)
    _assert_complete(dest, PAYLOAD)
    assert server.requests[-1].get("Range") == "bytes=150000-"


def test_a_record_that_does_not_fit_fails_the_download_in_one_line_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, dest = tmp_path / "source.pth", tmp_path / "models" / "base.pth"
    source.write_bytes(PAYLOAD)
    write_text = Path.write_text

    def full_at_the_record(path: Path, text: str, *args: Any, **kwargs: Any) -> int:
        if "base.pth.json" not in path.name:  # the record of the part (`base.pth.part.json`) still fits
            return write_text(path, text, *args, **kwargs)
        write_text(path, text[:10], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_at_the_record)
    with pytest.raises(DownloadError) as failed:
        download(str(source), dest, **FAST)
    assert str(failed.value) == (
        f"cannot fetch {source} to {dest}: {dest}.json: cannot write (no space left on device)"
    )
    assert sorted(path.name for path in dest.parent.iterdir()) == ["base.pth"]


@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "local-path"])
def test_local_sources_are_copied(tmp_path: Path, as_url: bool) -> None:
    source = tmp_path / "source dir" / "base.pth"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "models" / "base.pth"
    result = download(source.as_uri() if as_url else str(source), dest, **FAST)
    _assert_complete(dest, PAYLOAD)
    assert result.sha256 == _sha(PAYLOAD)
    assert json.loads(dest.with_name("base.pth.json").read_text())["url"] == source.as_uri()


def test_a_local_source_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--url=~/base.pth` (no shell expands it there) or `--url '~/base.pth'`: a folder named `~`, as for every path."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~").mkdir()
    (tmp_path / "~" / "base.pth").write_bytes(PAYLOAD)
    download("~/base.pth", tmp_path / "models" / "base.pth", **FAST)
    _assert_complete(tmp_path / "models" / "base.pth", PAYLOAD)


def test_missing_local_source_and_unknown_scheme_raise(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="nothing.pth: no such file"):
        download(str(tmp_path / "nothing.pth"), tmp_path / "base.pth", **FAST)
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        download("ftp://example.org/base.pth", tmp_path / "base.pth", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_progress_is_silent_off_a_terminal(server: ServerState, tmp_path: Path, capfd) -> None:
    download(server.url, tmp_path / "base.pth", chunk_size=CHUNK)
    assert capfd.readouterr() == ("", "")


def test_progress_bar_is_drawn_on_a_terminal(server: ServerState, tmp_path: Path, monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    download(server.url, tmp_path / "base.pth", chunk_size=CHUNK)
    assert "base.pth" in terminal.getvalue()
    assert "300.0/300.0 kB" in terminal.getvalue()


def test_verify_download_checks_size_and_digest(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "base.pth"
    assert verify_download(dest) is None
    result = download(server.url, dest, **FAST)
    assert verify_download(dest) == result
    dest.write_bytes(PAYLOAD[:-1] + b"\0")  # same size, other bytes
    assert verify_download(dest) is None


def _local_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "dog": 2, "barks": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(folder)
    return folder


def test_fetch_tokenizer_saves_a_loadable_copy(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    source = _local_tokenizer(tmp_path / "hub" / "tok")
    saved = fetch_tokenizer(str(source), tmp_path / "out" / "gpt2")
    assert (saved / "tokenizer_config.json").is_file()
    assert AutoTokenizer.from_pretrained(saved)("a dog barks")["input_ids"] == [1, 2, 3]
    assert not (tmp_path / "out" / "gpt2.part").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DownloadError, match="cannot fetch tokenizer"):
        fetch_tokenizer(str(tmp_path / "empty"), tmp_path / "out" / "clip")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpt2"]


def test_fetch_release_lays_out_files_and_keeps_them(server: ServerState, tmp_path: Path) -> None:
    tokenizer = _local_tokenizer(tmp_path / "tok")
    models_dir = tmp_path / "models"
    options = {"checkpoint_url": server.url, "tokenizer_sources": {"gpt2": str(tokenizer)}, "progress": False}
    fetched = fetch_release("base_no_text_enc", models_dir, **options)
    assert fetched.checkpoint.path == models_dir / "base_no_text_enc.pth"
    assert fetched.checkpoint.sha256 == _sha(PAYLOAD)
    assert fetched.tokenizers == {"gpt2": models_dir / "tokenizers" / "gpt2"}
    assert (models_dir / "tokenizers" / "gpt2" / "tokenizer.json").is_file()
    assert fetch_release("base_no_text_enc", models_dir, **options) == fetched
    assert len(server.requests) == 1  # the intact checkpoint was kept
    fetch_release("base_no_text_enc", models_dir, force=True, **options)
    assert len(server.requests) == 2
    with pytest.raises(DownloadError, match="unknown release; known: base, base_no_text_enc"):
        fetch_release("large", models_dir, **options)


def test_release_table_points_at_the_zenodo_record() -> None:
    assert set(RELEASES) == {"base", "base_no_text_enc"}
    for name, release in RELEASES.items():
        assert release.filename == f"{name}.pth"
        assert release.url == f"https://zenodo.org/records/8387083/files/{name}.pth?download=1"
        assert set(release.tokenizers) <= set(TOKENIZERS)
    assert TOKENIZERS == {"gpt2": "gpt2", "clip": "openai/clip-vit-base-patch16"}


def test_a_changed_url_starts_a_new_download(server: ServerState, tmp_path: Path) -> None:
    tokenizer = _local_tokenizer(tmp_path / "tok")
    mirror = tmp_path / "mirror" / "base_no_text_enc.pth"
    mirror.parent.mkdir()
    mirror.write_bytes(PAYLOAD[::-1])
    notices: list[str] = []
    options = {"tokenizer_sources": {"gpt2": str(tokenizer)}, "progress": False, "notify": notices.append}
    fetch_release("base_no_text_enc", tmp_path / "dl", checkpoint_url=server.url, **options)
    fetched = fetch_release("base_no_text_enc", tmp_path / "dl", checkpoint_url=str(mirror), **options)
    assert fetched.checkpoint.sha256 == _sha(PAYLOAD[::-1])  # not the file the first URL gave
    record = json.loads((tmp_path / "dl" / "base_no_text_enc.pth.json").read_text())
    assert record["url"] == mirror.as_uri()
    assert notices == [f"{fetched.checkpoint.path} was downloaded from {server.url}; fetching {mirror} instead"]
    again = fetch_release("base_no_text_enc", tmp_path / "dl", checkpoint_url=server.url, **options)
    assert again.checkpoint.sha256 == _sha(PAYLOAD) and len(server.requests) == 2


@pytest.mark.parametrize("damage", ["bytes", "record"])
def test_a_download_failing_validation_is_moved_aside(server: ServerState, tmp_path: Path, damage: str) -> None:
    tokenizer = _local_tokenizer(tmp_path / "tok")
    notices: list[str] = []
    options = {"checkpoint_url": server.url, "tokenizer_sources": {"gpt2": str(tokenizer)}, "progress": False}
    dest = fetch_release("base_no_text_enc", tmp_path / "dl", **options).checkpoint.path
    damaged = PAYLOAD[:-1] + b"\0"
    if damage == "bytes":
        dest.write_bytes(damaged)  # same size, other bytes: only the sha256 tells
    else:
        dest.write_bytes(damaged)
        dest.with_name(dest.name + ".json").unlink()  # a file nobody recorded is not trusted either
    fetched = fetch_release("base_no_text_enc", tmp_path / "dl", notify=notices.append, **options)
    aside = tmp_path / "dl" / "base_no_text_enc.pth.invalid"
    assert fetched.checkpoint.sha256 == _sha(PAYLOAD) and dest.read_bytes() == PAYLOAD
    assert aside.read_bytes() == damaged
    assert len(server.requests) == 2
    assert len(notices) == 1 and "failed validation" in notices[0]
    assert "moved aside to base_no_text_enc.pth.invalid; downloading it again" in notices[0]
    assert aside.with_name(aside.name + ".json").exists() == (damage == "bytes")  # its record goes with it


def test_force_starts_over_without_resuming(server: ServerState, tmp_path: Path) -> None:
    tokenizer = _local_tokenizer(tmp_path / "tok")
    dest = tmp_path / "dl" / "base_no_text_enc.pth"
    server.cuts = [100_000]
    with pytest.raises(DownloadError):
        download(server.url, dest, retries=0, **FAST)
    assert _part(dest).stat().st_size == 100_000
    options = {"checkpoint_url": server.url, "tokenizer_sources": {"gpt2": str(tokenizer)}, "progress": False}
    fetched = fetch_release("base_no_text_enc", tmp_path / "dl", force=True, **options)
    assert fetched.checkpoint.sha256 == _sha(PAYLOAD)
    assert server.requests[-1].get("Range") is None  # the partial download was discarded, not resumed
    _assert_complete(dest, PAYLOAD)


@pytest.mark.parametrize("variable", ["PENGI_SEARCH_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_refuses_the_network_but_not_local_files(
    server: ServerState, tmp_path: Path, monkeypatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(DownloadError, match=f"{variable}=1 forbids network access"):
        download(server.url, tmp_path / "a" / "base.pth", **FAST)
    assert server.requests == [] and not (tmp_path / "a").exists()
    source = tmp_path / "base.pth"
    source.write_bytes(PAYLOAD)
    download(str(source), tmp_path / "b" / "base.pth", **FAST)
    _assert_complete(tmp_path / "b" / "base.pth", PAYLOAD)
    with pytest.raises(
        DownloadError, match=rf"not in the Hugging Face cache \(.+\) and {variable}=1 forbids downloading"
    ):
        fetch_tokenizer("some-org/some-tokenizer", tmp_path / "tokenizers" / "gpt2")
    saved = fetch_tokenizer(str(_local_tokenizer(tmp_path / "tok")), tmp_path / "tokenizers" / "gpt2")
    assert (saved / "tokenizer_config.json").is_file()

"""A Hugging Face hub on 127.0.0.1, and the two ways a hub that cannot be reached behaves, for the tests.

`FakeHub` serves model folders the way huggingface_hub and sentence-transformers ask for them (the model's API page,
then each file by HEAD and GET under `/resolve/`) and records every request; a name it does not serve is a 404 as
the hub words it. `silent_hub` is a port that takes connections and never says a word (a proxy that hangs, a
firewall that lets the handshake through); `refusing_hub` a port where nothing listens.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # every served model's one revision

_API = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/[^/]+)?")
_FILE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/[^/]+/(?:\./)?(?P<file>.+)")


class FakeHub:
    """`with FakeHub({"someone/mini": folder}) as hub:` serves `folder` as the model someone/mini at `hub.url`;
    `hub.requests` lists each request as "GET /path". `status`: answer every request with it instead (a hub, or a
    proxy in front of it, that is down); `pinned=False`: leave the commit out of the model's API page, as some
    mirrors do (huggingface_hub then cannot pin one revision, and sentence-transformers warns that it loads without).
    """

    def __init__(
        self, models: Mapping[str, Path] | None = None, *, status: int | None = None, pinned: bool = True
    ) -> None:
        self.files = {
            repo: {path.relative_to(root).as_posix(): path for path in Path(root).rglob("*") if path.is_file()}
            for repo, root in (models or {}).items()
        }
        self.status = status
        self.pinned = pinned
        self.requests: list[str] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for one request, as the hub gives them."""
        self.requests.append(f"{method} {path}")
        path = path.partition("?")[0]
        if self.status is not None:
            return self.status, {}, b""
        if match := _API.fullmatch(path):
            files = self.files.get(match["repo"])
            if files is None:
                return 404, {"X-Error-Code": "RepoNotFound"}, b"{}"
            page = {"id": match["repo"], "sha": COMMIT if self.pinned else None}
            page["siblings"] = [{"rfilename": name} for name in files]
            return 200, {"Content-Type": "application/json"}, json.dumps(page).encode()
        if match := _FILE.fullmatch(path):
            files = self.files.get(match["repo"])
            if files is None:
                return 404, {"X-Error-Code": "RepoNotFound"}, b""
            if match["file"] not in files:  # sentence-transformers asks for many optional files
                return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b""
            data = files[match["file"]].read_bytes()
            return 200, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, data
        return 404, {"X-Error-Code": "EntryNotFound"}, b"{}"  # a folder listing (/tree/): none

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                status, headers, body = hub.answer(self.command, self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@contextlib.contextmanager
def silent_hub() -> Iterator[str]:
    """The URL of a port that accepts connections (the kernel completes them for the backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def refusing_hub() -> Iterator[str]:
    """The URL of a port where nothing listens: held bound, so that no one else takes it meanwhile, and refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"

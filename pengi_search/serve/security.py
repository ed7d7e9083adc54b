"""Who may ask, and which files may be served.

The token rule: a server bound to a loopback address answers anyone on this machine (and only requests whose Host
header names the loopback, which stops DNS-rebinding pages); bound to any other address it requires a token, given
with `--token` or generated and printed at start. The token travels as `Authorization: Bearer TOKEN`, an
`X-Pengi-Token` header or the `pengi_token` cookie; a browser gets the cookie by opening the printed URL once
(`/?token=TOKEN` sets it and redirects to the same page without it). Every other request gets 401.

Audio is served only for indexed files, looked up by id, never by a path from the request. The file's real path
(links resolved) must lie inside one of the server's roots (`--root`; by default the folder that held the file
when it was indexed, so a file that is, or became, a link out of its folder is refused), and it must still be the file
that was indexed (same size and modification time).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.exceptions import HTTPException

from ..db import FileRecord
from ..errors import os_reason
from ..scan import stamp_of
from .errors import RequestError

TOKEN_HEADER = "x-pengi-token"
TOKEN_COOKIE = "pengi_token"
TOKEN_QUERY = "token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UNAUTHORIZED = "a token is required: send 'Authorization: Bearer TOKEN', or open the address printed at start"

# Everything the pages need comes from this server; nothing inline, nothing from elsewhere (but for data: images, and
# the silent stand-in source of a player that failed, which asks the server nothing: see player.js).
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address to bind) reaches this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def required_token(host: str, token: str | None) -> str | None:
    """The token the server will require: the given one, a new random one beyond loopback, else none."""
    if token:
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)


class SecurityMiddleware:
    """Host check, token check, body size limit and security headers for every HTTP request (pure ASGI)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_hosts: tuple[str, ...] | None,
        max_body: int,
        too_large: str | None = None,
        error_page: Callable[[int, str], bytes] | None = None,
    ) -> None:
        """`too_large` says why a body past `max_body` is refused (in the user's units); `error_page` renders a
        refusal as an HTML page, for the requests of pages (an upload form) rather than of the JSON API."""
        self.app = app
        self.token = token
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.max_body = max_body
        self.too_large = too_large or f"the request body is larger than {max_body} bytes"
        self.error_page = error_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        if self.allowed_hosts is not None and _host_name(headers.get("host", "")) not in self.allowed_hosts:
            await _plain(send_with_headers, 400, "this server answers only requests addressed to the loopback")
            return
        if self.token is not None and not self._carries_token(headers):
            if self._token_in_query(scope):
                await _redirect_with_cookie(send_with_headers, scope, self.token)
            else:
                await _plain(send_with_headers, 401, UNAUTHORIZED)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            if self.error_page is not None and not scope["path"].startswith("/api/"):
                await _page(send_with_headers, 413, self.error_page(413, self.too_large))
            else:
                await _plain(send_with_headers, 413, self.too_large)
            return
        await self.app(scope, _limited(receive, self.max_body, self.too_large), send_with_headers)

    def _carries_token(self, headers: dict[str, str]) -> bool:
        offered = []
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip())
        offered.append(headers.get(TOKEN_HEADER, ""))
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header carries no token
            cookie = SimpleCookie()
        if TOKEN_COOKIE in cookie:
            offered.append(cookie[TOKEN_COOKIE].value)
        return any(self._matches(candidate) for candidate in offered)

    def _matches(self, candidate: str) -> bool:
        assert self.token is not None
        return bool(candidate) and secrets.compare_digest(candidate.encode(), self.token.encode())

    def _token_in_query(self, scope: Scope) -> bool:
        if scope["method"] != "GET":
            return False
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        return self._matches(query.get(TOKEN_QUERY, ""))


def _host_name(host: str) -> str:
    """The name of a Host header without its port ("[::1]:8765" -> "::1")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def _plain(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _page(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _redirect_with_cookie(send: Send, scope: Scope, token: str) -> None:
    """Set the token cookie and send the browser to the same page without the token in its address."""
    query = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if k != TOKEN_QUERY]
    location = scope["path"] + (f"?{urlencode(query)}" if query else "")
    cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    headers = [(b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1"))]
    await send({"type": "http.response.start", "status": 303, "headers": [*headers, (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


class BodyTooLargeError(HTTPException):
    """A request body (without a Content-Length that said so) grew past the limit: 413, as with one. (An
    HTTPException: FastAPI lets it through when it reads a form, where any other error becomes a 400 "There was an
    error parsing the body".)"""

    def __init__(self, detail: str) -> None:
        super().__init__(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, detail)


def _limited(receive: Receive, limit: int, too_large: str) -> Receive:
    received = 0

    async def counting() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLargeError(too_large)
        return message

    return counting


# ---------------------------------------------------------------------------------------------------------------
# Files


def servable_path(record: FileRecord, roots: tuple[Path, ...]) -> Path:
    """The real path of an indexed file that may be served (see the module docstring), or a RequestError."""
    where = f"file {record.id}"
    if record.status != "indexed":
        raise RequestError(where, f"not indexed ({record.status}): it has no audio to serve", HTTPStatus.NOT_FOUND)
    try:
        real = Path(record.path).resolve(strict=True)
        info = os.stat(real)
    except OSError as exc:
        raise RequestError(where, f"no longer readable on disk ({os_reason(exc)})", HTTPStatus.NOT_FOUND) from None
    allowed = [_real_folder(root) for root in roots] if roots else [_real_folder(Path(record.path).parent)]
    if not any(folder is not None and real.is_relative_to(folder) for folder in allowed):
        raise RequestError(
            where, "its real path is outside the folders this server serves (see --root)", HTTPStatus.FORBIDDEN
        )
    if not stat.S_ISREG(info.st_mode):
        raise RequestError(where, "not a regular file", HTTPStatus.FORBIDDEN)
    if stamp_of(info) != (record.size, record.mtime):
        raise RequestError(where, "the file changed on disk since it was indexed; index it again", HTTPStatus.CONFLICT)
    return real


def _real_folder(folder: Path) -> Path | None:
    try:
        return folder.resolve(strict=True)
    except OSError:
        return None

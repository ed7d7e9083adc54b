"""Answers a browser need not download again, and Range headers HTTP lets a server ignore.

The media routes' answers carry an ETag (the file's audio as sent, its window cut as WAV, its spectrogram, a window's
waveform peaks) and `Cache-Control: no-cache`: browsers keep them but ask each time, since the file may change on disk
(it is then refused, 409), and a request whose `If-None-Match` names the current tag gets 304 without a body, before
anything is decoded or drawn. Audio is named (`Content-Disposition`) as the file it comes from, so that a player's
"Download" saves it under that name. A `Range` header of a unit other than bytes is ignored, as RFC 9110 (14.2)
requires: the whole body, 200, where Starlette answers 400. The pages' scripts and style are asked about each time too
(`StaticAssets`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from ..pathnames import shown

CACHE_CONTROL = "no-cache"  # keep it, but ask whether it is still current before using it
# A module script runs only if it is sent with a JavaScript type (HTML's rule); Python's type table comes from the
# system's (on Windows, the registry's, which may say text/plain for .js), so the pages' scripts say it themselves.
SCRIPT_TYPE = "text/javascript; charset=utf-8"
_NOT_QUOTABLE = re.compile(r'[^\x20-\x7e]|["\\]')  # what a quoted-string's plain ASCII name cannot hold


@dataclass(frozen=True)
class Made:
    """Something made from an indexed file on request: its ETag, known before it is made, and how to make it."""

    tag: str
    make: Callable[[], bytes]
    name: str | None = None  # the name a browser saves it under (`content_disposition`)


def entity_tag(*parts: object) -> str:
    """A strong ETag for what `parts` determine (a file's id, size and modification time; what is made of it)."""
    return '"' + hashlib.sha256(repr(parts).encode()).hexdigest()[:32] + '"'


def names_tag(headers: Headers, tag: str) -> bool:
    """Whether the request's `If-None-Match` names `tag` (or is `*`), compared weakly as RFC 9110 (13.1.2) asks."""
    value = headers.get("if-none-match")
    if value is None:
        return False
    candidates = [candidate.strip().removeprefix("W/") for candidate in value.split(",")]
    return "*" in candidates or tag.removeprefix("W/") in candidates


def content_disposition(name: str) -> str:
    """`inline` (played in the page), under `name` when saved: a player's "Download" otherwise names every file
    after the address's last part, `audio`. RFC 6266: a plain ASCII name for old clients, and the name itself as
    UTF-8 (RFC 8187), as `pathnames.shown` writes it (a byte that is not UTF-8 as `\\xNN`, no control character)."""
    readable = shown(name)
    plain = _NOT_QUOTABLE.sub("_", readable)
    return f"inline; filename=\"{plain}\"; filename*=UTF-8''{quote(readable, safe='')}"


def _named(headers: dict[str, str], name: str | None) -> dict[str, str]:
    return headers if name is None else {**headers, "Content-Disposition": content_disposition(name)}


def not_modified(tag: str) -> Response:
    return Response(status_code=304, headers={"ETag": tag, "Cache-Control": CACHE_CONTROL})


def made_response(headers: Headers, made: Made, media_type: str) -> Response:
    """304 when the client holds `made` already, else `made` made now."""
    if names_tag(headers, made.tag):
        return not_modified(made.tag)
    sent = _named({"ETag": made.tag, "Cache-Control": CACHE_CONTROL}, made.name)
    return Response(made.make(), media_type=media_type, headers=sent)


@dataclass(frozen=True)
class AudioFile:
    """A file to send as it is: where it is, its MIME type, the name a browser saves it under, and what to call once
    it is sent or will not be (a transcode, which its cache keeps on disk until then; an answer never run lets go
    of it as it is collected: `media.Transcode`)."""

    path: Path
    media_type: str
    name: str | None = None
    sent: Callable[[], None] = lambda: None  # a file of the user's: nothing to let go of


def file_response(headers: Headers, audio: AudioFile) -> Response:
    """The file (saved as its name), or 304 when the client holds it already; `audio.sent` is called once the
    answer is sent, or at once when it is not to be."""
    try:
        cache = _named({"Cache-Control": CACHE_CONTROL}, audio.name)
        stat = os.stat(audio.path)
        response = AudioFileResponse(
            audio.path, media_type=audio.media_type, stat_result=stat, headers=cache, sent=audio.sent
        )
        tag = response.headers["etag"]  # Starlette's, of the file's size and modification time
    except BaseException:
        audio.sent()
        raise
    if names_tag(headers, tag):
        audio.sent()
        return not_modified(tag)
    return response


class AudioFileResponse(FileResponse):
    """A file sent as Starlette sends one (its ETag from the file's size and time, Range requests of bytes), but a
    `Range` of another unit is ignored rather than refused; `sent` is called once it is sent (or the client left)."""

    def __init__(self, *args: Any, sent: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(_byte_ranges_only(scope), receive, send)
        finally:
            self.sent()


def _byte_ranges_only(scope: Scope) -> Scope:
    """`scope` without its `Range` header when that names a unit other than bytes (`items=0-1`)."""
    headers = scope["headers"]
    kept = [
        (name, value)
        for name, value in headers
        if name.lower() != b"range" or value.partition(b"=")[0].strip().lower() == b"bytes"
    ]
    return scope if len(kept) == len(headers) else {**scope, "headers": kept}


class StaticAssets(StaticFiles):
    """The pages' script modules, style and icon, with `Cache-Control: no-cache`: the browser asks each time whether
    its copy is current (304 while it is). Without it, a browser may keep using an old module for days after
    pengi-search is upgraded (heuristic freshness, a tenth of the file's age when fetched), beside new pages and
    modules it does not fit. A script is sent as JavaScript whatever the platform's type table says
    (`SCRIPT_TYPE`)."""

    def file_response(self, full_path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(full_path, *args, **kwargs)
        response.headers["Cache-Control"] = CACHE_CONTROL
        if response.status_code != 304 and Path(full_path).suffix == ".js":
            response.headers["Content-Type"] = SCRIPT_TYPE
        return response

"""Resumable, verified, atomic downloads of one file: the engine under `model fetch` (`models.fetch_release`).

`download` moves one file over HTTP(S) with the standard library, or copies it from a `file://` URL or a
local path. Bytes go to `<dest>.part` (with `<dest>.part.json` naming their source, so that a later call
resumes only the same file), the sha256 is computed as they arrive, and the finished file is fsynced and
renamed onto `dest`, so `dest` is either absent or complete. `<dest>.json` then records source, size, sha256,
which `verify_download` and `other_source` read back to decide whether a finished file may be reused; one that may
not is moved aside (`set_aside`, to `<dest>.invalid`) or forgotten (`discard_download`). Offline mode
(`hub.offline_setting`) forbids every network access here: local sources still work.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from pengi_search import __version__
from pengi_search.consoles import is_watched, make_console
from pengi_search.errors import PengiSearchError, UsageError, os_reason, read_reason, refuse_unusable_file
from pengi_search.hashing import file_sha256, sha256_hasher
from pengi_search.hub import offline_setting
from pengi_search.units import count_text
from pengi_search.waits import within
from pengi_search.written_aside import WriteError, fsync_folder, written_aside

INVALID_SUFFIX = ".invalid"  # a download that failed validation is moved aside to <dest>.invalid
_RETRIED_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class DownloadError(PengiSearchError):
    """A download or tokenizer fetch failed; the message is one line naming source, destination and reason.
    `unreachable`: the source could not be reached from here (offline mode, the network, the server), so a copy
    downloaded elsewhere would do."""

    def __init__(self, source: str, dest: Path | None, reason: str, *, unreachable: bool = False) -> None:
        target = f" to {dest}" if dest is not None else ""
        super().__init__(f"cannot fetch {source}{target}", reason)
        self.source, self.dest, self.unreachable = source, dest, unreachable


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str


class _Failure(Exception):
    """Internal: why an attempt failed, whether trying again (resuming) may help, and whether it failed to reach the
    source (see `DownloadError.unreachable`) rather than to read or write a file here."""

    def __init__(self, reason: str, *, retry: bool, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.retry, self.unreachable = reason, retry, unreachable


@dataclass
class _Opened:
    """A source stream positioned at `start` (0 when it could not resume), of `total` bytes if known."""

    stream: io.BufferedIOBase
    start: int
    total: int | None
    validator: str | None  # identifies this version of the source; a resume must present the same one


def download(
    url: str,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 30,
    retries: int = 4,
    backoff: float = 1.0,
) -> DownloadResult:
    """Fetch `url` (http, https, file URL or local path) to `dest`, resuming a `.part` an earlier call left.

    Connection errors, timeouts and transient HTTP statuses are retried up to `retries` times in a row (an
    attempt that made progress starts a new count), waiting `backoff` seconds, doubled after each failure.
    """
    dest = Path(dest)
    try:
        source, local = _resolve(url)
        if local is None and (setting := offline_setting()):
            raise _Failure(f"{setting} forbids network access", retry=False, unreachable=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = _Part(_part_path(dest), source)
        with _progress_bar(progress) as bar:
            task = bar.add_task(dest.name, total=None)
            _fetch(part, partial(_open, local, source, timeout), chunk_size, retries, backoff, bar, task)
        digest = part.hasher.hexdigest()
        if expected_sha256 is not None and digest != expected_sha256.lower():
            part.discard()
            raise _Failure(f"sha256 mismatch: expected {expected_sha256.lower()}, got {digest}", retry=False)
        result = _publish(part, dest)
    except _Failure as exc:
        raise DownloadError(url, dest, exc.reason, unreachable=exc.unreachable) from exc
    except WriteError as exc:  # a record that did not fit: named, with what the system said
        raise DownloadError(url, dest, str(exc)) from exc
    except OSError as exc:
        raise DownloadError(url, dest, f"{os_reason(exc)} ({exc.filename or dest})") from exc
    return result


def verify_download(dest: Path) -> DownloadResult | None:
    """The result recorded for `dest`, if the file is there and still has the size and sha256 recorded."""
    dest = Path(dest)
    record = _read_json(_sidecar(dest))
    if not dest.is_file() or record.get("size") != dest.stat().st_size:
        return None
    digest = file_sha256(dest)
    return DownloadResult(dest, record["size"], digest) if digest == record.get("sha256") else None


def set_aside(dest: Path) -> Path:
    """Move a download that failed validation, with its record, to `<dest>.invalid` (replacing an older one)."""
    aside = dest.with_name(dest.name + INVALID_SUFFIX)
    os.replace(dest, aside)
    _sidecar(aside).unlink(missing_ok=True)
    if _sidecar(dest).exists():
        os.replace(_sidecar(dest), _sidecar(aside))
    return aside


def discard_download(dest: Path) -> None:
    """Forget `dest`, its record and any partial download of it: the next `download` starts from byte 0."""
    part = _part_path(dest)
    for path in (dest, _sidecar(dest), part, _sidecar(part)):
        path.unlink(missing_ok=True)


def other_source(dest: Path, url: str) -> str | None:
    """The source `dest` was downloaded from when its record names another than `url` (another `--url`), else None:
    a finished download is reused only for the source it came from."""
    recorded = _read_json(_sidecar(dest)).get("url")
    return recorded if recorded is not None and recorded != _source_or_none(url) else None


def _source_or_none(url: str) -> str | None:
    """The canonical source of `url` (as records hold it); None when `download` would refuse it anyway."""
    try:
        return _resolve(url)[0]
    except _Failure:
        return None


def refuse_unusable_source(url: str) -> None:
    """A source no download can come from (another scheme than http, https or file; a local file that is not there
    or cannot be read) is bad usage, said before an earlier download is reused or discarded, with the URL as typed."""
    try:
        path = _local_path(url)
    except _Failure as exc:
        raise UsageError(url, exc.reason) from None
    if path is None:
        return
    refuse_unusable_file(path, url)


class _Part:
    """The growing `.part` file, the sha256 of the bytes it holds, and the source (and version) of those."""

    def __init__(self, path: Path, source: str) -> None:
        self.path, self.source = path, source
        self.meta_path = _sidecar(path)
        self.size, self.hasher = 0, hashlib.sha256()
        meta = _read_json(self.meta_path)
        self.validator: str | None = meta.get("validator")
        if self.path.is_file() and meta.get("url") == source:
            self._rehash()
        else:  # bytes of another source (or of unknown origin) must not be resumed
            self.discard()

    def resume_point(self) -> int:
        # An attempt that died mid-write may have left bytes the hash has not seen.
        if not self.path.is_file() or self.path.stat().st_size != self.size:
            self._rehash()
        return self.size

    def restart(self, validator: str | None) -> None:
        self.path.write_bytes(b"")
        self.size, self.hasher, self.validator = 0, hashlib.sha256(), validator
        _write_json(self.meta_path, {"url": self.source, "validator": validator})

    def receive(self, stream: io.BufferedIOBase, chunk_size: int, on_chunk: Callable[[int], Any]) -> None:
        """Append the stream to the part until EOF, then fsync; network errors become retryable failures."""
        try:
            with self.path.open("ab") as out:
                while chunk := _read(stream, chunk_size):
                    out.write(chunk)
                    self.hasher.update(chunk)
                    self.size += len(chunk)
                    on_chunk(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:  # reads raise _Failure, so this is the disk: full, read-only, gone...
            raise _Failure(f"cannot write {self.path}: {os_reason(exc)}", retry=False) from exc

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)
        self.size, self.hasher, self.validator = 0, hashlib.sha256(), None

    def _rehash(self) -> None:
        self.hasher = sha256_hasher(self.path) if self.path.is_file() else hashlib.sha256()
        self.size = self.path.stat().st_size if self.path.is_file() else 0


def _fetch(
    part: _Part,
    open_source: Callable[[int, str | None], _Opened],
    chunk_size: int,
    retries: int,
    backoff: float,
    bar: Progress,
    task: TaskID,
) -> None:
    """Run attempts until the part holds the whole source, or failures in a row exceed `retries`."""
    failures = 0
    while True:
        before = part.size
        try:
            opened = open_source(part.resume_point(), part.validator)
            with opened.stream:
                if opened.start == 0:
                    part.restart(opened.validator)
                bar.update(task, completed=opened.start, total=opened.total)
                part.receive(opened.stream, chunk_size, partial(bar.advance, task))
            if opened.total is not None and part.size != opened.total:
                raise _Failure(
                    f"connection closed after {part.size} of {opened.total} bytes", retry=True, unreachable=True
                )
            return
        except _Failure as exc:
            failures = 1 if part.size > before else failures + 1  # progress starts a new streak
            if not exc.retry or failures > retries:
                gave_up = f" (gave up after {count_text(failures, 'failed attempt')}; run again to resume)"
                reason = exc.reason + (gave_up if exc.retry else "")
                raise _Failure(reason, retry=False, unreachable=exc.unreachable) from exc
            time.sleep(backoff * 2 ** max(failures - 1, 0))


def _publish(part: _Part, dest: Path) -> DownloadResult:
    """Rename the finished part onto `dest` and record what it holds in `<dest>.json`."""
    os.replace(part.path, dest)
    part.meta_path.unlink(missing_ok=True)
    fsync_folder(dest.parent)
    result = DownloadResult(dest, part.size, part.hasher.hexdigest())
    completed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {"url": part.source, "size": result.size, "sha256": result.sha256, "completed_at": completed_at}
    _write_json(_sidecar(dest), record)
    return result


def _resolve(url: str) -> tuple[str, Path | None]:
    """The canonical source string (recorded in sidecars) and, for local sources, the file's path."""
    path = _local_path(url)
    if path is None:
        return url, None
    path = path.resolve()
    return path.as_uri(), path


def _local_path(url: str) -> Path | None:
    """The path a local source names (a file URL's or the path itself, links not resolved); None for HTTP(S)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise _Failure(f"file URL names a remote host {parsed.netloc!r}", retry=False)
        return Path(urllib.request.url2pathname(parsed.path))
    if len(parsed.scheme) <= 1:  # no scheme, or a Windows drive letter
        return Path(url)
    raise _Failure(
        f"unsupported URL scheme {parsed.scheme!r} (give an http, https or file URL, or a path)", retry=False
    )


def _open(local: Path | None, source: str, timeout: float, offset: int, validator: str | None) -> _Opened:
    if local is not None:
        return _open_local(local, offset, validator)
    return _open_http(source, offset, validator, timeout)


def _open_local(path: Path, offset: int, validator: str | None) -> _Opened:
    try:
        stream = path.open("rb")
        stat = os.fstat(stream.fileno())
    except OSError as exc:
        raise _Failure(f"{path}: {read_reason(path, exc)}", retry=False) from exc
    version = f"{stat.st_size}:{stat.st_mtime_ns}"
    start = offset if offset <= stat.st_size and validator == version else 0
    stream.seek(start)
    return _Opened(stream, start, stat.st_size, version)


def _open_http(url: str, offset: int, validator: str | None, timeout: float) -> _Opened:
    """GET `url` from byte `offset`; falls back to the whole file when the server cannot resume it."""
    headers = {"User-Agent": f"pengi-search/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator  # a changed file comes back whole (200) instead of spliced
    request = urllib.request.Request(url, headers=headers)
    try:
        # `timeout` bounds connecting and each read, not the name lookup before them: `within` bounds it all.
        opening = partial(urllib.request.urlopen, request, timeout=timeout)
        response = within(timeout, opening, late=lambda late: late.close())
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # the part is as long as the file, or longer: it is not this file
            return _open_http(url, 0, None, timeout)
        reason = f"HTTP {exc.code} {exc.reason}"
        raise _Failure(reason, retry=exc.code in _RETRIED_HTTP_STATUS, unreachable=True) from exc
    except concurrent.futures.TimeoutError as exc:  # before OSError: in Python 3.11 on, one is the other
        reason = f"network error: no answer within {timeout:g} s (name lookup, connection or reply)"
        raise _Failure(reason, retry=True, unreachable=True) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _Failure(f"network error: {_describe(exc)}", retry=True, unreachable=True) from exc
    if response.status != 206:  # the server ignored the range: everything comes from byte 0
        length = _int_or_none(response.headers.get("Content-Length"))
        return _Opened(response, 0, length, _validator(response))
    start, total = _content_range(response.headers.get("Content-Range", ""))
    if start != offset:
        response.close()
        return _open_http(url, 0, None, timeout)
    return _Opened(response, start, total, validator)


def _content_range(value: str) -> tuple[int | None, int | None]:
    """(first byte, total size) from `bytes first-last/total`; None for what is missing or malformed."""
    unit, _, spec = value.strip().partition(" ")
    span, _, total = spec.partition("/")
    first = span.partition("-")[0]
    if unit != "bytes" or not first.isdigit():
        return None, None
    return int(first), _int_or_none(total)


def _validator(response: http.client.HTTPResponse) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range accepts only strong validators
        return etag
    return response.headers.get("Last-Modified")


def _read(stream: io.BufferedIOBase, size: int) -> bytes:
    try:
        # read1 hands over what has arrived; read() would wait for `size` bytes and lose them on a timeout.
        return stream.read1(size)
    except (OSError, http.client.HTTPException) as exc:
        raise _Failure(f"network error: {_describe(exc)}", retry=True, unreachable=True) from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, str):
        exc = exc.reason
    return str(exc) or type(exc).__name__


def _progress_bar(enabled: bool) -> Progress:
    console = make_console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and is_watched(console)),
    )


def _part_path(dest: Path) -> Path:
    """Where the bytes of `dest` gather until it is complete: `<dest>.part`."""
    return dest.with_name(dest.name + ".part")


def _sidecar(dest: Path) -> Path:
    """The JSON record beside `dest` (a finished file or a `.part`): where its bytes came from."""
    return dest.with_name(dest.name + ".json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a record whole or not at all: a reader never sees half of one, nor a full disk a leftover."""
    with written_aside(path) as staging:
        staging.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None

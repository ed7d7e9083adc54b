"""Clips sent to the server: saved to a private temporary file, bounded in bytes and seconds, checked by decoding.

A clip is decoded by the project's audio I/O before anything else sees it; one that cannot be read is refused with
the decoder's reason (422), one too large or too long with 413. Only the extension of the client's file name is
kept (it helps the decoders guess the format); the name itself never reaches the file system.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

from ..audio import AUDIO_EXTENSIONS, iter_windows
from ..audio_decoders import EMPTY_AUDIO, AudioDecodeError
from .errors import InvalidParameter, RequestError
from .settings import MIB

_CHUNK = 1 << 20
_SAFE_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")


@dataclass(frozen=True)
class Upload:
    """A saved clip: where it lies, what the client called it, and how long it is."""

    path: Path
    name: str
    duration_s: float


@contextmanager
def saved_upload(stream: BinaryIO, filename: str | None, *, max_bytes: int, max_seconds: float) -> Iterator[Upload]:
    """Save `stream` to a temporary file (removed afterwards) and check that it decodes and is short enough."""
    name = Path(filename or "upload").name or "upload"
    suffix = Path(name).suffix.lower()
    suffix = suffix if _SAFE_SUFFIX.match(suffix) and suffix in AUDIO_EXTENSIONS else ""
    with tempfile.TemporaryDirectory(prefix="pengi-upload-") as folder:
        path = Path(folder) / f"clip{suffix}"
        _copy_bounded(stream, path, name, max_bytes)
        yield Upload(path, name, _checked_duration(path, name, max_seconds))


def limit_text(size: int) -> str:
    """A size limit in the units the server is given it in (`--max-upload-mb`), bytes below a MiB: exact, where
    `units.size_text` rounds a file's size to a tenth."""
    return f"{size / MIB:g} MiB" if size >= MIB else f"{size} bytes"


def larger_than(limit: int) -> str:
    """Why a file of more than `limit` bytes is refused: said by the server (413), and by the page before sending."""
    return f"larger than the server's limit of {limit_text(limit)}"


def _copy_bounded(stream: BinaryIO, path: Path, name: str, max_bytes: int) -> None:
    written = 0
    with open(path, "wb") as out:
        while chunk := stream.read(_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise RequestError(name, larger_than(max_bytes), HTTPStatus.REQUEST_ENTITY_TOO_LARGE, field="file")
            out.write(chunk)
    if written == 0:
        raise InvalidParameter("file", EMPTY_AUDIO, where=name)


def _checked_duration(path: Path, name: str, max_seconds: float) -> float:
    """Decode the whole clip once (so a corrupt one fails here, with the decoder's reason), stopping past the limit."""
    duration = 0.0
    try:
        with closing(iter_windows(path)) as windows:
            for window in windows:
                duration = max(duration, window.end_s)
                if duration > max_seconds:
                    raise RequestError(
                        name,
                        f"longer than the server's limit of {max_seconds:g} s",
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        field="file",
                    )
    except AudioDecodeError as exc:
        raise InvalidParameter("file", exc.reason, where=name) from None
    return duration

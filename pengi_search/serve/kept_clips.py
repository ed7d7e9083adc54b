"""Uploaded clips' embeddings, kept for a while so that their results page as a text search's do.

An upload's clip is deleted once embedded; its embedding is what its next pages ("More results", a reload, `GET
/api/similar?upload=TOKEN&offset=N`) search with. `serve --workers N` runs several processes, and the next page
may land on any of them, so the embeddings live in a folder every worker reads (chosen once, before the workers
start), one file each, named by an unguessable token: written whole under a temporary name and renamed, a reader
never sees half a file. A clip is kept `KEEP_S` after it was last used, and at most `MOST_KEPT` of them (the least
recently used go first); every worker prunes the folder when it keeps a clip, and when it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np

from .errors import InvalidParameter, RequestError

KEEP_S = 15 * 60.0
MOST_KEPT = 64
_TOKEN_BYTES = 18  # 144 random bits: 24 characters of URL-safe base64
_TOKEN = re.compile(r"[A-Za-z0-9_-]{24}")
_SUFFIX = ".npz"
_PARTIAL = ".partial-"  # a file being written (a leftover of a worker that died writing it is pruned in time)


@dataclass(frozen=True)
class KeptClip:
    """What an uploaded clip's results are searched with: its windows' embeddings (n, d) and times, its sha256 (its
    file and copies are left out of its results), the name the client gave it and the fingerprint of the model that
    embedded it (None: not known), whose library vectors alone it can be compared with."""

    name: str
    sha256: str
    vectors: np.ndarray
    spans: list[tuple[float, float]]
    model: str | None = None


class KeptClips:
    """The embeddings of recent uploads in `folder` (shared by the server's processes), by token."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self.clock = clock  # seconds; each file's modification time is set by it (tests move it on)
        self.prune()

    def keep(self, clip: KeptClip) -> str:
        """Keep `clip`; returns its token."""
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        meta = json.dumps({"name": clip.name, "sha256": clip.sha256, "model": clip.model})
        spans = np.asarray(clip.spans, dtype=np.float64).reshape(-1, 2)
        with tempfile.NamedTemporaryFile(dir=self.folder, prefix=_PARTIAL, suffix=_SUFFIX, delete=False) as out:
            try:
                np.savez(out, vectors=clip.vectors, spans=spans, meta=np.array(meta))
            except BaseException:  # a full disk, say: no half file left for pruning to find
                os.unlink(out.name)
                raise
        self._touch(Path(out.name))
        os.replace(out.name, self._path(token))
        self.prune()
        return token

    def get(self, token: str) -> KeptClip:
        """The clip kept under `token` (its time to live starts again); RequestError (404) when it is not kept."""
        if not _TOKEN.fullmatch(token):
            raise InvalidParameter("upload", "not a token this server gave: send the clip again")
        path = self._path(token)
        try:
            if self._expired(path.stat().st_mtime):
                path.unlink()
                raise FileNotFoundError(path)
            with np.load(path, allow_pickle=False) as stored:
                meta = json.loads(str(stored["meta"]))
                vectors, spans = stored["vectors"], stored["spans"]
        except FileNotFoundError:  # expired, dropped for newer ones, or a server's since restarted
            raise RequestError(
                f"upload {token}",
                f"this clip's results are no longer kept (they are kept {KEEP_S / 60:g} minutes after they were "
                "last asked for): send the clip again",
                HTTPStatus.NOT_FOUND,
            ) from None
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile by another worker: this page is still read
            self._touch(path)
        spans_read = [(float(a), float(b)) for a, b in spans]
        return KeptClip(meta["name"], meta["sha256"], vectors, spans_read, meta.get("model"))

    def prune(self) -> None:
        """Delete the clips past their time and the least recently used past `MOST_KEPT` (with any file a worker
        left half-written). Another worker may prune the same files at the same time: one gone already is let be."""
        kept: list[tuple[float, Path]] = []
        for path in self.folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                used = path.stat().st_mtime
                if self._expired(used):
                    path.unlink()
                elif not path.name.startswith(_PARTIAL):
                    kept.append((used, path))
        for _, path in sorted(kept, reverse=True)[MOST_KEPT:]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _path(self, token: str) -> Path:
        return self.folder / f"{token}{_SUFFIX}"

    def _expired(self, used: float) -> bool:
        return self.clock() - used > KEEP_S

    def _touch(self, path: Path) -> None:
        now = self.clock()
        os.utime(path, (now, now))

"""Files a run need not decode nor caption: their bytes are indexed already, at another path (a file moved, renamed
or copied; a library often holds one sound at several paths).

Captioning is by far the slowest part of indexing, so a file whose content hash an indexed file has takes that
file's windows (`pengi_search.db.copy_identical_file`): their audio embeddings, and their captions when written as
this run writes them, for the same prompts in the same mode (the model and text embedder are the library's, for
every file). Only the files of a size some indexed file has are hashed to find out: the others are new sounds.
The run does this before its first pass, and so before it prunes the paths that are gone: a file moved within the
library is copied from its old path, which the same run then forgets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pengi_search.choices import EXACT_MODE
from pengi_search.db import CopiedFile, FileRecord, Store, StoreError, TextRecord, copy_identical_file, sizes_indexed
from pengi_search.hashing import file_sha256
from pengi_search.scan import Entry

from .captions import DEFAULT_PROMPTS
from .run_report import IndexOptions

log = logging.getLogger(__name__)


class IdenticalFiles:
    """Indexes, from the files already indexed, the files of a run that hold the same bytes as one of them."""

    def __init__(self, store: Store, options: IndexOptions, run_id: int | None) -> None:
        self.store = store
        self.run_id = run_id
        self.prompts = options.prompts or DEFAULT_PROMPTS
        self.fast = options.fast
        self.strict = options.strict

    def copy_all(self, entries: Sequence[Entry]) -> tuple[list[tuple[Entry, CopiedFile]], list[Entry]]:
        """The entries indexed as copies (each with what was copied), and those left to decode."""
        sizes = sizes_indexed(self.store, (entry.size for entry in entries)) if entries else set()
        copied, rest = [], []
        for entry in entries:
            copy = self.copy(entry) if entry.size in sizes else None
            if copy is None:
                rest.append(entry)
            else:
                copied.append((entry, copy))
        return copied, rest

    def copy(self, entry: Entry) -> CopiedFile | None:
        """Index `entry` from an indexed file with the same bytes; None when there is none (or it cannot be read,
        which decoding then reports)."""
        try:
            digest = file_sha256(entry.path)
        except OSError:
            return None
        sources = [record.id for record in self.store.files_with_hash(digest) if self._may_copy(record, entry.path)]
        if not sources:
            return None
        try:
            return copy_identical_file(
                self.store,
                entry.path,
                sources,
                self.texts_ok,
                size=entry.size,
                mtime=entry.mtime,
                content_hash=digest,
                run_id=self.run_id,
            )
        except StoreError as exc:  # the file is decoded instead, and its own error (if any) recorded then
            log.warning("could not index %r from an identical file: %s", entry.path, exc)
            return None

    def texts_ok(self, texts: Sequence[TextRecord]) -> bool:
        """Texts this run may take as its own: the answers to its prompts, in order, written exactly, or by --fast
        in a --fast run. (--beam, --max-len and --stop are not recorded: as for an unchanged file, the library
        keeps the texts it has.)"""
        exact = all(text.mode == EXACT_MODE for text in texts)
        fast = self.fast and all(text.mode is not None for text in texts)
        return tuple(text.prompt for text in texts) == self.prompts and (exact or fast)

    def _may_copy(self, record: FileRecord, path: str) -> bool:
        """An indexed file (another one), not a cut one when cut files are to fail (--strict)."""
        return record.status == "indexed" and record.path != path and not (self.strict and record.truncated)

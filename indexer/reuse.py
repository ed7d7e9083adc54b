"""Files a run need not decode nor caption: their bytes are indexed already, at another path (a file moved, renamed
or copied; a library often holds one sound at several paths).

Captioning is by far the slowest part of indexing, so a file whose content hash an indexed file has takes that
file's windows (`pengi_search.db.copy_identical_file`): their audio embeddings, and their captions when written as
this run writes them, for the same prompts, decoding settings and mode (the model and text embedder are the
library's, for every file). Only the files of a size some indexed file has are hashed to find out: the others are
new sounds. Indexed files of those sizes that have no content hash (a library indexed before schema revision 0002,
the files unchanged since) are hashed then too, where they are still on disk as they were indexed. The run does this
before its first pass, and so before it prunes the paths that are gone: a file moved within the library is copied
from its old path, which the same run then forgets.

New files identical to one another (a folder of copies added at once) are hashed too, since they share a size: the
first of each is decoded, and the others wait until the run has indexed it (and, captions now, captioned it) to be
copied from it. A file's windows are batched with other files' and stored only once all are embedded, so there is
nothing to copy from any earlier; waiting for the end of the run keeps one order for every file, whatever its batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pengi_search.db import (
    CopiedFile,
    FileRecord,
    RefusedInputError,
    Store,
    TextRecord,
    copy_identical_file,
    record_content_hash,
    sizes_indexed,
    unhashed_files,
)
from pengi_search.hashing import file_sha256
from pengi_search.scan import Entry, stamp_of

from .captions import DEFAULT_PROMPTS
from .run_report import IndexOptions, ProgressReporter

log = logging.getLogger(__name__)


Copies = list[tuple[Entry, CopiedFile]]  # files indexed from identical ones, each with what was copied


@dataclass
class Reuse:
    """What `IdenticalFiles.copy_all` made of the files a run has to index."""

    copied: Copies = field(default_factory=list)
    decode: list[Entry] = field(default_factory=list)  # to decode: no indexed file holds their bytes
    later: list[Entry] = field(default_factory=list)  # the bytes of a file in `decode`: copied once it is indexed


class IdenticalFiles:
    """Indexes, from the files already indexed, the files of a run that hold the same bytes as one of them."""

    def __init__(
        self, store: Store, options: IndexOptions, run_id: int | None, progress: ProgressReporter | None = None
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.prompts = options.prompts or DEFAULT_PROMPTS
        self.decoding = options.decoding
        self.fast = options.fast
        self.strict = options.strict
        self.progress = progress
        self.digests: dict[str, str] = {}  # sha256 by path, of the files hashed (`_hash`)

    def copy_all(self, entries: Sequence[Entry]) -> Reuse:
        """Index each entry whose bytes an indexed file holds from that file; of the others, the first with each
        content is to decode, and the rest to copy from it once it is indexed (`copy_later`)."""
        unhashed = unhashed_files(self.store, {entry.size for entry in entries}) if entries else {}
        candidates = self._candidates(entries, {size for size, _ in unhashed.values()})
        if self.progress is not None and (candidates or unhashed):
            self.progress.start_hashing(len(candidates) + len(unhashed))
        self._hash_indexed(unhashed)
        self._hash(candidates)
        reuse = Reuse()
        decoded: set[str | None] = set()  # the contents of the files in `reuse.decode`
        for entry in entries:
            digest = self.digests.get(entry.path)
            copy = self.copy(entry) if digest is not None else None
            if copy is not None:
                reuse.copied.append((entry, copy))
            elif digest is not None and digest in decoded:
                reuse.later.append(entry)
            else:
                reuse.decode.append(entry)
                decoded.add(digest)
        return reuse

    def copy_later(self, entries: Sequence[Entry]) -> tuple[Copies, list[Entry]]:
        """The `later` entries indexed from the files this run indexed (each with what was copied), and those left
        to decode (the file they wait for failed, or was not taken: their own decoding decides)."""
        copied, rest = [], []
        for entry in entries:
            copy = self.copy(entry)
            if copy is None:
                rest.append(entry)
            else:
                copied.append((entry, copy))
        return copied, rest

    def _candidates(self, entries: Sequence[Entry], unhashed: set[int]) -> list[Entry]:
        """The entries that may hold another file's bytes: those of a size an indexed file (`unhashed`: the sizes
        of those still to hash) or another entry has (the others are new sounds, not worth reading)."""
        sizes = Counter(entry.size for entry in entries)
        indexed = (sizes_indexed(self.store, sizes) if entries else set()) | unhashed
        return [entry for entry in entries if entry.size in indexed or sizes[entry.size] > 1]

    def _hash_indexed(self, files: dict[str, tuple[int, float]]) -> None:
        """Record the content hash of indexed `files` that have none (indexed before schema revision 0002 and
        unchanged since): a new file with their bytes, such as their copy, is then copied from them. Only a file
        on disk with the stamp it was indexed with is hashed: one changed since holds other bytes than its windows.
        """
        for path, stamp in files.items():
            digest = _sha256_if_stamped(path, stamp)
            if digest is not None:
                record_content_hash(self.store, path, stamp, digest)
            self._hashed()

    def _hash(self, entries: Sequence[Entry]) -> None:
        """Hash `entries` (those that cannot be read are left out), on a bar of files: a library of many files of
        one size reads them all."""
        for entry in entries:
            with contextlib.suppress(OSError):  # decoding reports why it cannot be read
                self.digests[entry.path] = file_sha256(entry.path)
            self._hashed()

    def _hashed(self) -> None:
        if self.progress is not None:
            self.progress.advance(files=1)

    def copy(self, entry: Entry) -> CopiedFile | None:
        """Index `entry` from an indexed file with the same bytes; None when there is none (or `entry` was not
        hashed)."""
        digest = self.digests.get(entry.path)
        if digest is None:
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
        except RefusedInputError as exc:  # the file is decoded instead, and its own error (if any) recorded then
            log.warning("could not index %r from an identical file: %s", entry.path, exc)
            return None

    def texts_ok(self, texts: Sequence[TextRecord]) -> bool:
        """Texts this run may take as its own: the answers to its prompts, in order, decoded with its --beam,
        --max-len and --stop, written exactly, or by --fast in a --fast run. Texts written before their decoding
        settings were recorded (schema revision 0005) are taken as decoded with this run's, as they always were
        (`TextRecord.decoded_as`)."""
        decoded = all(text.decoded_as(self.decoding, fast=self.fast) for text in texts)
        return tuple(text.prompt for text in texts) == self.prompts and decoded

    def _may_copy(self, record: FileRecord, path: str) -> bool:
        """An indexed file (another one), not a cut one when cut files are to fail (--strict)."""
        return record.status == "indexed" and record.path != path and not (self.strict and record.truncated)


def _sha256_if_stamped(path: str, stamp: tuple[int, float]) -> str | None:
    """The sha256 of the file at `path` while it has `stamp` (size and mtime) before and after it is read; None
    when it has not, or cannot be read."""
    try:
        if stamp_of(os.stat(path)) != stamp:
            return None
        digest = file_sha256(path)
        return digest if stamp_of(os.stat(path)) == stamp else None
    except OSError:
        return None

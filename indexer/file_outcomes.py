"""What became of each file a run took on, kept as it happens: a file stored (decoded, or copied from one with
the same bytes) is counted in the run's summary with its notes (a truncation, the decoders' messages); a file that
failed is recorded in the database with its reason, so that the next run skips it unless asked to retry it. A
failure to record a failure is reported with it and ends nothing: the next run tries the file again."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pengi_search.db import TRUNCATED_NOTE, Store, StoreError
from pengi_search.scan import Entry

from .reuse import Copies
from .run_report import FailedFile, FileNote, IndexSummary

DECODER_NOTE = "decoder: "  # how a line a C decoder printed begins among a file's notes

log = logging.getLogger(__name__)


class FileOutcomes:
    """The outcomes of one run's files, into its `summary` and the database (`store`, under `run_id`)."""

    def __init__(self, store: Store, run_id: int | None, summary: IndexSummary) -> None:
        self.store = store
        self.run_id = run_id
        self.summary = summary
        self.stored: list[Entry] = []  # every file this run indexed, decoded or copied
        self.copied_from: list[str] = []  # the source of each file indexed as a copy

    def indexed(self, entry: Entry, windows: int, notes: Sequence[str]) -> None:
        """Count a file stored with `windows` windows and its `notes` (a truncation, then the decoders' messages)."""
        self.stored.append(entry)
        self.summary.indexed += 1
        self.summary.window_count += windows
        self.summary.truncated += [FileNote(entry.path, note) for note in notes[:1] if note.startswith(TRUNCATED_NOTE)]
        decoder = [note.removeprefix(DECODER_NOTE) for note in notes if note.startswith(DECODER_NOTE)]
        self.summary.decoder_notes += [FileNote(entry.path, note) for note in decoder]

    def copied(self, copies: Copies) -> None:
        """Count the files indexed as copies of files with the same bytes, and remember where each came from."""
        for entry, copy in copies:
            self.indexed(entry, copy.windows, copy.notes)
            self.copied_from.append(copy.source)
        self.summary.reused += len(copies)

    def failed(self, entry: Entry, reason: str, content_hash: str | None = None, notes: Sequence[str] = ()) -> None:
        """Record the file as failed (the decoders' messages below the reason); see the module docstring."""
        try:
            self.store.record_file_error(
                entry.path,
                "\n".join([reason, *(DECODER_NOTE + note for note in notes)]),
                size=entry.size,
                mtime=entry.mtime,
                content_hash=content_hash,
                run_id=self.run_id,
            )
        except StoreError as exc:
            log.warning("could not record the failure of %r: %s", entry.path, exc)
            reason = f"{reason} (not recorded in the database: {exc.reason})"
        self.summary.failed.append(FailedFile(entry.path, reason))
        self.summary.decoder_notes += [FileNote(entry.path, note) for note in notes]

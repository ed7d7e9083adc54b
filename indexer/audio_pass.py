"""Pass 1 of a run: the files to index decoded by worker processes, their windows embedded in batches (windows of
different files fill the same batch), and each file stored in one transaction as soon as its last window is
embedded, so that a run stopped mid-way loses at most the batch in flight. A file that fails to decode, or that
the database refuses (a non-finite embedding), is recorded as failed and the others go on."""

from __future__ import annotations

from dataclasses import dataclass, field

from pengi_search.audio import Window
from pengi_search.audio_workers import Decoded, Failed, Job, Windows, decode_all
from pengi_search.db import RefusedInputError, Store, StoredAudio, WindowInput
from pengi_search.scan import Entry
from pengi_search.window_batches import Promises

from .captions import IndexModel
from .file_outcomes import DECODER_NOTE, FileOutcomes
from .hold_points import FILE_STORED, hold_at
from .run_report import IndexOptions, ProgressReporter

Batch = list[tuple[int, Window]]  # windows waiting to be embedded, each with its file's place in the run's list


@dataclass
class _InFlight:
    """A file whose windows are being described."""

    entry: Entry
    done: list[WindowInput] = field(default_factory=list)
    queued: int = 0  # windows waiting in the batch buffer
    decoded: Decoded | None = None


class AudioPass:
    """Pass 1 over a list of files, into `store` under `run_id`; each file's outcome goes to `outcomes`."""

    def __init__(
        self,
        store: Store,
        options: IndexOptions,
        run_id: int | None,
        outcomes: FileOutcomes,
        progress: ProgressReporter | None,
    ) -> None:
        self.store = store
        self.options = options
        self.run_id = run_id
        self.outcomes = outcomes
        self.progress = progress
        self._flights: dict[int, _InFlight] = {}

    def run(self, model: IndexModel, todo: list[Entry]) -> None:
        """Decode every file of `todo` and store its windows with their audio embeddings, file by file."""
        batch_size = model.windows_per_batch
        buffer: Batch = []
        self._flights = {}
        self._promises = Promises(self.progress)
        if self.progress is not None:
            self.progress.start(len(todo))
        messages = decode_all([Job(seq, entry.path) for seq, entry in enumerate(todo)], self.options.workers)
        try:
            for message in messages:
                flight = self._flights.setdefault(message.seq, _InFlight(todo[message.seq]))
                if isinstance(message, Windows):
                    buffer.extend((message.seq, window) for window in message.windows)
                    flight.queued += len(message.windows)
                    self._promises.windows(message)
                    while len(buffer) >= batch_size:
                        self._embed(model, buffer[:batch_size])
                        del buffer[:batch_size]
                elif isinstance(message, Decoded):
                    flight.decoded = message
                    self._promises.counted(message.seq, message.count)
                    self._commit_ready()
                elif isinstance(message, Failed):
                    buffer = [(seq, window) for seq, window in buffer if seq != message.seq]
                    del self._flights[message.seq]
                    self.outcomes.failed(flight.entry, message.reason, message.content_hash, message.notes)
                    self._promises.counted(message.seq, 0)
                    self._advance(files=1)
            while buffer:
                self._embed(model, buffer[:batch_size])
                del buffer[:batch_size]
        finally:
            messages.close()

    def _embed(self, model: IndexModel, batch: Batch) -> None:
        embedded = model.audio_windows([window for _, window in batch])
        for (seq, _), window in zip(batch, embedded, strict=True):
            self._flights[seq].done.append(window)
            self._flights[seq].queued -= 1
        self._advance(windows=len(batch))
        self._commit_ready()

    def _commit_ready(self) -> None:
        """Store every file whose windows are all embedded (one transaction per file)."""
        flights = self._flights
        for seq in [seq for seq, flight in flights.items() if flight.decoded is not None and flight.queued == 0]:
            self._commit(flights.pop(seq))
            self._advance(files=1)
            hold_at(FILE_STORED)

    def _commit(self, flight: _InFlight) -> None:
        entry, decoded = flight.entry, flight.decoded
        assert decoded is not None
        if decoded.truncation is not None and self.options.strict:
            self.outcomes.failed(entry, decoded.truncation, decoded.content_hash, decoded.notes)
            return
        truncation = () if decoded.truncation is None else (decoded.truncation,)
        notes = truncation + tuple(DECODER_NOTE + note for note in decoded.notes)
        audio = StoredAudio(decoded.duration_s, decoded.sample_rate, decoded.channels, decoded.format, notes)
        try:
            file_id = self.store.upsert_file(
                entry.path, size=entry.size, mtime=entry.mtime, content_hash=decoded.content_hash, run_id=self.run_id
            )
            self.store.replace_file_windows(file_id, flight.done, audio=audio, run_id=self.run_id)
        except RefusedInputError as exc:  # e.g. a non-finite embedding: this file fails, the others go on
            self.outcomes.failed(entry, exc.reason, decoded.content_hash, decoded.notes)
            return
        self.outcomes.indexed(entry, len(flight.done), notes)

    def _advance(self, files: int = 0, windows: int = 0) -> None:
        if self.progress is not None:
            self.progress.advance(files=files, windows=windows)

"""What an indexing run is asked (`IndexOptions`) and what it reports: progress as it goes (`ProgressReporter`)
and, at the end, an `IndexSummary` with the files that failed (`FailedFile`) and what decoding or pruning noticed
(`FileNote`). The run itself is `indexer.pipeline`; the CLI prints and serialises these.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

from pengi_search.audio import AUDIO_EXTENSIONS
from pengi_search.audio_workers import default_workers
from pengi_search.choices import Captions, LongPrompt, StopRule, decoding_settings
from pengi_search.json_values import json_seconds
from pengi_search.pathnames import path_fields
from pengi_search.vectors import FillProgress
from pengi_search.window_batches import Progress

from .shard import Shard


@dataclass(frozen=True)
class IndexOptions:
    """What to index and how. Empty `prompts`: the caption and sound-event prompts; the first prompt's answer is
    the text embedded into the 'text' index. `captions`: now (pass 2 in this run) or later (pass 1 only)."""

    roots: Sequence[str | os.PathLike[str]]
    db: str | None = None
    model: str | None = None
    device: str = "auto"
    workers: int = field(default_factory=default_workers)
    batch_size: int | None = None  # windows per batch; None: the device's (16 on CPU, 128 on CUDA with 2 prompts)
    prompts: tuple[str, ...] = ()
    text_embedder: str | None = None
    index_type: str | None = None
    shard: Shard | None = None
    extensions: frozenset[str] = AUDIO_EXTENSIONS
    hidden: bool = False  # walk hidden names too (`pengi_search.scan`)
    retry_errors: bool = False
    reindex: bool = False
    strict: bool = False  # a truncated file is recorded as failed instead of indexed with a note
    beam: int = 3
    max_len: int = 30
    stop: StopRule = StopRule.both  # see `pengi_search.choices.StopRule`
    long_prompts: LongPrompt = LongPrompt.cut
    wait: bool = False  # another run holds the library's lock: wait for it instead of refusing
    captions: Captions = Captions.now
    fast: bool = False  # --fast (pengi_search.fast_mode): not bit-identical
    recaption_fast: bool = False  # windows a --fast run captioned get exact captions (db.drop_fast_captions)
    create_empty: bool = False  # no library yet and no audio under `roots`: create it all the same (--watch)

    @property
    def decoding(self) -> str:
        """This run's --beam, --max-len and --stop as each text it writes records them (--fast: one beam)."""
        return decoding_settings(self.beam, self.max_len, self.stop, fast=self.fast)


class ProgressReporter(Progress, Protocol):
    """`window_batches.Progress`, told of the indexer's other steps too: files hashed to find identical ones are
    reported after `start_hashing`; pass 1 reports files and windows after `start`, and each file's count of windows
    once it is decoded (0 for a file that failed); pass 2 reports windows after `start_captions`. A FAISS index that
    the run fills from the database (a compaction after files left it, another --index-type) reports to what
    `filling(name)` gives."""

    def start_hashing(self, files: int) -> None: ...

    def start_captions(self, windows: int | None) -> None: ...  # None: not known (a shard's share)

    def filling(self, name: str) -> FillProgress: ...  # the run's library's `progress`


@dataclass(frozen=True)
class PathMessage:
    """A file or folder and what the run has to say about it; `KEY` names the message in the JSON summary."""

    path: str
    message: str
    KEY: ClassVar[str]

    def to_json(self) -> dict[str, str]:
        return {**path_fields(self.path), self.KEY: self.message}


class FailedFile(PathMessage):
    """A file that could not be indexed, or a folder that could not be read, and why."""

    KEY = "error"


class FileNote(PathMessage):
    """Something decoding noticed in a file that was indexed (a truncation, a decoder's message)."""

    KEY = "note"


@dataclass(frozen=True)
class GoneSources:
    """A folder (or a file) whose indexed files are all gone from disk, `files` of this run's files having been
    copied from them, or moved from them by their size and mtime where they have no content hash
    (`indexer.left_behind`): still indexed, and found by every query, until `pengi-search remove` forgets them."""

    path: str
    files: int

    def to_json(self) -> dict[str, Any]:
        return {**path_fields(self.path), "files": self.files}


# The summary's lists of files and folders, each named by its path.
_PATH_LISTS = (
    "failed",
    "unreadable_dirs",
    "unseen_roots",
    "hidden_kept",
    "truncated",
    "decoder_notes",
    "gone_sources",
)


@dataclass
class IndexSummary:
    """What a run did; `partial` when some file or folder could not be indexed.

    `reused`: of the `indexed` files, those that took the windows of an indexed file with the same bytes instead of
    being decoded (`indexer.reuse`): their windows count in `window_count`, and in `captioned` only if pass 2 wrote
    them; `window_count`: windows stored with their audio embedding (pass 1); `captioned`: windows given captions
    (pass 2);
    `captions_missing`: windows below the roots still without captions after the run; `searchable_s`: seconds
    until every window's audio embedding was stored and the FAISS files saved (when `similar` covers the set);
    `gone_sources`: where the indexed files are that `reused` files were copied from (or, unhashed, that indexed
    files have the size and mtime of) and that are gone from disk outside the run's paths (a library's folder
    moved): the run does not prune them, the user may.
    """

    database: str
    run_id: int | None = None
    shard: str | None = None
    files_seen: int = 0  # the run's files: its shard's
    files_found: int = 0  # the files under the run's paths, of every shard
    indexed: int = 0
    reused: int = 0
    unchanged: int = 0
    touched: int = 0
    skipped_errors: int = 0  # known-bad files with the same stamp, not retried (see --retry-errors)
    pruned: int = 0
    window_count: int = 0
    captioned: int = 0
    recaptioned: int = 0  # windows whose --fast captions this run dropped to write exact ones (--recaption-fast)
    captions_missing: int = 0
    searchable_s: float = 0.0
    seconds: float = 0.0
    stale_runs: list[int] = field(default_factory=list)  # earlier runs found dead and marked 'interrupted'
    failed: list[FailedFile] = field(default_factory=list)
    unreadable_dirs: list[FailedFile] = field(default_factory=list)
    unseen_roots: list[FileNote] = field(default_factory=list)  # roots with indexed files but none found: not pruned
    hidden_kept: list[FileNote] = field(default_factory=list)  # hidden paths with indexed files, not walked: kept
    truncated: list[FileNote] = field(default_factory=list)  # indexed as far as they decode
    decoder_notes: list[FileNote] = field(default_factory=list)  # what C decoders printed, per file
    gone_sources: list[GoneSources] = field(default_factory=list)  # copied from, gone from disk, still indexed

    @property
    def partial(self) -> bool:
        return bool(self.failed or self.unreadable_dirs)

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["seconds"] = json_seconds(self.seconds)
        data["searchable_s"] = json_seconds(self.searchable_s)
        for name in _PATH_LISTS:
            data[name] = [item.to_json() for item in getattr(self, name)]
        return data

    def renamed(self, name: Callable[[str], str]) -> IndexSummary:
        """This summary with each path it names (absolute, as the run found them) passed through `name`: the
        command line names them as the user reached them."""
        lists = {key: [replace(item, path=name(item.path)) for item in getattr(self, key)] for key in _PATH_LISTS}
        return replace(self, **lists)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run, which recorded itself interrupted. Still a KeyboardInterrupt, which every
    caller stops on; it brings the run's summary so far: what the run kept, which a re-run does not redo."""

    def __init__(self, summary: IndexSummary) -> None:
        super().__init__()
        self.summary = summary

"""The plain records the store takes and returns (frozen dataclasses), so callers never hold ORM rows or sessions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from ..choices import EXACT_MODE
from ..json_values import json_score, json_seconds, json_time
from ..pathnames import path_fields
from .errors import RefusedInputError

FILE_STATUSES = ("pending", "indexed", "error")
RUN_STATUSES = ("running", "finished", "failed", "interrupted")
VECTOR_KINDS = ("text", "audio")


def check_vector_kind(kind: str) -> None:
    """Raise RefusedInputError unless `kind` is one of VECTOR_KINDS."""
    if kind not in VECTOR_KINDS:
        raise RefusedInputError(f"vector kind {kind!r}", f"unknown; use one of {', '.join(VECTOR_KINDS)}")


def non_finite_vector(kind: str) -> str:
    """Why a `kind` vector is refused (the store's reason, which `similar` gives a query file too)."""
    return f"{kind} vector has NaN or infinite values"


@dataclass(frozen=True)
class ModelInfo:
    """The Pengi checkpoint that wrote the texts."""

    name: str  # the name its model directory records, else the directory's own (`ModelDir.name`)
    fingerprint: str  # the sha256 (hex) of its weights; "unknown" for a model directory that recorded none

    def __str__(self) -> str:
        return f"model {self.name!r} (fingerprint {self.fingerprint[:16]})"


@dataclass(frozen=True)
class EmbedderInfo:
    """The text embedder whose vectors fill the 'text' index."""

    name: str  # its id in the store: "pengi-text:<model>@<sha256 prefix>" or "sentence-transformers:<model>"
    dim: int  # its vectors' length: the model's d_proj for Pengi's own text tower, else the sentence transformer's

    def __str__(self) -> str:
        return f"text embedder {self.name!r} (dim {self.dim})"


@dataclass(frozen=True)
class IndexMeta:
    model: ModelInfo
    embedder: EmbedderInfo
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "model_fingerprint": self.model.fingerprint,
            "embedder": self.embedder.name,
            "embedder_dim": self.embedder.dim,
            "created_at": json_time(self.created_at),
            "updated_at": json_time(self.updated_at),
        }


class FileStamp(NamedTuple):
    """What the indexer compares with the file system to decide whether a file changed."""

    size: int | None
    mtime: float | None
    status: str
    content_hash: str | None


TRUNCATED_NOTE = "truncated: "  # how the note on a file that decodes shorter than its header says begins


@dataclass(frozen=True)
class FileRecord:
    id: int
    path: str
    size: int | None
    mtime: float | None
    content_hash: str | None
    duration_s: float | None  # what decodes, which a cut file's header overstates
    sample_rate: int | None
    channels: int | None
    format: str | None
    status: str
    error: str | None  # why the file could not be indexed (status 'error')
    indexed_at: datetime | None
    run_id: int | None
    notes: str | None = None  # what decoding noticed in a file that was indexed, one note per line

    @property
    def truncated(self) -> str | None:
        """The note saying the file decodes shorter than its header says ("truncated: header says ..."), if any."""
        first = (self.notes or "").partition("\n")[0]
        return first if first.startswith(TRUNCATED_NOTE) else None

    def to_json(self, *, readable: bool = False) -> dict[str, Any]:
        """The file as `export` and the server's `/api/files` write it (without its windows); `readable`: the
        name escaped where it is not valid UTF-8, for the server's encoder (see `path_fields`)."""
        return path_fields(self.path, readable=readable) | {
            "size": self.size,
            "modified_at": json_time(self.mtime),
            "content_hash": self.content_hash,
            "duration_s": json_seconds(self.duration_s),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "format": self.format,
            "status": self.status,
            "error": self.error,
            "indexed_at": json_time(self.indexed_at),
            "notes": self.notes.splitlines() if self.notes else [],
            "truncated": self.truncated is not None,
        }


@dataclass(frozen=True)
class StoredAudio:
    """Properties of a decoded file, recorded when its windows are stored; `notes`: what decoding noticed (a
    truncation first, then the decoders' own messages), kept with the file."""

    duration_s: float
    sample_rate: int
    channels: int
    format: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextRecord:
    prompt: str
    text: str
    score: float | None = None
    mode: str | None = None  # how it was generated: "exact" or a --fast mode ("bf16+greedy"); None: not recorded
    decoding: str | None = None  # the settings it was decoded with (`choices.decoding_settings`); None: not recorded

    def decoded_as(self, decoding: str, *, fast: bool) -> bool:
        """Whether a run that decodes with `decoding` (`choices.decoding_settings`) may take this text as its own
        answer: decoded with those settings, exactly, or by a --fast mode when the run is --fast too (fast answers
        are close to exact ones, not equal). A text written before its settings were recorded (schema revision
        0005) counts as decoded with the run's, as it always did; one without a recorded mode (before 0004) may be
        a --fast answer, and counts as neither."""
        made_alike = self.mode == EXACT_MODE or (fast and self.mode is not None)
        return made_alike and self.decoding in (None, decoding)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "score": json_score(self.score)}


@dataclass(frozen=True)
class WindowInput:
    """One window to store: its texts and its vectors by kind ('text', 'audio'), each a 1-D float array."""

    index: int
    start_s: float
    end_s: float
    texts: Sequence[TextRecord] = ()
    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplaceResult:
    """Window ids that `replace_file_windows` deleted and created (to update a FAISS index in place)."""

    removed_window_ids: list[int]
    added_window_ids: list[int]


@dataclass(frozen=True)
class WindowDetails:
    """A window as a search result shows it: where it is and what was said about it."""

    window_id: int
    file_id: int
    path: str
    index: int
    start_s: float
    end_s: float
    file_duration_s: float | None
    format: str | None
    texts: tuple[TextRecord, ...]


@dataclass(frozen=True)
class RunRecord:
    id: int
    started_at: datetime
    finished_at: datetime | None
    status: str
    files_seen: int
    files_indexed: int
    files_failed: int
    files_pruned: int
    shard: str | None
    host: str | None = None
    pid: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["started_at"] = json_time(self.started_at)
        data["finished_at"] = json_time(self.finished_at)
        return data


@dataclass(frozen=True)
class VectorIndexInfo:
    """The FAISS index of one vector kind as the database records it.

    `requested_type` is what was asked for (`--index-type`, else the type in use, else flat); `effective_type` what
    was built from `vectors` vectors (IVF-PQ needs enough vectors to train and is built as flat until then), None
    when there were none; `params` the built index's parameters (HNSW M, IVF lists, PQ codes, ...), or with none
    built, the search knobs the user set for it (`index_types.SEARCH_KNOBS`).
    """

    kind: str
    requested_type: str
    effective_type: str | None
    params: Mapping[str, Any]
    vectors: int
    updated_at: datetime

    @property
    def fell_back(self) -> bool:
        """Whether the index built is not the type asked for (IVF-PQ on too few vectors)."""
        return self.effective_type is not None and self.effective_type != self.requested_type

    def to_json(self) -> dict[str, Any]:
        return {
            "requested_type": self.requested_type,
            "effective_type": self.effective_type,
            "params": dict(self.params),
            "vectors": self.vectors,
            "updated_at": json_time(self.updated_at),
        }

"""Indexing a file from an indexed file with the same bytes (one moved, renamed or copied), without decoding it.

Same bytes decode to the same windows, and the same windows give the same audio embeddings and captions, so a
file whose content hash (sha256) an indexed file has can take that file's windows: their audio vectors always,
and the texts and caption vector of each window whose texts the caller accepts (written for the prompts and in
the mode it would write them); the other windows wait for captions as any new window does (pass 2 captions
them once for all the copies: `uncaptioned_twins`). Each copy is one transaction, like
`Store.replace_file_windows`, and the source is read under a share lock, so a run or shard writing it meanwhile
(captions, a re-index, a prune) is waited for rather than half seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, selectinload

from ..chunking import chunked
from .queries import IDS_PER_QUERY, NO_SYNC, file_for_update, vectors_changed
from .records import TextRecord
from .schema import AudioFileRow, GeneratedTextRow, WindowRow, WindowVectorRow
from .store import Store

TextsCheck = Callable[[Sequence[TextRecord]], bool]  # whether a window's texts may be taken as they are


@dataclass(frozen=True)
class CopiedFile:
    """What `copy_identical_file` stored: `windows` windows of `source`, `captioned` of them with their captions;
    `notes`: what decoding noticed in the source (a truncation, the decoders' messages), now the copy's too."""

    source: str
    windows: int
    captioned: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Source:
    row: AudioFileRow
    windows: Sequence[WindowRow]
    taken: Sequence[bool]  # per window: whether its captions are taken (`_captions_taken`), decided once

    @property
    def captioned(self) -> int:
        """Windows whose texts the caller accepts."""
        return sum(self.taken)


def sizes_indexed(store: Store, sizes: Iterable[int]) -> set[int]:
    """Those of `sizes` that an indexed file with a content hash has: files of other sizes hold other bytes, so
    only files of these sizes are worth hashing to look for an identical one."""
    found: set[int] = set()
    query = select(AudioFileRow.size).distinct().where(AudioFileRow.status == "indexed")
    query = query.where(AudioFileRow.content_hash.is_not(None))
    with store.session() as session:
        for chunk in chunked(sorted(set(sizes)), IDS_PER_QUERY):
            found.update(session.scalars(query.where(AudioFileRow.size.in_(chunk))))
    return found


Stamp = tuple[int, float]  # a file's size and mtime as recorded (`scan.stamp_of`)


def unhashed_files(store: Store, sizes: Iterable[int]) -> dict[str, Stamp]:
    """The indexed files of `sizes` that have no content hash (indexed before schema revision 0002, unchanged since),
    by path with their recorded stamp: hashed, they may be found identical to a new file (`record_content_hash`)."""
    found: dict[str, Stamp] = {}
    query = select(AudioFileRow.path, AudioFileRow.size, AudioFileRow.mtime).where(AudioFileRow.status == "indexed")
    query = query.where(AudioFileRow.content_hash.is_(None))
    with store.session() as session:
        for chunk in chunked(sorted(set(sizes)), IDS_PER_QUERY):
            found.update(
                (path, (size, mtime))
                for path, size, mtime in session.execute(query.where(AudioFileRow.size.in_(chunk)))
            )
    return found


def record_content_hash(store: Store, path: str, stamp: Stamp, content_hash: str) -> bool:
    """Record the content hash of the file at `path`, which had none, while it is still recorded with `stamp` (the
    hash is of those bytes); whether it was."""
    size, mtime = stamp
    statement = (
        update(AudioFileRow)
        .where(AudioFileRow.path == path, AudioFileRow.size == size, AudioFileRow.mtime == mtime)
        .where(AudioFileRow.content_hash.is_(None))
        .values(content_hash=content_hash)
    )
    with store.session(write=True) as session:
        return session.execute(statement, execution_options=NO_SYNC).rowcount == 1


def copy_identical_file(
    store: Store,
    path: str,
    sources: Sequence[int],
    texts_ok: TextsCheck,
    *,
    size: int,
    mtime: float,
    content_hash: str,
    run_id: int | None = None,
) -> CopiedFile | None:
    """Index `path` (with this stamp) as a copy of one of the files `sources` (ids, best first) that is still
    indexed with `content_hash`: the first whose every window's texts `texts_ok` accepts, else the one with most
    such windows. None, with nothing written, when none is (pruned or changed meanwhile)."""
    with store.session(write=True) as session:
        source = _best_source(session, path, sources, content_hash, texts_ok)
        if source is None:
            return None
        target = file_for_update(session, path)
        if target is None:
            target = AudioFileRow(path=path)
            session.add(target)
            session.flush()
        replaced = session.execute(delete(WindowRow).where(WindowRow.file_id == target.id), execution_options=NO_SYNC)
        _stamp_as_copy(target, source.row, size=size, mtime=mtime, run_id=run_id)
        session.add_all(
            _window_copy(target.id, window, taken) for window, taken in zip(source.windows, source.taken, strict=True)
        )
        # Every copied window has its audio vector; caption vectors come with some, and may go with those replaced.
        vectors_changed(session, ["audio"] + (["text"] if source.captioned or replaced.rowcount else []))
        notes = tuple(source.row.error.splitlines()) if source.row.error else ()
        return CopiedFile(source.row.path, len(source.windows), source.captioned, notes)


def _best_source(
    session: Session, path: str, sources: Sequence[int], content_hash: str, texts_ok: TextsCheck
) -> _Source | None:
    best: _Source | None = None
    for source_id in sources:
        source = _locked_source(session, source_id, path, content_hash, texts_ok)
        if source is not None and (best is None or source.captioned > best.captioned):
            best = source
        if best is not None and best.captioned == len(best.windows):
            break
    return best


def _locked_source(
    session: Session, file_id: int, path: str, content_hash: str, texts_ok: TextsCheck
) -> _Source | None:
    """The file `file_id` with its windows, texts and vectors, share-locked until the copy commits; None unless it is
    another file than `path`, still indexed with `content_hash`, and every window has its audio vector (what
    captions are generated from)."""
    row = session.scalars(
        select(AudioFileRow)
        .where(AudioFileRow.id == file_id, AudioFileRow.path != path, AudioFileRow.status == "indexed")
        .where(AudioFileRow.content_hash == content_hash)
        .with_for_update(read=True)
    ).one_or_none()
    if row is None:
        return None
    windows = session.scalars(
        select(WindowRow)
        .where(WindowRow.file_id == file_id)
        .order_by(WindowRow.index)
        .options(selectinload(WindowRow.texts), selectinload(WindowRow.vectors))
        .with_for_update(read=True)
    ).all()
    if not windows or not all(_vector(window, "audio") is not None for window in windows):
        return None
    return _Source(row, windows, [_captions_taken(window, texts_ok) for window in windows])


def _stamp_as_copy(target: AudioFileRow, source: AudioFileRow, *, size: int, mtime: float, run_id: int | None) -> None:
    """The copy's own stamp, and what decoding found in the source (the same bytes decode the same)."""
    target.size, target.mtime, target.content_hash = size, mtime, source.content_hash
    target.duration_s, target.sample_rate, target.channels = source.duration_s, source.sample_rate, source.channels
    target.format, target.error = source.format, source.error  # an indexed file's notes (see FileRecord)
    target.status, target.run_id, target.indexed_at = "indexed", run_id, datetime.now(timezone.utc)


def _window_copy(file_id: int, window: WindowRow, with_captions: bool) -> WindowRow:
    """A new window (a new id, so FAISS files and servers take it as new) with the audio vector of `window`, and
    its texts and caption vector when `with_captions`."""
    kinds = ("audio", "text") if with_captions else ("audio",)
    return WindowRow(
        file_id=file_id,
        index=window.index,
        start_s=window.start_s,
        end_s=window.end_s,
        texts=[GeneratedTextRow.of(text.to_record()) for text in (window.texts if with_captions else ())],
        vectors=[WindowVectorRow(kind=kind, vector=_vector(window, kind)) for kind in kinds],
    )


def _captions_taken(window: WindowRow, texts_ok: TextsCheck) -> bool:
    """Whether the window is captioned (its caption vector: see `captions`) with texts the caller accepts."""
    return _vector(window, "text") is not None and texts_ok([text.to_record() for text in window.texts])


def _vector(window: WindowRow, kind: str) -> bytes | None:
    return next((row.vector for row in window.vectors if row.kind == kind), None)

"""The file a vector index is saved in: a checked header, JSON metadata, then faiss's own serialisation.

    header    magic b"PENGIVEC", format version, payload bytes, crc32 of metadata + payload, metadata bytes
    metadata  JSON: {"params": build parameters, "dim": d, "count": n, "tag": what the vectors came from,
              "removed": the ids of tombstoned vectors (see `vectors`), stored among the n but no longer live,
              "version": the database's version of the vectors held (`Store.vector_state`), or null}
    payload   faiss.write_index of the id-mapped index

"removed" and "version" are optional (files written before them have none); a reader that does not know "removed"
sees the tombstoned ids as live, and its check against the database drops them again; a file without "version" is
checked against the database's ids.

Writes are atomic (temp file, fsync, rename, fsync of the folder), so a crash leaves the old file or the new one;
changing the parameters alone (`update_index_params`: a search knob) copies the payload's bytes as they are.
Reads check magic, version, length and checksum before faiss parses a byte, and the index against the metadata.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import faiss
import numpy as np

from pengi_search.errors import PengiSearchError
from pengi_search.paths import made_folder
from pengi_search.written_aside import fsync_folder

_MAGIC = b"PENGIVEC"
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQII")  # magic, format version, payload bytes, crc32, metadata bytes
_META_KEYS = {"params", "dim", "count", "tag"}
_IO_BLOCK = 1 << 22


class VectorIndexError(PengiSearchError):
    """Bad vectors or ids, or an index file that cannot be read or written."""


class DamagedIndexFileError(VectorIndexError):
    """An index file whose bytes are not those written (`update_index_params` finds out as it copies them)."""


class IndexFile(NamedTuple):
    """What `read_index_file` read."""

    index: faiss.IndexIDMap2
    params: dict[str, Any]  # the build parameters
    tag: str
    removed: np.ndarray  # the tombstoned ids, int64
    version: int | None


def write_index_file(
    path: str | os.PathLike[str],
    index: faiss.IndexIDMap2,
    params: dict[str, Any],
    tag: str,
    *,
    removed: np.ndarray | None = None,
    version: int | None = None,
) -> None:
    """Save `index` with its build parameters, `tag`, `removed` ids and `version` atomically (temp file, fsync,
    rename, fsync of the folder).

    A folder that cannot be made or written raises `paths.made_folder`'s UnwritableFolderError."""
    dead = [] if removed is None else np.asarray(removed, dtype=np.int64).tolist()
    fields = {"params": params, "dim": int(index.d), "count": int(index.ntotal), "tag": tag, "removed": dead}
    fields["version"] = version

    def payload(out: BinaryIO, crc: int) -> tuple[int, int]:
        return _write_payload(index, out, crc)

    _write_atomically(Path(path), fields, payload)


def update_index_params(path: str | os.PathLike[str], changes: Mapping[str, Any]) -> None:
    """Rewrite the file at `path` with `changes` made to its parameters (search knobs: see `index_types`), the rest
    as it was: faiss's serialisation is copied as bytes, never parsed, so a large index takes a file copy's time and
    no memory. Atomic as `write_index_file`; the old file's checksum is checked along the copy, so a damaged file is
    never given a valid one (DamagedIndexFileError; FileNotFoundError when missing)."""
    source = Path(path)
    with open(source, "rb") as stream:
        payload_size, crc, meta_size = _read_front(source, stream)
        meta_bytes = stream.read(meta_size)
        meta = _parse_meta(source, meta_bytes)
        meta["params"] = {**meta["params"], **changes}

        def payload(out: BinaryIO, new_crc: int) -> tuple[int, int]:
            old_crc, left = zlib.crc32(meta_bytes), payload_size
            while left and (chunk := stream.read(min(_IO_BLOCK, left))):
                out.write(chunk)
                old_crc, new_crc, left = zlib.crc32(chunk, old_crc), zlib.crc32(chunk, new_crc), left - len(chunk)
            if left or stream.read(1) or old_crc != crc:
                raise DamagedIndexFileError(str(source), "checksum mismatch (the file is damaged)")
            return payload_size, new_crc

        _write_atomically(source, meta, payload)


def _write_atomically(
    target: Path, fields: dict[str, Any], payload: Callable[[BinaryIO, int], tuple[int, int]]
) -> None:
    """Write the header, `fields` as the metadata and what `payload(out, crc of the metadata)` writes (returning its
    size and the crc continued over it) to a temp file beside `target`, then rename it into place."""
    made_folder(target.parent)  # a PostgreSQL library's files go in the data folder: its trouble said as elsewhere
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    meta = json.dumps(fields).encode()
    try:
        with open(temp, "wb") as out:
            out.write(_HEADER.pack(_MAGIC, _FORMAT_VERSION, 0, 0, len(meta)))
            out.write(meta)
            size, crc = payload(out, zlib.crc32(meta))
            out.seek(0)
            out.write(_HEADER.pack(_MAGIC, _FORMAT_VERSION, size, crc, len(meta)))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):
            raise VectorIndexError(str(target), f"cannot write the index: {exc}") from exc
        raise
    fsync_folder(target.parent)


def read_index_file(path: str | os.PathLike[str]) -> IndexFile:
    """What a file written by `write_index_file` holds.

    Raises FileNotFoundError when missing and VectorIndexError when damaged.
    """
    source = Path(path)
    with open(source, "rb") as stream:
        meta = _read_header(source, stream)
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(stream.read, _IO_BLOCK))
        except RuntimeError as exc:
            raise VectorIndexError(str(source), f"faiss cannot read the index: {exc}") from exc
    if not isinstance(index, faiss.IndexIDMap2) or index.d != meta["dim"] or index.ntotal != meta["count"]:
        raise VectorIndexError(str(source), "index contents do not match the file header")
    return IndexFile(index, meta["params"], str(meta["tag"]), _removed_ids(source, meta), _version(source, meta))


def read_index_tag(path: str | os.PathLike[str]) -> str:
    """The tag of a file written by `write_index_file`, from its header alone (the rest is neither read nor checked).

    Raises FileNotFoundError when missing and VectorIndexError when the header is damaged.
    """
    return read_index_header(path)[0]


def read_index_header(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(tag, how many tombstoned ids it holds) of a file written by `write_index_file`, from its header alone (as
    `read_index_tag`)."""
    source = Path(path)
    with open(source, "rb") as stream:
        meta_size = _read_front(source, stream)[2]
        meta_bytes = stream.read(meta_size)
    if len(meta_bytes) != meta_size:
        raise VectorIndexError(str(source), "truncated header")
    meta = _parse_meta(source, meta_bytes)
    return str(meta["tag"]), len(_removed_ids(source, meta))


def _write_payload(index: Any, out: BinaryIO, crc: int) -> tuple[int, int]:
    """Stream faiss's serialisation into `out`; returns its size and the crc32 continued from `crc`."""
    size = 0

    def write(chunk: bytes) -> int:
        nonlocal size, crc
        out.write(chunk)
        size += len(chunk)
        crc = zlib.crc32(chunk, crc)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(write, _IO_BLOCK))
    return size, crc


def _read_header(source: Path, stream: BinaryIO) -> dict[str, Any]:
    """Check magic, version, length and checksum; leaves `stream` at the start of the faiss payload."""
    payload_size, crc, meta_size = _read_front(source, stream)
    expected_size = _HEADER.size + meta_size + payload_size
    actual_size = os.fstat(stream.fileno()).st_size
    if actual_size != expected_size:
        raise VectorIndexError(str(source), f"{actual_size} bytes where the header promises {expected_size}")
    meta_bytes = stream.read(meta_size)
    payload_start = stream.tell()
    actual_crc = zlib.crc32(meta_bytes)
    while chunk := stream.read(_IO_BLOCK):
        actual_crc = zlib.crc32(chunk, actual_crc)
    if actual_crc != crc:
        raise VectorIndexError(str(source), "checksum mismatch (the file is damaged)")
    meta = _parse_meta(source, meta_bytes)
    stream.seek(payload_start)
    return meta


def _read_front(source: Path, stream: BinaryIO) -> tuple[int, int, int]:
    """Check magic and version; returns the payload's size, the checksum and the metadata's size."""
    head = stream.read(_HEADER.size)
    if len(head) != _HEADER.size:
        raise VectorIndexError(str(source), "truncated header")
    magic, version, payload_size, crc, meta_size = _HEADER.unpack(head)
    if magic != _MAGIC:
        raise VectorIndexError(str(source), "not a pengi-search vector index")
    if version != _FORMAT_VERSION:
        raise VectorIndexError(str(source), f"format version {version}, this pengi-search reads {_FORMAT_VERSION}")
    return payload_size, crc, meta_size


def _removed_ids(source: Path, meta: dict[str, Any]) -> np.ndarray:
    try:
        return np.array(meta.get("removed", []), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise VectorIndexError(str(source), f"unreadable header metadata: removed ids: {exc}") from exc


def _version(source: Path, meta: dict[str, Any]) -> int | None:
    version = meta.get("version")
    if version is not None and type(version) is not int:  # JSON's true is an int to isinstance
        raise VectorIndexError(str(source), f"unreadable header metadata: version {version!r}")
    return version


def _parse_meta(source: Path, meta_bytes: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(meta_bytes)
        if not _META_KEYS.issubset(meta):
            raise ValueError(f"missing {sorted(_META_KEYS - set(meta))}")
    except (ValueError, TypeError) as exc:
        raise VectorIndexError(str(source), f"unreadable header metadata: {exc}") from exc
    return meta

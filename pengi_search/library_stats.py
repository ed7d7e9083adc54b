"""What a library holds and what its indexes are, as `stats`, `tune` and `rebuild-index` and the server's
`/api/stats` tell it: the store's counts, the files cut short or failed, the latest runs, the database's size and,
per vector kind, its FAISS file and the index it is.

Everything here only reads: the database first, the FAISS files' headers where the database lacks the record (a
library indexed before it kept one) and for their sizes. Another library's file left beside the database counts as
none (`index_files.owned_tag`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .db import VECTOR_KINDS, Store, VectorIndexInfo, caption_stats, default_index_path, sqlite_file
from .index_files import described_by_file, index_file
from .index_types import searched_with
from .pathnames import path_fields


def index_info(store: Store) -> dict[str, VectorIndexInfo | None]:
    """Per kind, what its index is: the type asked for, the type built and its parameters (None: never built).

    From the database; a library indexed before it kept this record is described from its FAISS file.
    """
    recorded = store.vector_indexes()
    return {kind: recorded.get(kind) or described_by_file(store, kind) for kind in VECTOR_KINDS}


def indexes_json(store: Store) -> dict[str, dict[str, Any]]:
    """`vector_indexes` of `stats --json` and of the server's `/api/stats`: per kind, where its FAISS file is, its
    size and the removed vectors it still stores (None: no file of this library's; `removed` None too when its
    header is damaged) and what index it is: `index_type` is the type built."""
    indexes = {}
    for kind, info in index_info(store).items():
        file = index_file(store, kind)
        data: dict[str, Any] = {
            "path": str(default_index_path(store.url, kind)),
            "bytes": None if file is None else file.bytes,
            "removed": None if file is None else file.removed,
            "index_type": None,
            "requested_type": None,
            "ef_search": None,
            "nprobe": None,
        }
        if info is not None:
            recorded = info.to_json()
            data |= {"index_type": recorded.pop("effective_type")} | recorded
            data |= searched_with(info.effective_type, info.params)
        indexes[kind] = data
    return indexes


def stats_json(store: Store, *, runs: int, failed: int | None = None, readable: bool = False) -> dict[str, Any]:
    """What the library holds, as `stats --json` and the server's `/api/stats` give it: the store's counts, the
    captions, the files cut short and the `failed` first failed files (all when None), the latest `runs`, the
    SQLite file's size with its write-ahead log (None for a server's database) and `indexes_json`. `readable`:
    names escaped where not UTF-8, for the server's encoder (`path_fields`)."""
    data = store.stats()
    data["captions"] = caption_stats(store)
    data["truncated"] = [
        {**path_fields(record.path, readable=readable), "note": record.truncated} for record in store.truncated_files()
    ]
    data["failed"] = [
        {**path_fields(path, readable=readable), "error": error} for path, error in store.failed_files(failed)
    ]
    data["runs"] = [run.to_json() for run in store.runs(limit=runs)]
    db_file = sqlite_file(store.url)
    data["database_bytes"] = None if db_file is None else _sqlite_bytes(db_file)
    data["vector_indexes"] = indexes_json(store)
    return data


def _sqlite_bytes(db_file: Path) -> int | None:
    """The database file with its write-ahead log; None when the file cannot be measured."""
    sizes = [_size(Path(f"{db_file}{suffix}")) for suffix in ("", "-wal")]
    return None if sizes[0] is None else sum(size or 0 for size in sizes)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None

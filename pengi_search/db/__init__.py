"""The database of a library: where it is (`urls`), its tables (`schema`), the records it hands out (`records`),
engines (`engine`), how it is opened (`access`: created by `index` only, read-only for readers), schema upgrades
(`migrate`), the `Store` that reads and writes it (`store`, with its journal of indexing runs in `runs`, what search,
`export` and `stats` read in `reads`, the record of what builds the index in `index_meta`, and the SQL pieces it
shares with `captions` and `copies` in `queries`) and the lock that lets one indexing run at a time write to it
(`run_lock`).

Callers import from here; the ORM rows, engine and migration helpers stay in their modules for the store, the
Alembic environment and tests.
"""

from .access import library_exists
from .captions import (
    CaptionCounts,
    Twin,
    UncaptionedWindow,
    WindowCaptions,
    add_captions,
    caption_counts,
    caption_modes,
    caption_stats,
    drop_fast_captions,
    uncaptioned_twins,
    uncaptioned_windows,
)
from .copies import (
    CopiedFile,
    TextsCheck,
    copy_identical_file,
    record_content_hash,
    sizes_indexed,
    unhashed_files,
)
from .errors import (
    DatabaseFailureError,
    DatabaseUnreachableError,
    IndexBusyError,
    MissingDatabaseError,
    RefusedInputError,
    StoreError,
    StoreMismatchError,
)
from .records import (
    FILE_STATUSES,
    RUN_STATUSES,
    TRUNCATED_NOTE,
    VECTOR_KINDS,
    EmbedderInfo,
    FileRecord,
    FileStamp,
    IndexMeta,
    ModelInfo,
    ReplaceResult,
    RunRecord,
    StoredAudio,
    TextRecord,
    VectorIndexInfo,
    WindowDetails,
    WindowInput,
    non_finite_vector,
)
from .store import Store
from .urls import (
    DB_ENV_VAR,
    default_db_url,
    default_index_dir,
    default_index_path,
    normalize_db_url,
    resolve_db_url,
    sqlite_file,
)

__all__ = [
    "DB_ENV_VAR",
    "FILE_STATUSES",
    "RUN_STATUSES",
    "TRUNCATED_NOTE",
    "VECTOR_KINDS",
    "CaptionCounts",
    "CopiedFile",
    "DatabaseFailureError",
    "DatabaseUnreachableError",
    "EmbedderInfo",
    "FileRecord",
    "FileStamp",
    "IndexBusyError",
    "IndexMeta",
    "MissingDatabaseError",
    "ModelInfo",
    "RefusedInputError",
    "ReplaceResult",
    "RunRecord",
    "Store",
    "StoreError",
    "StoreMismatchError",
    "StoredAudio",
    "TextRecord",
    "TextsCheck",
    "Twin",
    "VectorIndexInfo",
    "UncaptionedWindow",
    "WindowCaptions",
    "WindowDetails",
    "WindowInput",
    "non_finite_vector",
    "add_captions",
    "caption_counts",
    "caption_modes",
    "caption_stats",
    "copy_identical_file",
    "drop_fast_captions",
    "default_db_url",
    "default_index_dir",
    "default_index_path",
    "library_exists",
    "normalize_db_url",
    "record_content_hash",
    "resolve_db_url",
    "sizes_indexed",
    "unhashed_files",
    "sqlite_file",
    "uncaptioned_twins",
    "uncaptioned_windows",
]

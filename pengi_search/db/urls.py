"""Where a library lives: the database URL (from `--db`, `$PENGI_SEARCH_DB` or the default) and its FAISS files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from pengi_search.errors import UsageError
from pengi_search.pathnames import is_utf8
from pengi_search.paths import data_dir

from .records import check_vector_kind

DB_ENV_VAR = "PENGI_SEARCH_DB"
DB_FILENAME = "index.db"


def default_db_url() -> str:
    """`$PENGI_SEARCH_DB` when set (URL or file path), else `index.db` in `pengi_search.paths.data_dir()`."""
    return normalize_db_url(os.environ.get(DB_ENV_VAR) or data_dir() / DB_FILENAME)


def resolve_db_url(db: str | os.PathLike[str] | None = None) -> str:
    """The URL for an explicit `--db` value (URL or file path), else `default_db_url()`."""
    return default_db_url() if db is None or os.fspath(db) == "" else normalize_db_url(db)


def normalize_db_url(db: str | os.PathLike[str]) -> str:
    """An SQLAlchemy URL for `db`: URLs (anything with `://`) pass through, file paths become SQLite URLs.

    A path whose name is not valid UTF-8 is refused: a URL cannot hold it (library files may have such names; the
    database and its FAISS files may not)."""
    value = os.fspath(db)
    if not is_utf8(value):
        raise UsageError(value, "the database's path is not valid UTF-8; put the database in a folder whose name is")
    if "://" in value:
        return value
    return URL.create("sqlite", database=str(Path(value).expanduser().absolute())).render_as_string()


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for other backends and in-memory databases."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


def default_index_dir(url: str | URL) -> Path:
    """Where the FAISS files of a database live: beside a SQLite file, else in the data folder."""
    db_file = sqlite_file(url)
    return db_file.parent if db_file is not None else data_dir()


def default_index_path(url: str | URL, kind: str) -> Path:
    """The FAISS file for vectors of `kind`, named after the database so that several never collide."""
    check_vector_kind(kind)
    db_file = sqlite_file(url)
    if db_file is not None:
        stem = db_file.stem
    else:
        parsed = make_url(url)
        digest = hashlib.sha256(parsed.render_as_string(hide_password=True).encode()).hexdigest()[:12]
        stem = f"{parsed.get_backend_name()}-{digest}"
    return default_index_dir(url) / f"{stem}.{kind}.faiss"

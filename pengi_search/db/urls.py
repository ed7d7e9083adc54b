"""Where a library lives: the database URL (from `--db`, `$PENGI_SEARCH_DB` or the default) and its FAISS files."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pengi_search.errors import UsageError
from pengi_search.pathnames import is_utf8
from pengi_search.paths import as_typed, data_dir, home_expanded

from .errors import DatabaseURLError
from .records import check_vector_kind

DB_ENV_VAR = "PENGI_SEARCH_DB"
DB_FILENAME = "index.db"
POSTGRES_DRIVER = "postgresql+psycopg"
URL_EXAMPLE = f"{POSTGRES_DRIVER}://user:password@host/database"

# The backends a mistyped URL names (`postgresql+psycopg//...`, `postgresql:/...`): such a value is not a file path.
_URL_LIKE = re.compile(r"^(postgres|postgresql|sqlite|mysql|mariadb|oracle|mssql)(\+\w+)?(:/|//)", re.IGNORECASE)
_PASSWORD = re.compile(r"^([^/@]*//[^/:@]*:)[^/]*@")  # up to the host's '@', also past an unescaped '@' in it


def default_db_url() -> str:
    """`$PENGI_SEARCH_DB` when set (URL or file path, `~` expanded: no shell did it), else `index.db` in
    `pengi_search.paths.data_dir()`."""
    named = os.environ.get(DB_ENV_VAR)
    if not named:
        return normalize_db_url(data_dir() / DB_FILENAME)
    return normalize_db_url(named if "://" in named else home_expanded(named))


def resolve_db_url(db: str | os.PathLike[str] | None = None) -> str:
    """The URL for an explicit `--db` value (URL or file path), else `default_db_url()`."""
    named = given_db(db)
    return normalize_db_url(named) if named else default_db_url()


def names_default_db(db: str | os.PathLike[str] | None) -> bool:
    """Whether `db` leaves the library where nobody named it: no `--db`, no `$PENGI_SEARCH_DB`, so `index.db` in
    the data folder. A place there that cannot hold a library is the data folder's trouble, not a bad `--db`."""
    return not given_db(db) and not os.environ.get(DB_ENV_VAR)


def given_db(db: str | os.PathLike[str] | None) -> str:
    """`--db` as given; empty when it was left out, or given empty (as an unset shell variable gives it)."""
    return "" if db is None else os.fspath(db)


def normalize_db_url(db: str | os.PathLike[str]) -> str:
    """An SQLAlchemy URL for `db`: URLs (anything with `://`) pass through, file paths become SQLite URLs (of the
    path as given: a leading `~` is a folder's name, as in a URL, where SQLite takes it so).

    A path whose name is not valid UTF-8 is refused: a URL cannot hold it (library files may have such names; the
    database and its FAISS files may not)."""
    value = os.fspath(db)
    if not is_utf8(value):
        raise UsageError(value, "the database's path is not valid UTF-8; put the database in a folder whose name is")
    if "://" in value:
        return value
    if _URL_LIKE.match(value):
        raise DatabaseURLError(shown_db_url(value), f"not a database URL (the form is {URL_EXAMPLE})")
    return URL.create("sqlite", database=str(Path(value).absolute())).render_as_string()


def parse_db_url(url: str | URL) -> URL:
    """`url` parsed; DatabaseURLError (bad usage, password hidden) when it cannot be, e.g. a port that is no number."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        what = "its port is not a number" if isinstance(exc, ValueError) else str(exc)  # int(port) is the ValueError
        raise DatabaseURLError(shown_db_url(url), f"not a database URL ({what}; the form is {URL_EXAMPLE})") from exc
    if "@" in (parsed.host or ""):  # the password's own '@' ended it early: the rest of it would read as the host
        raise DatabaseURLError(shown_db_url(url), "an '@' in the password must be written %40 in the URL")
    return parsed


def with_driver(url: URL) -> URL:
    """`url` with the driver pengi-search connects through: the bare `postgresql` means psycopg2 to SQLAlchemy, but
    psycopg 3 is what we ship, and `postgres` is libpq's short form; so all three spellings are one database."""
    return url.set(drivername=POSTGRES_DRIVER) if url.drivername in ("postgresql", "postgres") else url


def shown_db_url(url: str | URL) -> str:
    """`url` as every message, `stats` and `doctor` show it: with the driver it is used through (`with_driver`:
    `postgres://` shows as `postgresql+psycopg://`, as the store names it) and its password as `***`, also when
    the URL does not parse."""
    if isinstance(url, URL):
        return with_driver(url).render_as_string(hide_password=True)
    try:
        parsed: URL | None = make_url(url)
    except (ArgumentError, ValueError):
        parsed = None
    if parsed is None or "@" in (parsed.host or ""):  # SQLAlchemy cannot tell the password: cut it from the text
        return _PASSWORD.sub(r"\1***@", url)
    return with_driver(parsed).render_as_string(hide_password=True)


def library_name(db: str | os.PathLike[str] | None = None) -> str:
    """How every error names the library at `db` (a `--db` value; None or empty: the default one): as the user
    named it. A file path as typed (`./lib.db`, not the SQLite URL made of it), a URL as `shown_db_url` shows it
    (password hidden), and a library the user did not name (`$PENGI_SEARCH_DB`, the data folder's) as
    `library_name_of_url` names it."""
    named = "" if db is None else os.fspath(db)
    if "://" in named:
        return shown_db_url(named)
    return named or library_name_of_url(default_db_url())


def library_name_of_url(url: str | URL) -> str:
    """How errors name a library known only by its URL: a SQLite file as `paths.as_typed` shows it (relative to the
    current folder when under it), any other database as `shown_db_url` shows it."""
    try:
        db_file = sqlite_file(url)
    except DatabaseURLError:  # a name is for a message: one that cannot be parsed is still shown
        db_file = None
    return str(as_typed(db_file)) if db_file is not None else shown_db_url(url)


def db_option(db: str | os.PathLike[str] | None) -> str:
    """` --db VALUE` for a command hint that names the database the user named (empty when none was named).

    Quoted for the shell, so that the hint can be pasted as it is: a file path may hold spaces, a server's URL `?`
    and `&`, and its password is shown as `***`."""
    named = given_db(db)
    return f" --db {shlex.quote(library_name(named))}" if named else ""


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL, the one SQLite opens (a relative path from the current folder, `~` a
    folder's name); None for other backends and in-memory databases."""
    parsed = parse_db_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).absolute()


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
        parsed = parse_db_url(url)  # named as shown: each spelling of the driver names the same files
        digest = hashlib.sha256(shown_db_url(parsed).encode()).hexdigest()[:12]
        stem = f"{parsed.get_backend_name()}-{digest}"
    return default_index_dir(url) / f"{stem}.{kind}.faiss"

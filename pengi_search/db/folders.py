"""The folders that hold a library's files, as the database tells them without handing over a row per file.

`index_hints.library_folders` names the folders an `index` command should walk. Reading every path to find them
cost seconds per million files each time a hint was shown; instead the database answers, a folder at a time, what
lies directly in it (whether it holds a file itself, and which subfolders hold files further down) and the first
and last path below a folder (so that a walk jumps over folders that hold a single subfolder and nothing else).

Paths are compared byte by byte here (code point by code point, as Python compares them): SQLite's own order, and
PostgreSQL's "C" collation, where the database's own would sort `a/b` and `a b` by the letters alone. On SQLite
each answer is a few searches of the paths' index (a subfolder's files are the range `folder/name/` to
`folder/name0`, '0' being the character after '/', so the next subfolder starts at the first path past it); on
PostgreSQL, whose index keeps the database's collation, one read of the folder's paths inside the server. All of
it works on the stored form of a path (`OsText`), whose escape never holds a '/'.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, case, func, select, text, type_coerce

from ..pathnames import from_stored, to_stored
from .queries import paths_under
from .schema import AudioFileRow, OsText
from .store import Store

PathSpan = tuple[str, str]  # the first and last of some paths in byte order: every path between shares their prefix


@dataclass(frozen=True)
class FolderContents:
    """What lies directly in a folder: whether a file (`holds_files`), and the names of the subfolders that hold
    files further down (`subfolders`; all of them only where it holds no file itself)."""

    holds_files: bool
    subfolders: list[str]


def path_span(store: Store, under: str | None = None) -> PathSpan | None:
    """The first and last path in byte order of the files below the folder `under` (all when None); None when
    there is none. On SQLite two searches of the paths' index."""
    path = _byte_ordered(store, AudioFileRow.path)
    first = select(func.min(path)).where(paths_under(under)).scalar_subquery()
    last = select(func.max(path)).where(paths_under(under)).scalar_subquery()
    with store.reading() as connection:
        row = connection.execute(select(type_coerce(first, OsText), type_coerce(last, OsText))).one()
    return None if row[0] is None else (row[0], row[1])


def folder_contents(store: Store, folder: str) -> FolderContents:
    """What lies directly in `folder` (`FolderContents`)."""
    prefix = to_stored(folder.rstrip("/") + "/")
    if store.engine.dialect.name == "sqlite":
        return _contents_by_search(store, prefix)
    return _contents_by_reading(store, prefix)


# One row per subfolder, found by a search of the index from where the one before ends, until the first file that
# lies directly in the folder (after which nothing more is needed) or the folder's end. `rest`: what follows the
# folder's name and its '/', a file's name or a subfolder's name, its '/' and more.
_SEARCH = text("""
WITH RECURSIVE entry(path) AS (
    SELECT (SELECT min(path) FROM audio_files WHERE path >= :prefix AND path < :after)
    UNION ALL
    SELECT (
        SELECT min(path) FROM audio_files
        WHERE path >= substr(entry.path, 1, :length + instr(substr(entry.path, :length + 1), '/') - 1) || '0'
        AND path < :after
    )
    FROM entry WHERE instr(substr(entry.path, :length + 1), '/') > 0
)
SELECT path FROM entry WHERE path IS NOT NULL
""")


def _contents_by_search(store: Store, prefix: str) -> FolderContents:
    parameters = {"prefix": prefix, "after": prefix[:-1] + "0", "length": len(prefix)}
    with store.reading() as connection:
        firsts = connection.execute(_SEARCH, parameters).scalars().all()
    names = [first[len(prefix) :].partition("/") for first in firsts]
    return FolderContents(
        holds_files=any(not slash for _, slash, _ in names),
        subfolders=[from_stored(name) for name, slash, _ in names if slash],
    )


def _contents_by_reading(store: Store, prefix: str) -> FolderContents:
    rest = func.substr(AudioFileRow.path, len(prefix) + 1)
    slash = func.strpos(rest, "/")
    name = case((slash == 0, ""), else_=func.substr(rest, 1, slash - 1))  # "": a file directly in the folder
    query = select(name).distinct().where(paths_under(from_stored(prefix)))
    with store.reading() as connection:
        names = connection.execute(query).scalars().all()
    return FolderContents(holds_files="" in names, subfolders=[from_stored(name) for name in names if name != ""])


def _byte_ordered(store: Store, column: ColumnElement[str]) -> ColumnElement[str]:
    """`column` compared by code point: SQLite's own order; PostgreSQL's "C" collation."""
    return column if store.engine.dialect.name == "sqlite" else column.collate("C")

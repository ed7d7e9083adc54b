"""The errors of the database layer (below every module of `pengi_search.db`, so that each can raise them)."""

from __future__ import annotations

import re
import shlex

from pengi_search.errors import PengiSearchError, UsageError


class StoreError(PengiSearchError):
    """A database could not be opened, read or written, or was given bad input."""


class StoreMismatchError(StoreError):
    """The index was built with another model or text embedder than the one asked for."""


class MissingDatabaseError(StoreError):
    """A command that only reads (or changes) a library was pointed at one that does not exist yet."""


class IndexBusyError(StoreError):
    """Another indexing run holds the library's lock."""


class DatabaseUnreachableError(StoreError):
    """The database did not answer: a connection could not be made (a server that is down or out of reach, a file
    that cannot be opened), or the one in use was lost. Trying again later may work: nothing is wrong with the
    request or the library."""


class DatabaseURLError(StoreError, UsageError):
    """`--db` / `$PENGI_SEARCH_DB` is not a URL pengi-search can use (a typo'd scheme, driver or port): bad usage."""


class ForeignDatabaseError(StoreError):
    """The database holds another application's tables, not a pengi-search library: nothing is read or written."""


def store_error(where: str, exc: BaseException) -> StoreError:
    """The StoreError for a failure of the database or its driver: DatabaseUnreachableError when SQLAlchemy found
    the connection lost or none could be made (`engine` counts a failed connection as lost)."""
    if getattr(exc, "connection_invalidated", False):
        return DatabaseUnreachableError(where, f"cannot reach the database: {driver_reason(exc)}")
    return StoreError(where, driver_reason(exc))


def driver_reason(exc: BaseException) -> str:
    """What the database or its driver said, on one line, without SQLAlchemy's wrapping ("(psycopg.X) ...", the
    statement, the link to its documentation); a server's missing database says who creates it."""
    reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    missing = re.search(r'database "([^"]+)" does not exist', reason)
    if missing:
        createdb = f"createdb {shlex.quote(missing[1])}"
        reason += f" (create it first, e.g. `{createdb}`: pengi-search makes its tables, not the database)"
    return reason

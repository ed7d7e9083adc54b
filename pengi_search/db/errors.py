"""The errors of the database layer (below every module of `pengi_search.db`, so that each can raise them)."""

from __future__ import annotations

import copy
import re
import shlex
from typing import Self

from sqlalchemy.exc import OperationalError

from pengi_search.errors import PengiSearchError, UsageError

SQLITE_LOCKED = "database is locked"  # SQLite's word, once its busy timeout is over
# Who most likely holds that lock: another program writing to the file (an `index` run holds the library's own lock
# and is named as such). The error's `where` names the file, as the user named it.
SQLITE_LOCK_HOLDER = (
    "another program is writing to the database file and held it past the wait; try again once it has finished"
)


INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE for a statement the role may not run
READ_ONLY_ROLE = (
    "this database role may only read the library (query, similar, stats and export work);"
    " this command needs a role that may write it"
)


class StoreError(PengiSearchError):
    """A database could not be opened, read or written, or was given bad input."""


class StoreMismatchError(StoreError):
    """The index was built with another model or text embedder than the one asked for: `problem` says what
    differs, `fix` (empty when nothing the caller can do helps) what makes it go, in the caller's words: a Python
    caller's by default (the argument `model=`); a command puts its options and a command to paste instead
    (`fixed_by`)."""

    def __init__(self, where: str, problem: str, fix: str = "") -> None:
        super().__init__(where, f"{problem}: {fix}" if fix else problem)
        self.problem = problem
        self.fix = fix

    def fixed_by(self, fix: str) -> Self:
        """This error, its fix said as `fix` (what a command says in its own words)."""
        fixed = copy.copy(self)
        fixed.fix, fixed.reason = fix, f"{self.problem}: {fix}"
        fixed.args = (self.where, fixed.reason)
        return fixed


class OtherModelError(StoreMismatchError):
    """A search whose model is not the library's (or the library's model is not installed here): embeddings of
    different models cannot be compared. Its fix names the argument `model=`; the commands name `--model` and the
    `index --reindex` that builds the library anew (`cli.search.model_fix`)."""


REINDEX_FIX = "run again with --reindex to index it anew (every caption and vector made again)"


class BuiltWithOtherError(StoreMismatchError):
    """A run that would write with another model or text embedder than the library was `built` with: `uses` is what
    it has (each as a person reads it, only what differs), `fix` the one thing that makes the run go, which a
    command that knows its own arguments gives as a command to paste (`fixed_by`)."""

    def __init__(self, where: str, built: str, uses: str, fix: str = REINDEX_FIX) -> None:
        super().__init__(where, f"the library was built with {built}, but this run uses {uses}", fix)
        self.built = built
        self.uses = uses


class MissingDatabaseError(StoreError):
    """A command that only reads (or changes) a library was pointed at one that does not exist yet."""


class ReadOnlyLibraryError(StoreError):
    """A command that writes a library was pointed at one it cannot write (a read-only file, folder or mount)."""


class IndexBusyError(StoreError):
    """Another indexing run holds the library's lock."""


class LibraryBusyError(IndexBusyError):
    """A shard's run found the whole library held, by an unsharded run: every shard of its job meets it alike (under
    torchrun, the machine's first rank says it once), where a shard held by another job's shard is that shard's."""


class RefusedInputError(StoreError):
    """What the store was given was refused: a vector that is NaN, empty or of the wrong width, a window's bad time
    span or repeated index, a file id that is not indexed, a value a statement's constraint or type refuses. The
    fault of that input alone: an `index` run fails the file (or window) it came from and goes on with the others,
    where a DatabaseFailureError stops it."""


class DatabaseFailureError(StoreError):
    """The database could not do the work for reasons of its own, whatever it was given: its disk is full, its file
    cannot be written (an I/O error, a read-only file system), another program holds its write lock, or it cannot
    be reached. An `index` run stops at once (exit 1) rather than record its files as failed, which would keep them
    out of every later run; the next run with the cause gone carries on where it stopped."""


class DatabaseUnreachableError(DatabaseFailureError):
    """The database did not answer: a connection could not be made (a server that is down or out of reach, a file
    that cannot be opened), or the one in use was lost. Trying again later may work: nothing is wrong with the
    request or the library."""


class DatabaseURLError(StoreError, UsageError):
    """`--db` / `$PENGI_SEARCH_DB` is not a URL pengi-search can use (a typo'd scheme, driver or port): bad usage."""


class ClosedLibraryError(StoreError):
    """A library or store used after `close()`: its connections are gone, and reopening them silently would leave
    connections that nothing closes. Open the library again instead."""

    def __init__(self, where: str) -> None:
        super().__init__(where, "this library was closed; open it again to use it")


class ForeignDatabaseError(StoreError):
    """The database holds another application's tables, not a pengi-search library: nothing is read or written."""


def store_error(where: str, exc: BaseException) -> StoreError:
    """The StoreError for a failure of the database or its driver: DatabaseUnreachableError when SQLAlchemy found
    the connection lost or none could be made (`engine` counts a failed connection as lost); DatabaseFailureError
    for the DB-API's OperationalError, the database's own trouble (SQLite's full disk, I/O error, read-only file or
    lock; PostgreSQL's DiskFull); RefusedInputError for the rest, what a statement was given (an IntegrityError, a
    DataError)."""
    if getattr(exc, "connection_invalidated", False):
        return DatabaseUnreachableError(where, f"cannot reach the database: {driver_reason(exc)}")
    if getattr(getattr(exc, "orig", None), "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
        # The role's rights, not the statement's input: an `index` run must stop, not fail file after file.
        return ReadOnlyLibraryError(where, f"{driver_reason(exc)}; {READ_ONLY_ROLE}")
    if isinstance(exc, OperationalError):
        return DatabaseFailureError(where, driver_reason(exc))
    return RefusedInputError(where, driver_reason(exc))


def driver_reason(exc: BaseException) -> str:
    """What the database or its driver said, on one line, without SQLAlchemy's wrapping ("(psycopg.X) ...", the
    statement, the link to its documentation); a server's missing database says who creates it, and SQLite's lock
    who holds it."""
    reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    if reason == SQLITE_LOCKED:
        return f"{reason}: {SQLITE_LOCK_HOLDER}"
    missing = re.search(r'database "([^"]+)" does not exist', reason)
    if missing:
        createdb = f"createdb {shlex.quote(missing[1])}"
        reason += f" (create it first, e.g. `{createdb}`: pengi-search makes its tables, not the database)"
    return reason

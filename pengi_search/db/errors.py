"""The errors of the database layer (below every module of `pengi_search.db`, so that each can raise them)."""

from __future__ import annotations

from pengi_search.errors import PengiSearchError


class StoreError(PengiSearchError):
    """A database could not be opened, read or written, or was given bad input."""


class StoreMismatchError(StoreError):
    """The index was built with another model or text embedder than the one asked for."""


class MissingDatabaseError(StoreError):
    """A command that only reads (or changes) a library was pointed at one that does not exist yet."""


class IndexBusyError(StoreError):
    """Another indexing run holds the library's lock."""

"""Whether statements read whole tables: the statements an engine runs, recorded, and SQLite's plans for them; for
the tests and the benchmarks (`bench_pg_prefix.py` prints PostgreSQL's plans of the statements it records)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

Statement = tuple[str, Any]  # the SQL as run, and its parameters


@contextmanager
def recorded(engine: Engine) -> Iterator[list[Statement]]:
    """Every statement `engine` runs while the block does."""
    statements: list[Statement] = []

    def seen(_connection, _cursor, statement: str, parameters: Any, _context, _many) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def plan_steps(db: str, statements: list[Statement]) -> list[str]:
    """The steps of SQLite's plan for each SELECT of `statements`, on the database file `db`, read-only."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return [
            step[-1]
            for statement, parameters in statements
            if statement.lstrip().upper().startswith("SELECT")
            for step in connection.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        ]

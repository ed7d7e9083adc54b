"""`index --watch`: the normal run, then one more each time the indexed folders change and settle, until Ctrl-C.

Each run is the incremental run `index` makes, with the same options, taking the library's lock only while it
works (so queries and `serve` go on between runs, and another `index` run may write in between: the watch waits
for it). Ctrl-C (or SIGTERM) while waiting ends the command with exit code 130 (143) and records nothing; during a
run it stops the run as it stops any (recorded interrupted, resumed by the next). A PATH moved away or deleted ends
it with an error saying so (exit code 2), before a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from ..errors import UsageError
from ..torchrun_env import process_count
from .common import err_console

if TYPE_CHECKING:
    from indexer.run_report import IndexOptions, IndexSummary


def check_watch_options(
    watch: bool, debounce: float | None, *, shard: str | None, reindex: bool, retry_errors: bool
) -> None:
    """Refuse, before any work, what makes no sense when the same run is made again at every change."""
    if not watch:
        if debounce is not None:
            raise UsageError("--debounce", "says when --watch starts a run: add --watch, or leave it out")
        return
    if reindex:
        raise _once_first("--reindex", "index the whole library again")
    if retry_errors:
        raise _once_first("--retry-errors", "retry every file that failed")
    if shard is not None or process_count() > 1:
        raise UsageError("--watch", "one process watches the whole library: leave out --shard and torchrun")


def _once_first(flag: str, redone: str) -> UsageError:
    """An option whose work is done once: the watch would do it again at every change."""
    return UsageError("--watch", f"{flag} would {redone} at every change: run `index PATH... {flag}` once first")


def keep_watching(
    options: IndexOptions,
    debounce_s: float | None,
    run: Callable[[], IndexSummary],
    first: Callable[[IndexSummary], None],
    each: Callable[[IndexSummary], None],
    *,
    quiet: bool,
) -> NoReturn:
    """Make the first run (reported by `first`), then one run (reported by `each`) each time the paths have
    changed and settled; only Ctrl-C or SIGTERM (KeyboardInterrupt) or an error ends it."""
    from indexer.watch import DEFAULT_DEBOUNCE_S, LibraryWatch

    from ..pathnames import shown

    seconds = DEFAULT_DEBOUNCE_S if debounce_s is None else debounce_s
    # Watching starts before the first run: what changes while it works is indexed by the next one.
    with LibraryWatch(options.roots, options.extensions, options.db, seconds, hidden=options.hidden) as watch:
        first(run())
        if not quiet:
            roots = ", ".join(shown(os.fspath(root)) for root in options.roots)  # as typed
            err_console.print(
                f"watching {roots}: a run starts once nothing has changed for {seconds:g} s (Ctrl-C ends)",
                markup=False,
                soft_wrap=True,
            )
        while True:
            watch.wait()
            for root, what in watch.vanished():  # the first one: nothing is left to watch there
                raise UsageError(root, f"the watched {what} disappeared (moved away or deleted)")
            each(run())

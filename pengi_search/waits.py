"""Network waits bounded as a whole, the name lookup included, which no socket timeout bounds."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def within(seconds: float, work: Callable[[], _T], *, late: Callable[[_T], object] | None = None) -> _T:
    """`work()`, or concurrent.futures.TimeoutError when it has not returned after `seconds`.

    The HTTP timeouts bound connecting and each read, but not the name lookup before them (the C library's, which
    nothing can interrupt): a resolver that never answers held the command for ever. So the work runs in a daemon
    thread, which the process leaves behind instead of waiting for it at exit; it ends when the lookup does. What
    it returns once the caller has given up goes to `late` (an HTTP response to close), else nowhere.
    """
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        try:
            result = work()
        except BaseException as err:  # whatever it raises is the caller's to see, not this thread's
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # unless the caller has given up
                future.set_exception(err)
            return
        try:
            future.set_result(result)
        except concurrent.futures.InvalidStateError:  # cancelled: the caller has given up
            if late is not None:
                late(result)

    threading.Thread(target=run, name="pengi-network-wait", daemon=True).start()
    try:
        return future.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        if future.cancel():  # still pending: from now on the result is `late`'s
            raise
        return future.result()  # it came in just now

"""A pause at a named point of an index run, for tests only: a test that stops or kills a run mid-way
(`tests/indexing.py`) waits until the run is there, instead of racing a run that may finish first on a fast machine
or a loaded one.

With `PENGI_SEARCH_TEST_HOLD=POINT:FILE` in its environment, the run creates FILE when it first reaches POINT, then
waits there until a signal ends it. Nothing sets the variable outside the tests; it is read once, at import, so a
run without it pays one comparison per point.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HOLD_ENV = "PENGI_SEARCH_TEST_HOLD"
FILE_STORED = "file-stored"  # pass 1: a file's windows and audio embeddings committed
CAPTIONS_STORED = "captions-stored"  # pass 2: a batch of windows' captions committed

_POINT, _, _MARKER = os.environ.get(HOLD_ENV, "").partition(":")


def hold_at(point: str) -> None:
    """Wait here for a signal, FILE created, when the test's variable names `point`; else return at once."""
    if point != _POINT or not _MARKER:
        return
    Path(_MARKER).touch()
    while True:  # Ctrl-C and SIGTERM end it as they end the run anywhere (a KeyboardInterrupt); SIGKILL, the process
        time.sleep(1)

"""Failures of a request, each with the HTTP status it answers with (the message is the error's reason).

The JSON API answers every error with `{"detail": "one line"}`; an invalid parameter (422) adds
`"errors": [{"field": NAME, "message": WHY}, ...]` with the API's own parameter names (see `app`).
"""

from __future__ import annotations

import logging
import os
import threading
from http import HTTPStatus

from starlette.requests import Request

from ..audio_decoders import AudioDecodeError
from ..db import DatabaseUnreachableError, StoreMismatchError
from ..errors import OptionError, PengiSearchError, UsageError
from ..library import EmptyLibraryError
from ..model_dir import ModelNotFoundError

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5  # when to ask again while the database does not answer (503)


class RequestError(PengiSearchError):
    """A request the server refuses: `status` is the HTTP status of the answer (400, Bad Request, unless said);
    `field`, the parameter at fault when one is (an upload past the limits: its `file`), which the JSON names and a
    page marks and focuses."""

    def __init__(
        self,
        where: str | os.PathLike[str],
        reason: str,
        status: HTTPStatus = HTTPStatus.BAD_REQUEST,
        *,
        field: str | None = None,
    ) -> None:
        super().__init__(where, reason)
        self.status = int(status)
        self.field = field


class InvalidParameter(RequestError):
    """A parameter whose value the server cannot take (422), named as the API names it; `where` is what the message
    starts with: the parameter, unless said (an uploaded clip's file name)."""

    def __init__(self, field: str, reason: str, *, where: str | os.PathLike[str] | None = None) -> None:
        super().__init__(field if where is None else where, reason, HTTPStatus.UNPROCESSABLE_ENTITY, field=field)

    @classmethod
    def of(cls, exc: OptionError) -> InvalidParameter:
        """A core option error in the API's words: its parameter, and other options named as parameters too."""
        return cls(exc.option, exc.reason(str))


def _status_of(exc: PengiSearchError) -> int:
    """The HTTP status that answers an error."""
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, AudioDecodeError):
        return 422
    if isinstance(exc, DatabaseUnreachableError):  # not the server's fault either: try again later
        return 503
    # The library or the models installed are not what the request needs (a model to install): the server's state,
    # which whoever runs it fixes, and no failure of its own (nothing logged)
    if isinstance(exc, EmptyLibraryError | StoreMismatchError | ModelNotFoundError):
        return 409
    if isinstance(exc, UsageError):  # a labels file, a ranking the library's model cannot do, ...
        return 400
    return 500


def answer_status(request: Request, exc: PengiSearchError) -> int:
    """The status that answers `request`, which failed with `exc`. A failure of the server's own (500: not the
    request's fault) is logged for whoever runs the server, wherever the error is answered: by the app's handler
    or by a page that shows it (a search page, the upload page), which the log would otherwise never hear of. A
    database that does not answer (503) is logged once, by the app's `Outage`, not once for every request; a server
    busy converting audio (503 too) is no failure of its own, and not logged."""
    status = _status_of(exc)
    if isinstance(exc, DatabaseUnreachableError):
        request.app.state.outage.began(exc)
    elif status >= 500 and status != 503:  # another 503 is busy for now: the client is told when to ask again
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return status


def status_headers(status: int) -> dict[str, str]:
    """The headers an error's answer carries beside its status: when to try again, for a 503."""
    return {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}


class Outage:
    """Whether the database is known not to answer: said once in the log when it stops (every request meanwhile is
    answered 503, and would otherwise log the same line) and once when it answers again, which `over` hears of
    (the store's engine calls it for each new connection)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down = False

    def began(self, exc: PengiSearchError) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        log.error("%s; answering 503 until it answers again", exc)

    def over(self, *_connection: object) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.warning("the database answers again")

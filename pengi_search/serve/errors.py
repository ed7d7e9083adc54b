"""Failures of a request, each with the HTTP status it answers with (the message is the error's reason).

The JSON API answers every error with `{"detail": "one line"}`; an invalid parameter (422) adds
`"errors": [{"field": NAME, "message": WHY}, ...]` with the API's own parameter names (see `app`).
"""

from __future__ import annotations

import logging
import os
from http import HTTPStatus

from starlette.requests import Request

from ..audio import AudioDecodeError
from ..db import StoreMismatchError
from ..errors import OptionError, PengiSearchError, UsageError
from ..library import EmptyLibraryError

log = logging.getLogger(__name__)


class RequestError(PengiSearchError):
    """A request the server refuses: `status` is the HTTP status of the answer (400, Bad Request, unless said)."""

    field: str | None = None  # the parameter at fault, when one is

    def __init__(self, where: str | os.PathLike[str], reason: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(where, reason)
        self.status = int(status)


class InvalidParameter(RequestError):
    """A parameter whose value the server cannot take (422), named as the API names it; `where` is what the message
    starts with: the parameter, unless said (an uploaded clip's file name)."""

    def __init__(self, field: str, reason: str, *, where: str | os.PathLike[str] | None = None) -> None:
        super().__init__(field if where is None else where, reason, HTTPStatus.UNPROCESSABLE_ENTITY)
        self.field = field

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
    if isinstance(exc, EmptyLibraryError | StoreMismatchError):
        return 409
    if isinstance(exc, UsageError):  # a labels file, a ranking the library's model cannot do, ...
        return 400
    return 500


def answer_status(request: Request, exc: PengiSearchError) -> int:
    """The status that answers `request`, which failed with `exc`. A failure of the server's own (5xx: not the
    request's fault) is logged for whoever runs the server, wherever the error is answered: by the app's handler
    or by a page that shows it (a search page, the upload page), which the log would otherwise never hear of."""
    status = _status_of(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return status

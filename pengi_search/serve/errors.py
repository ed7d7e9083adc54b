"""Failures of a request, each with the HTTP status it answers with (the message is the error's reason)."""

from __future__ import annotations

import os
from http import HTTPStatus

from ..errors import PengiSearchError


class RequestError(PengiSearchError):
    """A request the server refuses: `status` is the HTTP status of the answer (400, Bad Request, unless said)."""

    def __init__(self, where: str | os.PathLike[str], reason: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(where, reason)
        self.status = int(status)

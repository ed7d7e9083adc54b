"""Failures of a request, each with the HTTP status it answers with (the message is the error's reason)."""

from __future__ import annotations

from ..errors import PengiSearchError


class RequestError(PengiSearchError):
    """A request the server refuses; `status` is the HTTP status of the answer."""

    status = 400


class NotFoundError(RequestError):
    status = 404


class ForbiddenError(RequestError):
    status = 403


class ConflictError(RequestError):
    status = 409


class TooLargeError(RequestError):
    status = 413


class UnprocessableError(RequestError):
    status = 422

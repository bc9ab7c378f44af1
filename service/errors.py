"""Errors of the service, and the one table that turns each into an HTTP status.

Routes, the batcher and the collection store raise plain exceptions that say what went wrong;
none of them knows about status codes. :data:`STATUS` maps exception types to statuses
(a subclass answers as its nearest listed base), so a reader finds every status in one place
and a new error is one line here, not a try/except in every route.

Every error is FastAPI's ``{"detail": ...}`` shape. Validation errors drop pydantic's
``input`` echo: a rejected 10 000-row batch must not be sent back to its sender.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service.batcher import BatcherClosed, Overloaded, TextModelUnavailable
from service.collections.errors import (
    CheckpointMismatch,
    CollectionCorrupt,
    CollectionNotFound,
    InvalidName,
    ItemNotFound,
    StoreError,
)

log = logging.getLogger(__name__)


class InvalidInput(ValueError):
    """The request's content is wrong (shape, values, lengths); the message says what to fix."""


class TooLarge(ValueError):
    """The request asks for more work than the server's limits allow."""


class TooManyRows(TooLarge):
    """More rows than ``MONOLITH_MAX_BATCH``."""

    def __init__(self, rows: int, limit: int) -> None:
        super().__init__(
            f"batch of {rows} rows is larger than the limit of {limit} (MONOLITH_MAX_BATCH); "
            "split it into smaller requests"
        )


class Unauthorized(PermissionError):
    """The API key is missing or wrong; the answer names the header to send."""

    headers = {"WWW-Authenticate": "Bearer"}


class NoReferenceCounts(LookupError):
    """``source=reference`` on a checkpoint without usable stored counts."""


class NotReady(RuntimeError):
    """The model is still loading, or failed to load (then there is no point retrying soon)."""

    def __init__(self, message: str, retry_after: int | None = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


STATUS: dict[type[Exception], int] = {
    Unauthorized: status.HTTP_401_UNAUTHORIZED,  # with WWW-Authenticate: Bearer
    InvalidInput: status.HTTP_422_UNPROCESSABLE_CONTENT,  # includes service.npy.NpyError
    TextModelUnavailable: status.HTTP_422_UNPROCESSABLE_CONTENT,
    InvalidName: status.HTTP_422_UNPROCESSABLE_CONTENT,
    TooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    NoReferenceCounts: status.HTTP_404_NOT_FOUND,
    CollectionNotFound: status.HTTP_404_NOT_FOUND,
    ItemNotFound: status.HTTP_404_NOT_FOUND,
    CheckpointMismatch: status.HTTP_409_CONFLICT,
    CollectionCorrupt: status.HTTP_500_INTERNAL_SERVER_ERROR,
    StoreError: status.HTTP_500_INTERNAL_SERVER_ERROR,
    NotReady: status.HTTP_503_SERVICE_UNAVAILABLE,  # with Retry-After unless loading failed
    Overloaded: status.HTTP_503_SERVICE_UNAVAILABLE,  # with Retry-After
    BatcherClosed: status.HTTP_503_SERVICE_UNAVAILABLE,  # with Retry-After
}


def status_of(exc: Exception) -> int:
    """The status of the nearest base of ``exc``'s type listed in :data:`STATUS`."""
    return next((STATUS[t] for t in type(exc).__mro__ if t in STATUS), status.HTTP_500_INTERNAL_SERVER_ERROR)


def validation_error(exc: ValidationError, prefix: str = "body") -> RequestValidationError:
    """Pydantic errors of a body parsed by hand, located the way FastAPI locates them."""
    errors = [{**e, "loc": (prefix, *e["loc"])} for e in exc.errors(include_url=False)]
    return RequestValidationError(errors)


MAX_REPORTED_ERRORS = 10


def _clean(errors: list[dict]) -> list[dict]:
    """type/loc/msg of the first few errors: one bad row type repeated 384 times is one mistake."""
    out = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
           for e in errors[:MAX_REPORTED_ERRORS]]
    if len(errors) > MAX_REPORTED_ERRORS:
        out.append({"type": "too_many_errors", "loc": ["body"],
                    "msg": f"{len(errors) - MAX_REPORTED_ERRORS} more errors not shown"})
    return out


def _json(status_code: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


async def _listed(request: Request, exc: Exception) -> JSONResponse:
    headers = dict(getattr(exc, "headers", {}))
    if (retry_after := getattr(exc, "retry_after", None)) is not None:
        headers["Retry-After"] = str(retry_after)
    return _json(status_of(exc), str(exc), headers or None)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _json(status.HTTP_422_UNPROCESSABLE_CONTENT, _clean(list(exc.errors())))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error; the server log has details")


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in STATUS:
        app.add_exception_handler(exc_type, _listed)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _unexpected)

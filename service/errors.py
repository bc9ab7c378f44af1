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
import sys

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.batcher import BatcherClosed, Overloaded, TextModelUnavailable, TooMuchText
from service.collections.errors import (
    CannotFit,
    CheckpointMismatch,
    CollectionBusy,
    CollectionCorrupt,
    CollectionExists,
    CollectionNotFound,
    InvalidExport,
    InvalidFilter,
    InvalidName,
    ItemNotFound,
    ModelChanged,
    NoFit,
    NoKeptVectors,
    NotMigratable,
    SettingsConflict,
    StorageFull,
    StoreError,
)

log = logging.getLogger(__name__)


NOT_UNICODE = "contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text; send valid Unicode"


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


class PlotsUnavailable(RuntimeError):
    """A PNG plot without matplotlib installed (the ``plots`` extra); the SVG needs nothing."""


class NotReady(RuntimeError):
    """The model is still loading, or failed to load (then there is no point retrying soon)."""

    def __init__(self, message: str, retry_after: int | None = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


STATUS: dict[type[Exception], int] = {
    Unauthorized: status.HTTP_401_UNAUTHORIZED,  # with WWW-Authenticate: Bearer
    InvalidInput: status.HTTP_422_UNPROCESSABLE_CONTENT,  # includes service.npy.NpyError
    # Only a client's string can hold a lone surrogate ("\ud800" is valid JSON, not UTF-8); it
    # fails wherever the string meets UTF-8 (SQLite, the tokenizer): the client's input, a 422.
    UnicodeEncodeError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    TextModelUnavailable: status.HTTP_422_UNPROCESSABLE_CONTENT,
    InvalidName: status.HTTP_422_UNPROCESSABLE_CONTENT,
    InvalidFilter: status.HTTP_422_UNPROCESSABLE_CONTENT,  # lists the valid operators
    InvalidExport: status.HTTP_422_UNPROCESSABLE_CONTENT,  # truncated, altered or not an export
    TooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    TooMuchText: status.HTTP_413_CONTENT_TOO_LARGE,  # MONOLITH_MAX_REQUEST_CHARS
    NoReferenceCounts: status.HTTP_404_NOT_FOUND,
    CollectionNotFound: status.HTTP_404_NOT_FOUND,
    ItemNotFound: status.HTTP_404_NOT_FOUND,
    CheckpointMismatch: status.HTTP_409_CONFLICT,
    CollectionExists: status.HTTP_409_CONFLICT,  # import without replace=true
    CollectionBusy: status.HTTP_409_CONFLICT,  # a migration of it is running
    SettingsConflict: status.HTTP_409_CONFLICT,  # e.g. another 'vectors' kind for an existing collection
    NotMigratable: status.HTTP_409_CONFLICT,  # items with neither a kept vector nor a text
    CannotFit: status.HTTP_422_UNPROCESSABLE_CONTENT,  # no kept vectors, too few items
    NoFit: status.HTTP_404_NOT_FOUND,  # no fit known, or none running to cancel
    ModelChanged: status.HTTP_503_SERVICE_UNAVAILABLE,  # retried by the routes; only if it keeps switching
    NoKeptVectors: status.HTTP_422_UNPROCESSABLE_CONTENT,  # rescore=true without kept vectors
    StorageFull: status.HTTP_507_INSUFFICIENT_STORAGE,  # the write was rolled back
    CollectionCorrupt: status.HTTP_500_INTERNAL_SERVER_ERROR,
    StoreError: status.HTTP_500_INTERNAL_SERVER_ERROR,
    PlotsUnavailable: status.HTTP_501_NOT_IMPLEMENTED,
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
    detail = f"a string in the request {NOT_UNICODE}" if isinstance(exc, UnicodeEncodeError) else str(exc)
    return _json(status_of(exc), detail, headers or None)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _json(status.HTTP_422_UNPROCESSABLE_CONTENT, _clean(list(exc.errors())))


PARSE_FAILED = "There was an error parsing the body"  # FastAPI's 400 for a body json.loads refused


def unparseable_body(exc: BaseException | None) -> str:
    """Why a JSON body could not be parsed, in words a client can act on."""
    if isinstance(exc, UnicodeDecodeError):
        return "the body is not UTF-8 text; JSON bodies must be UTF-8"
    if isinstance(exc, RecursionError):
        return ("the body's JSON nests too deeply to parse "
                "(item metadata may nest at most MONOLITH_MAX_METADATA_DEPTH levels)")
    if isinstance(exc, ValueError) and "digits" in str(exc):
        return f"the body's JSON holds an integer of more than {sys.get_int_max_str_digits()} digits"
    return "the body is not valid JSON" + (f": {exc}" if exc is not None else "")


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own HTTP errors, except its 400 for a body it could not parse: that is an
    unparseable body, a 422 like every other (docs/service.md, "Limits and errors"), with the reason."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_400_BAD_REQUEST and exc.detail == PARSE_FAILED:
        msg = unparseable_body(exc.__cause__)
        return _json(status.HTTP_422_UNPROCESSABLE_CONTENT, [{"type": "json_invalid", "loc": ["body"], "msg": msg}])
    return await http_exception_handler(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error; the server log has details")


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in STATUS:
        app.add_exception_handler(exc_type, _listed)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

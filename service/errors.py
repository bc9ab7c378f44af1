"""Exceptions of the service and how each becomes an HTTP answer.

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
from service.npy import NpyError, TooManyRows

log = logging.getLogger(__name__)


class NotReady(RuntimeError):
    """The model is still loading, or failed to load."""

    def __init__(self, message: str, retry_after: int | None = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


def _json(status_code: int, detail: object, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(status.HTTP_422_UNPROCESSABLE_CONTENT, _clean(list(exc.errors())))

    @app.exception_handler(NpyError)
    async def _npy(request: Request, exc: NpyError) -> JSONResponse:
        return _json(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))

    @app.exception_handler(TooManyRows)
    async def _too_many(request: Request, exc: TooManyRows) -> JSONResponse:
        return _json(status.HTTP_413_CONTENT_TOO_LARGE, str(exc))

    @app.exception_handler(TextModelUnavailable)
    async def _no_text(request: Request, exc: TextModelUnavailable) -> JSONResponse:
        return _json(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return _json(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), retry_after=exc.retry_after)

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return _json(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), retry_after=exc.retry_after)

    @app.exception_handler(BatcherClosed)
    async def _closed(request: Request, exc: BatcherClosed) -> JSONResponse:
        return _json(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), retry_after=5)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _json(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error; the server log has details")

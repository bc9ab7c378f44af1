"""The HTTP server's own limits: what uvicorn is told, and the one thing it lacks (a header timeout).

``monolith-serve`` runs uvicorn with :func:`uvicorn_options`; every value is a setting
(docs/service.md, "Limits and errors"):

* ``http``: h11, not httptools, for its bound on the request head (``h11_max_incomplete_event_size``
  = ``MONOLITH_MAX_HEADER_BYTES``, 16 KiB): httptools buffers headers without a limit.
* ``timeout_keep_alive`` = ``MONOLITH_KEEP_ALIVE_S`` (5 s, uvicorn's default): an idle
  keep-alive connection is closed.
* **header timeout** = ``MONOLITH_HEADER_TIMEOUT_S`` (10 s): uvicorn starts no timer on a new
  connection, so one that never sends a complete request head (or dribbles one) stayed open
  for ever. :class:`H11Protocol` closes a connection whose request head has not arrived within
  that time of connecting, or of its previous response.
* ``limit_concurrency`` = ``MONOLITH_LIMIT_CONCURRENCY`` (1024, per worker): open connections
  plus running requests; above it uvicorn answers 503, which is made JSON with ``Retry-After``
  here like every other 503 of the API.
* ``timeout_graceful_shutdown`` = ``MONOLITH_GRACEFUL_SHUTDOWN_S`` (10 s); requests still
  running after it answer 503 (``service.limits.ShutdownMiddleware``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from uvicorn.protocols.http import h11_impl

from service.settings import Settings

DEFAULT_HEADER_TIMEOUT_S = 10.0
RETRY_AFTER_S = 2
_BUSY = (b'{"detail":"the server has as many connections and requests as it accepts '
         b'(MONOLITH_LIMIT_CONCURRENCY); retry in a few seconds"}')


async def _service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    """uvicorn's answer past ``limit_concurrency``, as the API's JSON 503 with Retry-After."""
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(_BUSY)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": _BUSY, "more_body": False})


# uvicorn looks this name up in its h11 module for every request over the limit.
h11_impl.service_unavailable = _service_unavailable


def _env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment; a bad value is Settings' to report."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


class H11Protocol(h11_impl.H11Protocol):
    """uvicorn's h11 protocol plus a deadline for the request head.

    The deadline is armed when the connection opens and after each response; it closes the
    connection if, when it fires, no new request has begun since it was armed. The value comes
    from ``MONOLITH_HEADER_TIMEOUT_S`` (set by :func:`configure`, or read from the environment
    in worker processes, which the CLI fills from its flags).
    """

    header_timeout_s: float = _env_seconds("MONOLITH_HEADER_TIMEOUT_S", DEFAULT_HEADER_TIMEOUT_S)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        if not self.transport.is_closing():
            self.loop.call_later(self.header_timeout_s, self._header_deadline, self.cycle)

    def _header_deadline(self, cycle: Any) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is cycle and (cycle is None or cycle.response_complete):
            self.logger.debug("closing a connection that sent no request head in %.1f s", self.header_timeout_s)
            self.transport.close()


# Libraries that log routine start-up detail at INFO, which reads like an error in a server's
# log: faiss's loader tries its SIMD builds in turn ("Loading faiss with AVX512 support.",
# "Could not load library with AVX512 support due to: ModuleNotFoundError(...)"), all expected.
QUIET_LOGGERS = ("faiss.loader",)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def quiet_library_logs(level: str = "INFO") -> None:
    """Raise ``QUIET_LOGGERS`` to WARNING, unless ``level`` is DEBUG (then they say everything).
    Works before or after the library is imported: the logger is the same object."""
    quiet = level.upper() != "DEBUG"
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)


def configure_logging(level: str) -> None:
    """The server's logging: one format, ``level`` for the service, library chatter quietened.
    Call it before importing ``service.app`` (which imports faiss, whose loader logs then)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    quiet_library_logs(level)


def configure(settings: Settings) -> None:
    H11Protocol.header_timeout_s = settings.header_timeout_s


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run`` for these settings (after :func:`configure`)."""
    configure(settings)
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "http": "service.server:H11Protocol",
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.limit_concurrency,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
    }

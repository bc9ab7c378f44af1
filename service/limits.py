"""What one request may cost the server before any route sees it: the ASGI middleware of the limits.

:class:`BodyLimitMiddleware`, for every request with a body (POST, PUT, PATCH), in this order:

1. **The API key**, when ``MONOLITH_API_KEY`` is set: a request without the right key is
   refused (401) before a byte of its body is read, so an anonymous client cannot make the
   server buffer anything. (Routes state the key again as a dependency, which OpenAPI shows.)
2. **The body size**: ``Content-Length`` over ``MONOLITH_MAX_BODY_BYTES`` is refused (413)
   unread; chunked bodies are counted as they stream.
3. **The body memory budget** (:class:`MemoryBudget`): parsing a JSON body takes several
   times its size in Python objects (measured: a 64 MiB ``/encode`` body costs ≈ 4× its size
   to parse and ≈ 7× until answered), so the bodies being read, parsed and worked on at once
   are bounded by their *estimated* memory, ``MONOLITH_BODY_MEMORY_BYTES``. A request
   reserves its estimate before its body is read and releases it when answered; one that does
   not fit waits (its bytes stay in the client's socket meanwhile, not in the server) and gets
   503 + ``Retry-After`` after ``MONOLITH_BODY_WAIT_S``. ``.npy`` bodies are estimated at a
   smaller multiple: they are parsed into one array, not millions of objects.
4. **The body deadline**: the whole body must arrive within ``MONOLITH_BODY_TIMEOUT_S``
   (408 after), so a client that trickles bytes cannot hold its reservation.

:class:`ShutdownMiddleware`: on SIGTERM uvicorn lets running requests finish for the graceful
period (``MONOLITH_GRACEFUL_SHUTDOWN_S``) and then cancels them, which uvicorn would answer
with a plain-text 500; this middleware answers them 503 + ``Retry-After`` instead (another
replica, or this one restarted, can take the retry). A write cancelled this way may or may not
have been committed; upserts and deletes are idempotent, so the retry is safe.

The connection-level limits (header timeout, keep-alive, concurrency, header size) belong to
the HTTP server and are set in ``service.server``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging

from service.auth import header_problem
from service.metrics import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # the probes never need the key

# Estimated peak memory of a request per byte of its body (see the module docstring; measured
# with bench/bench_limits.py): JSON is parsed into Python objects, .npy into one array.
JSON_MEMORY_FACTOR = 8
BINARY_MEMORY_FACTOR = 3
CHUNKED_RESERVATION = 1024 * 1024  # a body without Content-Length reserves this, then the rest once read
RETRY_AFTER_S = 2


def _too_large_message(limit: int, size: int | None) -> str:
    got = f"{size} bytes" if size is not None else "more than that"
    return (
        f"request body is too large: {got}, the limit is {limit} bytes (MONOLITH_MAX_BODY_BYTES); "
        "split the batch into smaller requests"
    )


def memory_estimate(content_type: str | None, body_bytes: int) -> int:
    """Bytes of memory a body of this type and size is expected to take until answered."""
    binary = content_type is not None and content_type.split(";")[0].strip().lower() in {
        "application/x-npy", "application/octet-stream"}
    return body_bytes * (BINARY_MEMORY_FACTOR if binary else JSON_MEMORY_FACTOR)


class MemoryBudget:
    """A byte-weighted semaphore, first come first served: reservations wait until they fit.

    A reservation larger than the whole budget is cut to the budget, so it runs alone rather
    than never. Waiters are served in arrival order, so a large body is not starved by a
    stream of small ones.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def clamp(self, n: int) -> int:
        return max(0, min(n, self.capacity))

    async def acquire(self, n: int, timeout: float) -> bool:
        """Reserve ``n`` bytes (clamped); False when they did not fit within ``timeout`` seconds."""
        n = self.clamp(n)
        if not self._waiters and self.used + n <= self.capacity:
            self.used += n
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            if fut.done():  # granted just as the wait ran out: keep it
                return True
            self._waiters.remove(entry)
            self._wake()
            return False
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(n)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, n: int) -> None:
        self.used -= self.clamp(n)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.capacity:
            n, fut = self._waiters.popleft()
            if fut.done():
                continue
            self.used += n
            fut.set_result(None)


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        *,
        api_key: str | None = None,
        budget: MemoryBudget | None = None,
        budget_wait_s: float = 30.0,
        body_timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.api_key = api_key
        self.budget = budget
        self.budget_wait_s = budget_wait_s
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        if self.api_key and scope.get("path") not in OPEN_PATHS:
            problem = header_problem(_header(scope, b"authorization"), self.api_key)
            if problem is not None:
                await _reject(send, 401, problem, {b"www-authenticate": b"Bearer"})
                return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _reject(send, 413, _too_large_message(self.limit, declared))
            return
        content_type = _header(scope, b"content-type")
        reserved = 0
        try:
            if self.budget is not None:
                want = memory_estimate(content_type, declared if declared is not None else CHUNKED_RESERVATION)
                if not await self.budget.acquire(want, self.budget_wait_s):
                    await self._busy(send)
                    return
                reserved = self.budget.clamp(want)
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    body = await self._read(receive, send)
            except TimeoutError:
                await _reject(send, 408, (
                    f"the request body did not arrive within {self.body_timeout_s:g} s "
                    "(MONOLITH_BODY_TIMEOUT_S); send it faster, or in smaller requests"))
                return
            if body is None:
                return  # refused (413) or the client left
            if self.budget is not None and declared is None:
                total = self.budget.clamp(memory_estimate(content_type, len(body)))
                if total > reserved:  # queue again for the whole (holding part while waiting could deadlock)
                    self.budget.release(reserved)
                    reserved = 0
                    if not await self.budget.acquire(total, self.budget_wait_s):
                        await self._busy(send)
                        return
                    reserved = total
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            if self.budget is not None and reserved:
                self.budget.release(reserved)

    async def _read(self, receive: Receive, send: Send) -> bytes | None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left; nothing to answer
            body += message.get("body", b"")
            if len(body) > self.limit:
                await _reject(send, 413, _too_large_message(self.limit, None))
                return None
            if not message.get("more_body", False):
                return bytes(body)

    async def _busy(self, send: Send) -> None:
        assert self.budget is not None
        await _reject(send, 503, (
            f"the server is busy reading and parsing other large request bodies (their estimated memory "
            f"fills MONOLITH_BODY_MEMORY_BYTES = {self.budget.capacity} bytes); retry in a few seconds, "
            "or send embeddings as application/x-npy, which costs far less to parse than JSON"),
            {b"retry-after": str(RETRY_AFTER_S).encode()})


class ShutdownMiddleware:
    """A request cancelled by the server (the graceful shutdown period ran out) answers 503."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if started:
                raise
            log.warning("%s %s cancelled by the server shutting down; answered 503", scope.get("method"),
                        scope.get("path"))
            # The task was cancelled once; the answer is a couple of writes to the transport.
            await _reject(send, 503, (
                "the server is shutting down and could not finish this request in its graceful period "
                "(MONOLITH_GRACEFUL_SHUTDOWN_S); retry: a write may or may not have been made, and "
                "repeating an upsert or delete is safe"), {b"retry-after": str(RETRY_AFTER_S).encode()})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


async def _reject(send: Send, status: int, detail: str, headers: dict[bytes, bytes] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"), *(headers or {}).items()],
    })
    await send({"type": "http.response.body", "body": body})

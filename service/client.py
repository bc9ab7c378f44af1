"""Python clients for the Monolith HTTP API: ``MonolithClient`` (sync) and ``AsyncMonolithClient``.

numpy in, numpy out. Batches above ``npy_threshold`` rows travel as ``.npy`` (a float32
row is 1.5 KB as .npy and ~8 KB as JSON), split to fit the server's limits, which are read
once from ``GET /model``. A 503 (overloaded or still loading) is retried with exponential
backoff, honouring ``Retry-After``, a bounded number of times; every other failure raises
``MonolithError`` with the HTTP status and the server's message.

Each operation is written once, as a generator that yields requests and receives
responses; the sync and async clients only differ in how they send them.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np

NPY = "application/x-npy"
DEFAULT_NPY_THRESHOLD = 256
R = TypeVar("R")


class MonolithError(Exception):
    """A request failed. ``status`` is the HTTP status (None when no answer came back) and
    ``detail`` the server's ``detail`` (a message, or FastAPI's list of validation errors)."""

    def __init__(self, status: int | None, detail: Any, method: str = "", path: str = "") -> None:
        self.status = status
        self.detail = detail
        where = f" on {method} {path}" if method else ""
        super().__init__(f"{status if status is not None else 'no response'}{where}: {_detail_text(detail)}")


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    return str(detail)


@dataclass
class _Request:
    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Limits:
    max_batch: int
    max_body_bytes: int
    max_text_chars: int


Plan = Generator[_Request, httpx.Response, R]


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_load(resp: httpx.Response) -> np.ndarray:
    return np.load(io.BytesIO(resp.content), allow_pickle=False)


def _matrix(x: Any, dtype: type | None = None) -> np.ndarray:
    """A row-per-item array; shape and value checks are the server's (one set of rules)."""
    arr = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    return np.ascontiguousarray(arr[None, :] if arr.ndim == 1 else arr)


def _codes_array(codes: Any) -> np.ndarray:
    """uint8 when every code fits (1 byte per code on the wire); otherwise sent as they are so
    the server's 422 names the bad values instead of a silent wrap-around here."""
    c = _matrix(codes)
    if np.issubdtype(c.dtype, np.integer) and c.size and c.min() >= 0 and c.max() <= 255:
        return c.astype(np.uint8)
    return c


class _Base:
    """Request plans shared by both clients."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        npy_threshold: int = DEFAULT_NPY_THRESHOLD,
        retries: int = 4,
        backoff: float = 0.25,
        max_retry_wait: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.npy_threshold = npy_threshold
        self.retries = retries
        self.backoff = backoff
        self.max_retry_wait = max_retry_wait
        self._limits: _Limits | None = None

    # -- retry policy ---------------------------------------------------------------------------

    def _retry_wait(self, attempt: int, resp: httpx.Response | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if attempt >= self.retries:
            return None
        if resp is not None:
            if resp.status_code != 503:
                return None
            header = resp.headers.get("retry-after")
            if header is not None:
                try:
                    return min(max(float(header), 0.0), self.max_retry_wait)
                except ValueError:
                    pass
        wait = self.backoff * (2**attempt)
        return min(wait * (0.5 + random.random()), self.max_retry_wait)

    @staticmethod
    def _check(req: _Request, resp: httpx.Response) -> httpx.Response:
        if resp.is_success:
            return resp
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text or resp.reason_phrase
        raise MonolithError(resp.status_code, detail, req.method, req.path)

    # -- plans ----------------------------------------------------------------------------------

    def _limits_plan(self) -> Plan[_Limits]:
        if self._limits is None:
            card = (yield _Request("GET", "/model")).json()
            lim = card["limits"]
            self._limits = _Limits(lim["max_batch"], lim["max_body_bytes"], lim["max_text_chars"])
        return self._limits

    def _npy_chunk_rows(self, limits: _Limits, row_bytes: int) -> int:
        fits = max(1, (limits.max_body_bytes - 1024) // max(1, row_bytes))
        return max(1, min(limits.max_batch, fits))

    def _encode_plan(self, embeddings: Any) -> Plan[np.ndarray]:
        x = _matrix(embeddings, np.float32)
        if len(x) <= self.npy_threshold or x.ndim != 2:
            resp = yield _Request("POST", "/encode", json={"embeddings": x.tolist()})
            return np.asarray(resp.json()["codes"], dtype=np.uint8).reshape(len(x), -1)
        limits = yield from self._limits_plan()
        step = self._npy_chunk_rows(limits, x.shape[1] * 4)
        parts = []
        for i in range(0, len(x), step):
            resp = yield _Request("POST", "/encode", content=_npy_bytes(x[i : i + step]),
                                  headers={"Content-Type": NPY, "Accept": NPY})
            parts.append(_npy_load(resp))
        return np.concatenate(parts)

    def _encode_text_plan(self, texts: Sequence[str]) -> Plan[np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: pass at least one string")
        step = self.npy_threshold
        if len(texts) > step:
            limits = yield from self._limits_plan()
            step = max(1, min(limits.max_batch, step))
        parts = []
        for i in range(0, len(texts), step):
            resp = yield _Request("POST", "/encode", json={"texts": texts[i : i + step]})
            parts.append(np.asarray(resp.json()["codes"], dtype=np.uint8))
        return np.concatenate(parts)

    def _decode_plan(self, codes: Any) -> Plan[np.ndarray]:
        c = _codes_array(codes)
        if len(c) <= self.npy_threshold or c.ndim != 2:
            resp = yield _Request("POST", "/decode", json={"codes": c.tolist()})
            return np.asarray(resp.json()["embeddings"], dtype=np.float32)
        limits = yield from self._limits_plan()
        step = self._npy_chunk_rows(limits, c.shape[1] * c.itemsize)
        parts = []
        for i in range(0, len(c), step):
            resp = yield _Request("POST", "/decode", content=_npy_bytes(c[i : i + step]),
                                  headers={"Content-Type": NPY, "Accept": NPY})
            parts.append(_npy_load(resp))
        return np.concatenate(parts)

    def _json_plan(self, path: str, params: dict[str, str] | None = None) -> Plan[dict[str, Any]]:
        return (yield _Request("GET", path, params=params)).json()


class MonolithClient(_Base):
    """Blocking client. Use as a context manager, or call ``close()``."""

    def __init__(
        self, url: str, api_key: str | None = None, *, transport: httpx.BaseTransport | None = None, **kwargs: Any
    ) -> None:
        super().__init__(url, api_key, **kwargs)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport)

    def __enter__(self) -> MonolithClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, req: _Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                resp = self._http.request(req.method, req.path, json=req.json, content=req.content,
                                          params=req.params, headers=req.headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                wait = self._retry_wait(attempt, None)
                if wait is None:
                    raise MonolithError(None, f"cannot reach {self.url}: {exc}", req.method, req.path) from exc
            else:
                wait = self._retry_wait(attempt, resp)
                if wait is None:
                    return self._check(req, resp)
            time.sleep(wait)
            attempt += 1

    def _run(self, plan: Plan[R]) -> R:
        try:
            req = next(plan)
            while True:
                req = plan.send(self._send(req))
        except StopIteration as done:
            return done.value

    def encode(self, embeddings: Any) -> np.ndarray:
        """Codes uint8 [N, 4] for float32 embeddings [N, 384]."""
        return self._run(self._encode_plan(embeddings))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Codes uint8 [N, 4] for texts (the server embeds them)."""
        return self._run(self._encode_text_plan(texts))

    def decode(self, codes: Any) -> np.ndarray:
        """Reconstructions float32 [N, 384] for codes [N, 4]."""
        return self._run(self._decode_plan(codes))

    def health(self, source: str = "traffic") -> dict[str, Any]:
        """Codebook health of ``traffic`` (this server's codes) or ``reference`` (the checkpoint's)."""
        return self._run(self._json_plan("/codebook/health", {"source": source}))

    def model(self) -> dict[str, Any]:
        """The model card."""
        return self._run(self._json_plan("/model"))

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False


class AsyncMonolithClient(_Base):
    """asyncio client with the same methods as ``MonolithClient``, as coroutines."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, api_key, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout,
                                       transport=transport)

    async def __aenter__(self) -> AsyncMonolithClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, req: _Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                resp = await self._http.request(req.method, req.path, json=req.json, content=req.content,
                                                params=req.params, headers=req.headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                wait = self._retry_wait(attempt, None)
                if wait is None:
                    raise MonolithError(None, f"cannot reach {self.url}: {exc}", req.method, req.path) from exc
            else:
                wait = self._retry_wait(attempt, resp)
                if wait is None:
                    return self._check(req, resp)
            await asyncio.sleep(wait)
            attempt += 1

    async def _run(self, plan: Plan[R]) -> R:
        try:
            req = next(plan)
            while True:
                req = plan.send(await self._send(req))
        except StopIteration as done:
            return done.value

    async def encode(self, embeddings: Any) -> np.ndarray:
        return await self._run(self._encode_plan(embeddings))

    async def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return await self._run(self._encode_text_plan(texts))

    async def decode(self, codes: Any) -> np.ndarray:
        return await self._run(self._decode_plan(codes))

    async def health(self, source: str = "traffic") -> dict[str, Any]:
        return await self._run(self._json_plan("/codebook/health", {"source": source}))

    async def model(self) -> dict[str, Any]:
        return await self._run(self._json_plan("/model"))

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

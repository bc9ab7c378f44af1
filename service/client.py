"""Python clients for the Monolith HTTP API: ``MonolithClient`` (sync) and ``AsyncMonolithClient``.

numpy in, numpy out. Batches above ``npy_threshold`` rows travel as ``.npy`` (a float32
row is 1.5 KB as .npy and ~8 KB as JSON), split to fit the server's limits, which are read
once from ``GET /model``. A 503 (overloaded or still loading) is retried with exponential
backoff, honouring ``Retry-After``, a bounded number of times; every other failure raises
``MonolithError`` with the HTTP status and the server's message.

Collections (create, list, upsert in chunks with progress and resume, search with metadata
filters, read and list items, export and import) answer typed results: the dataclasses
below (``CollectionInfo``, ``Hit``, ``SearchResults``, ``Item``, ``ItemPage``, ...).

Each operation is written once, as a generator that yields requests and receives
responses; the sync and async clients only differ in how they send them.

This module imports only the standard library, httpx and numpy (tqdm only when a progress
bar is asked for): it is also the light ``monolith-client`` distribution (``client/``),
which installs without torch.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx
import numpy as np

NPY = "application/x-npy"
DEFAULT_NPY_THRESHOLD = 256
DEFAULT_UPSERT_BATCH = 500  # items per upsert request: one durable write, one progress step
R = TypeVar("R")
T = TypeVar("T")


NON_FINITE = "embeddings contain NaN or Inf"  # the server's 422 for them (vqvae.api.check_embeddings)


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


# ---- typed results ------------------------------------------------------------------------------


def _pick(cls: type[T], data: dict[str, Any], **extra: Any) -> T:
    """A result dataclass from an answer, ignoring fields a newer server may add."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names}, **extra)


@dataclass(frozen=True)
class CollectionInfo:
    """A collection as the server describes it (``GET /collections/{name}``)."""

    name: str
    status: str  # "ok", "checkpoint_mismatch" or "error"
    count: int | None = None
    checkpoint_sha256: str | None = None
    weights_sha256: str | None = None
    created: str | None = None
    description: str | None = None
    size_bytes: int | None = None
    model: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Item:
    """A stored item: its codes (all that is kept of its vector), metadata and text."""

    id: str
    codes: list[int]
    metadata: dict[str, Any] | None = None
    text: str | None = None


@dataclass(frozen=True)
class ItemPage:
    items: list[Item]
    next_cursor: str | None  # pass as ``cursor`` for the next page; None on the last


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, Any] | None = None
    text: str | None = None


@dataclass(frozen=True)
class SearchResults:
    """One list of hits per query, best first; iterate or index it like that list."""

    results: list[list[Hit]]
    metric: str  # what ``score`` is: "cosine", "latent_cosine" or "neg_sq_l2"
    candidates: int

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[list[Hit]]:
        return iter(self.results)

    def __getitem__(self, i: int) -> list[Hit]:
        return self.results[i]


@dataclass(frozen=True)
class UpsertResult:
    upserted: int  # items sent and written
    inserted: int
    updated: int
    skipped: int  # items left out by skip_existing (already stored with the same content)
    count: int | None  # items in the collection after the last write (None if nothing was sent)


@dataclass(frozen=True)
class DeleteResult:
    deleted: list[str]
    missing: list[str]


@dataclass(frozen=True)
class ImportResult:
    collection: CollectionInfo
    imported: int
    replaced: bool


ProgressCallback = Callable[[int, int], None]  # (items done, items in all)


class _Bar:
    """``progress``: False (silent), True (a tqdm bar; ``pip install tqdm``) or a callback."""

    def __init__(self, progress: bool | ProgressCallback, total: int, desc: str) -> None:
        self._bar: Any = None
        self._callback: ProgressCallback | None = None
        self.total = total
        if callable(progress):
            self._callback = progress
        elif progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError("progress=True needs tqdm (pip install tqdm); or pass a callback "
                                  "progress=lambda done, total: ...") from None
            self._bar = tqdm(total=total, unit="item", desc=desc)

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        if self._callback is not None:
            self._callback(done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _path(name: str, *rest: str) -> str:
    return "/".join(["/collections", quote(name, safe=""), *rest])


def _pack(parts: list[bytes], max_count: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """Slices ``[i, j)`` of JSON-encoded elements whose JSON array fits both limits."""
    i = 0
    while i < len(parts):
        size, j = 2, i
        while j < len(parts) and j - i < max_count and (j == i or size + len(parts[j]) + 1 <= max_bytes):
            size += len(parts[j]) + 1
            j += 1
        yield i, j
        i = j


SMALL_REQUEST = 1000  # up to this many rows go in one request without asking the server's limits


def _ids(ids: Sequence[Any]) -> list[str]:
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of strings, not one string")
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, str | int):
            raise TypeError(f"ids must be strings (or ints, sent as strings), got {type(i).__name__}")
        out.append(str(i))
    return out


def _stored_same(stored: dict[str, Any] | None, texts: list[str] | None, metas: list[Any] | None, i: int) -> bool:
    """Whether a stored item already holds what an upsert would write: the same text (for
    text items) and metadata. Embeddings cannot be compared (the server keeps codes only)."""
    if stored is None:
        return False
    if (metas[i] if metas is not None else None) != stored.get("metadata"):
        return False
    return texts is None or stored.get("text") == texts[i]


def _source_bytes(src: str | os.PathLike[str] | bytes | IO[bytes]) -> bytes:
    if isinstance(src, bytes | bytearray | memoryview):
        return bytes(src)
    if isinstance(src, str | os.PathLike):
        return Path(src).read_bytes()
    return src.read()


class _Sink:
    """Where an export goes: a path (written to a temp file, renamed when complete) or a file."""

    def __init__(self, dest: str | os.PathLike[str] | IO[bytes]) -> None:
        self.path = Path(dest) if isinstance(dest, str | os.PathLike) else None
        self.tmp = self.path.with_name(f".{self.path.name}.part") if self.path is not None else None
        self.fh: IO[bytes] = self.tmp.open("wb") if self.tmp is not None else dest  # type: ignore[assignment]
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.fh.write(chunk)
        self.size += len(chunk)

    def close(self, ok: bool) -> None:
        if self.tmp is None or self.path is None:
            return
        self.fh.close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


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
            if not np.isfinite(x).all():  # JSON cannot carry them: fail as the server would (vqvae.api)
                raise MonolithError(422, NON_FINITE, "POST", "/encode")
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

    # -- collections ----------------------------------------------------------------------------

    def _create_plan(self, name: str, description: str | None) -> Plan[CollectionInfo]:
        body = {"description": description} if description is not None else None
        return _pick(CollectionInfo, (yield _Request("PUT", _path(name), json=body)).json())

    def _collections_plan(self) -> Plan[list[CollectionInfo]]:
        resp = yield _Request("GET", "/collections")
        return [_pick(CollectionInfo, c) for c in resp.json()["collections"]]

    def _collection_plan(self, name: str) -> Plan[CollectionInfo]:
        return _pick(CollectionInfo, (yield _Request("GET", _path(name))).json())

    def _drop_plan(self, name: str) -> Plan[None]:
        yield _Request("DELETE", _path(name))

    def _upsert_plan(
        self,
        name: str,
        ids: Sequence[str],
        embeddings: Any,
        texts: Sequence[str] | None,
        metadata: Sequence[dict[str, Any] | None] | None,
        batch_size: int,
        skip_existing: bool,
        progress: bool | ProgressCallback,
    ) -> Plan[UpsertResult]:
        ids = _ids(ids)
        n = len(ids)
        if (embeddings is None) == (texts is None):
            raise ValueError("pass exactly one of embeddings= or texts=")
        x = _matrix(embeddings, np.float32) if embeddings is not None else None
        text_list = [texts] if isinstance(texts, str) else list(texts) if texts is not None else None
        metas = list(metadata) if metadata is not None else None
        for what, seq in (("embeddings", x), ("texts", text_list), ("metadata", metas)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{len(seq)} {what} for {n} ids; give one per id")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if n == 0:
            return UpsertResult(0, 0, 0, 0, None)
        limits = yield from self._limits_plan()
        step = min(batch_size, limits.max_batch)
        totals = {"upserted": 0, "inserted": 0, "updated": 0}
        skipped, count = 0, None
        bar = _Bar(progress, n, f"upsert {name}")
        try:
            for start in range(0, n, step):
                stop = min(n, start + step)
                todo = list(range(start, stop))
                if skip_existing:  # resume: leave out what an earlier run already stored
                    resp = yield _Request("POST", _path(name, "items", "get"), json={"ids": ids[start:stop]})
                    stored = {it["id"]: it for it in resp.json()["items"]}
                    todo = [i for i in todo if not _stored_same(stored.get(ids[i]), text_list, metas, i)]
                    skipped += stop - start - len(todo)
                parts = []
                for i in todo:
                    item: dict[str, Any] = {"id": ids[i]}
                    if x is not None:
                        item["embedding"] = x[i].tolist()
                    else:
                        assert text_list is not None
                        item["text"] = text_list[i]
                    if metas is not None and metas[i] is not None:
                        item["metadata"] = metas[i]
                    parts.append(json.dumps(item, ensure_ascii=False).encode())
                for a, b in _pack(parts, step, limits.max_body_bytes - 1024):
                    body = b'{"items":[' + b",".join(parts[a:b]) + b"]}"
                    answer = (yield _Request("POST", _path(name, "items"), content=body,
                                             headers={"Content-Type": "application/json"})).json()
                    for key in totals:
                        totals[key] += answer[key]
                    count = answer["count"]
                bar.update(stop)
        finally:
            bar.close()
        return UpsertResult(skipped=skipped, count=count, **totals)

    def _search_plan(
        self,
        name: str,
        texts: Sequence[str] | None,
        embeddings: Any,
        k: int,
        candidates: int | None,
        filter: dict[str, Any] | None,
        score_threshold: float | None,
    ) -> Plan[SearchResults]:
        if (embeddings is None) == (texts is None):
            raise ValueError("pass exactly one of embeddings= or texts=")
        queries: Any = _matrix(embeddings, np.float32) if embeddings is not None else (
            [texts] if isinstance(texts, str) else list(texts or []))
        if len(queries) == 0:
            raise ValueError("no queries: pass at least one text or embedding")
        options: dict[str, Any] = {"k": k}
        for key, value in (("candidates", candidates), ("filter", filter), ("score_threshold", score_threshold)):
            if value is not None:
                options[key] = value
        step = len(queries)
        if step > SMALL_REQUEST:  # within the server's batch and hit limits (service/collections/checks.py)
            limits = yield from self._limits_plan()
            rerank = max(candidates if candidates is not None else 100, k) if candidates != 0 else 0
            step = max(1, min(limits.max_batch, 1_000_000 // k, 2_000_000 // rerank if rerank else step,
                              max(1, limits.max_body_bytes // 10_000)))
        results: list[list[Hit]] = []
        answer: dict[str, Any] = {}
        for i in range(0, len(queries), step):
            part = queries[i : i + step]
            body = {"embeddings": part.tolist()} if embeddings is not None else {"texts": part}
            answer = (yield _Request("POST", _path(name, "search"), json={**body, **options})).json()
            results.extend([_pick(Hit, h) for h in row] for row in answer["results"])
        return SearchResults(results=results, metric=answer["metric"], candidates=answer["candidates"])

    def _get_items_plan(self, name: str, ids: Sequence[str]) -> Plan[list[Item | None]]:
        ids = _ids(ids)
        step = len(ids) or 1
        if step > SMALL_REQUEST:
            step = (yield from self._limits_plan()).max_batch
        found: dict[str, Item] = {}
        for i in range(0, len(ids), step):
            resp = yield _Request("POST", _path(name, "items", "get"), json={"ids": ids[i : i + step]})
            found.update((it["id"], _pick(Item, it)) for it in resp.json()["items"])
        return [found.get(i) for i in ids]

    def _page_plan(self, name: str, limit: int, cursor: str | None) -> Plan[ItemPage]:
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        page = (yield _Request("GET", _path(name, "items"), params=params)).json()
        return ItemPage(items=[_pick(Item, it) for it in page["items"]], next_cursor=page["next_cursor"])

    def _delete_items_plan(self, name: str, ids: Sequence[str]) -> Plan[DeleteResult]:
        ids = _ids(ids)
        step = len(ids) or 1
        if step > SMALL_REQUEST:
            step = (yield from self._limits_plan()).max_batch
        deleted: list[str] = []
        missing: list[str] = []
        for i in range(0, len(ids), step):
            answer = (yield _Request("POST", _path(name, "items", "delete"), json={"ids": ids[i : i + step]})).json()
            deleted += answer["deleted"]
            missing += answer["missing"]
        return DeleteResult(deleted=deleted, missing=missing)

    @staticmethod
    def _import_request(name: str, data: bytes, replace: bool) -> _Request:
        return _Request("POST", _path(name, "import"), content=data, params={"replace": str(replace).lower()},
                        headers={"Content-Type": "application/gzip"})

    @staticmethod
    def _import_result(resp: httpx.Response) -> ImportResult:
        answer = resp.json()
        return ImportResult(collection=_pick(CollectionInfo, answer["collection"]), imported=answer["imported"],
                            replaced=answer["replaced"])


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
            except httpx.TransportError as exc:  # sent, but no answer: not retried (it may have been applied)
                raise MonolithError(None, f"no answer from {self.url}: {exc!r}", req.method, req.path) from exc
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
        finally:
            plan.close()  # a failed request still runs the plan's clean-up (progress bars)

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

    # -- collections ----------------------------------------------------------------------------

    def create_collection(self, name: str, description: str | None = None) -> CollectionInfo:
        """Create a collection (or return the existing one, updating its description if given)."""
        return self._run(self._create_plan(name, description))

    def list_collections(self) -> list[CollectionInfo]:
        return self._run(self._collections_plan())

    def get_collection(self, name: str) -> CollectionInfo:
        return self._run(self._collection_plan(name))

    def delete_collection(self, name: str) -> None:
        self._run(self._drop_plan(name))

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        *,
        embeddings: Any = None,
        texts: Sequence[str] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
        batch_size: int = DEFAULT_UPSERT_BATCH,
        skip_existing: bool = False,
        progress: bool | ProgressCallback = False,
    ) -> UpsertResult:
        """Insert or replace items: one id each, and ``embeddings`` [N, 384] or ``texts`` (the
        server embeds them), with optional ``metadata`` dicts. Any size: sent ``batch_size``
        items a request (each one durable when answered). ``progress``: True for a tqdm bar, or
        a callback ``(done, total)``. ``skip_existing``: resume an interrupted upsert, leaving
        out items already stored with the same text and metadata (embedding items: the same
        metadata; their vectors cannot be compared, only their codes are stored)."""
        return self._run(self._upsert_plan(name, ids, embeddings, texts, metadata, batch_size, skip_existing,
                                           progress))

    def search(
        self,
        name: str,
        *,
        texts: Sequence[str] | None = None,
        embeddings: Any = None,
        k: int = 10,
        candidates: int | None = None,
        filter: dict[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> SearchResults:
        """Top-k hits per query. ``filter``: metadata conditions that must all hold, e.g.
        ``{"lang": "en", "year": {"gte": 2020}}`` (docs/collections.md); ``candidates``: ADC
        candidates re-ranked by the decoder (server default if None; 0: ADC order)."""
        return self._run(self._search_plan(name, texts, embeddings, k, candidates, filter, score_threshold))

    def get_item(self, name: str, item_id: str) -> Item | None:
        """One item, or None if the collection has no such id."""
        return self._run(self._get_items_plan(name, [item_id]))[0]

    def get_items(self, name: str, ids: Sequence[str]) -> list[Item | None]:
        """Items by id, in the order asked (None for ids not stored); any number of ids."""
        return self._run(self._get_items_plan(name, ids))

    def list_items(self, name: str, limit: int = 100, cursor: str | None = None) -> ItemPage:
        """One page of items in id order; pass ``page.next_cursor`` for the next one."""
        return self._run(self._page_plan(name, limit, cursor))

    def iter_items(self, name: str, page_size: int = 1000) -> Iterator[Item]:
        """Every item, once, in id order, a page at a time (safe while others write)."""
        cursor = None
        while True:
            page = self.list_items(name, page_size, cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def delete_items(self, name: str, ids: Sequence[str]) -> DeleteResult:
        return self._run(self._delete_items_plan(name, ids))

    def export_collection(self, name: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """Stream the collection's export file to ``dest`` (a path: written whole or not at
        all; or a binary file); returns its size in bytes."""
        sink = _Sink(dest)
        ok = False
        try:
            req = _Request("GET", _path(name, "export"))
            attempt = 0
            while True:
                with self._http.stream(req.method, req.path) as resp:
                    wait = self._retry_wait(attempt, resp)
                    if wait is None:
                        if not resp.is_success:
                            resp.read()
                            self._check(req, resp)
                        for chunk in resp.iter_bytes():
                            sink.write(chunk)
                        ok = True
                        return sink.size
                time.sleep(wait)
                attempt += 1
        finally:
            sink.close(ok)

    def import_collection(
        self, name: str, src: str | os.PathLike[str] | bytes | IO[bytes], replace: bool = False
    ) -> ImportResult:
        """Create collection ``name`` from an export file (a path, bytes or a binary file);
        ``replace=True`` replaces an existing one. Refused (MonolithError 409) for another
        checkpoint's export, 422 for a truncated or altered file."""
        return self._import_result(self._send(self._import_request(name, _source_bytes(src), replace)))


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
            except httpx.TransportError as exc:
                raise MonolithError(None, f"no answer from {self.url}: {exc!r}", req.method, req.path) from exc
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
        finally:
            plan.close()

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

    # -- collections (see MonolithClient for what each does) ------------------------------------

    async def create_collection(self, name: str, description: str | None = None) -> CollectionInfo:
        return await self._run(self._create_plan(name, description))

    async def list_collections(self) -> list[CollectionInfo]:
        return await self._run(self._collections_plan())

    async def get_collection(self, name: str) -> CollectionInfo:
        return await self._run(self._collection_plan(name))

    async def delete_collection(self, name: str) -> None:
        await self._run(self._drop_plan(name))

    async def upsert(
        self,
        name: str,
        ids: Sequence[str],
        *,
        embeddings: Any = None,
        texts: Sequence[str] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
        batch_size: int = DEFAULT_UPSERT_BATCH,
        skip_existing: bool = False,
        progress: bool | ProgressCallback = False,
    ) -> UpsertResult:
        return await self._run(self._upsert_plan(name, ids, embeddings, texts, metadata, batch_size, skip_existing,
                                                 progress))

    async def search(
        self,
        name: str,
        *,
        texts: Sequence[str] | None = None,
        embeddings: Any = None,
        k: int = 10,
        candidates: int | None = None,
        filter: dict[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> SearchResults:
        return await self._run(self._search_plan(name, texts, embeddings, k, candidates, filter, score_threshold))

    async def get_item(self, name: str, item_id: str) -> Item | None:
        return (await self._run(self._get_items_plan(name, [item_id])))[0]

    async def get_items(self, name: str, ids: Sequence[str]) -> list[Item | None]:
        return await self._run(self._get_items_plan(name, ids))

    async def list_items(self, name: str, limit: int = 100, cursor: str | None = None) -> ItemPage:
        return await self._run(self._page_plan(name, limit, cursor))

    async def iter_items(self, name: str, page_size: int = 1000) -> AsyncIterator[Item]:
        cursor = None
        while True:
            page = await self.list_items(name, page_size, cursor)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def delete_items(self, name: str, ids: Sequence[str]) -> DeleteResult:
        return await self._run(self._delete_items_plan(name, ids))

    async def export_collection(self, name: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        sink = _Sink(dest)
        ok = False
        try:
            req = _Request("GET", _path(name, "export"))
            attempt = 0
            while True:
                async with self._http.stream(req.method, req.path) as resp:
                    wait = self._retry_wait(attempt, resp)
                    if wait is None:
                        if not resp.is_success:
                            await resp.aread()
                            self._check(req, resp)
                        async for chunk in resp.aiter_bytes():
                            sink.write(chunk)
                        ok = True
                        return sink.size
                await asyncio.sleep(wait)
                attempt += 1
        finally:
            sink.close(ok)

    async def import_collection(
        self, name: str, src: str | os.PathLike[str] | bytes | IO[bytes], replace: bool = False
    ) -> ImportResult:
        return self._import_result(await self._send(self._import_request(name, _source_bytes(src), replace)))

"""Every operation of the API, written once: a generator that yields the requests it needs and
receives their responses (a :data:`~.wire.Plan`). ``MonolithClient`` and ``AsyncMonolithClient``
only differ in how they send a request and wait between retries, so the request logic (chunking
to the server's limits, resuming, what each body holds) has one source for both.

Optional request fields are sent only when the caller gives them: a server that does not know a
field yet (its bodies forbid unknown fields) still accepts every request that does not use it.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from . import wire
from .local import Bar
from .types import (
    NON_FINITE,
    CollectionInfo,
    DeleteResult,
    FitJob,
    FitTimeout,
    Hit,
    ImportResult,
    Item,
    ItemPage,
    MonolithError,
    ProgressCallback,
    SearchResults,
    UpsertResult,
    pick,
)
from .wire import NPY, Limits, Plan, Request

DEFAULT_NPY_THRESHOLD = 256
DEFAULT_UPSERT_BATCH = 500  # items per upsert request: one durable write, one progress step
SMALL_REQUEST = 1000  # up to this many rows go in one request without asking the server's limits


def given(**fields: Any) -> dict[str, Any]:
    """The fields the caller gave (not None): all an optional request field ever sends."""
    return {k: v for k, v in fields.items() if v is not None}


def _filter_param(filter: dict[str, Any] | None) -> dict[str, str]:
    """A metadata filter as the ``filter`` query parameter (JSON text), where one is given."""
    if filter is None:
        return {}
    return {"filter": json.dumps(filter, ensure_ascii=False, separators=(",", ":"))}


@dataclass
class _Rows:
    """What an upsert writes, one row per id: an embedding or a text, and optional metadata."""

    ids: list[str]
    x: np.ndarray | None
    texts: list[str] | None
    metas: list[Any] | None

    @classmethod
    def of(cls, ids: Sequence[str], embeddings: Any, texts: Sequence[str] | None,
           metadata: Sequence[dict[str, Any] | None] | None) -> _Rows:
        if (embeddings is None) == (texts is None):
            raise ValueError("pass exactly one of embeddings= or texts=")
        rows = cls(ids=wire.ids(ids),
                   x=wire.matrix(embeddings, np.float32) if embeddings is not None else None,
                   texts=[texts] if isinstance(texts, str) else list(texts) if texts is not None else None,
                   metas=list(metadata) if metadata is not None else None)
        n = len(rows.ids)
        for what, seq in (("embeddings", rows.x), ("texts", rows.texts), ("metadata", rows.metas)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{len(seq)} {what} for {n} ids; give one per id")
        return rows

    def item_json(self, i: int) -> bytes:
        item: dict[str, Any] = {"id": self.ids[i]}
        if self.x is not None:
            item["embedding"] = self.x[i].tolist()
        else:
            assert self.texts is not None
            item["text"] = self.texts[i]
        if self.metas is not None and self.metas[i] is not None:
            item["metadata"] = self.metas[i]
        return json.dumps(item, ensure_ascii=False).encode()

    def stored_same(self, stored: dict[str, Any] | None, i: int) -> bool:
        """Whether a stored item already holds what row ``i`` would write: the same text (for
        text items) and metadata. Embeddings cannot be compared (the server keeps codes only)."""
        if stored is None:
            return False
        if (self.metas[i] if self.metas is not None else None) != stored.get("metadata"):
            return False
        return self.texts is None or stored.get("text") == self.texts[i]


@dataclass
class FitWait:
    """How ``fit(wait=True)`` follows its job: asks again every ``poll_s`` until the job ends,
    for at most ``timeout_s`` (None: no limit). Both clients follow it, each sleeping its way."""

    poll_s: float
    timeout_s: float | None
    start: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:  # checked before the fit is asked for, not after
        if not self.poll_s > 0:
            raise ValueError("poll_s must be positive")
        if self.timeout_s is not None and not self.timeout_s >= 0:
            raise ValueError("timeout_s must be None or at least 0")

    def pause(self, job: FitJob) -> float | None:
        """Seconds to wait before asking again; None once the job ended. FitTimeout past ``timeout_s``."""
        if not job.running:
            return None
        left = math.inf if self.timeout_s is None else self.timeout_s - (time.monotonic() - self.start)
        if left <= 0:
            raise FitTimeout(job, self.timeout_s or 0.0)
        return min(self.poll_s, left)


class Operations:
    """The settings, retry policy and request plans both clients share."""

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
        self._limits: Limits | None = None

    # -- retry policy ---------------------------------------------------------------------------

    def _retry_wait(self, attempt: int, resp: httpx.Response | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up. Only a 503 (overloaded
        or loading) or a failed connection is retried: anything else may have been applied."""
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
    def _check(req: Request, resp: httpx.Response) -> httpx.Response:
        if resp.is_success:
            return resp
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text or resp.reason_phrase
        raise MonolithError(resp.status_code, detail, req.method, req.path)

    # -- model ----------------------------------------------------------------------------------

    def _limits_plan(self) -> Plan[Limits]:
        if self._limits is None:
            card = (yield Request("GET", "/model")).json()
            lim = card["limits"]
            self._limits = Limits(lim["max_batch"], lim["max_body_bytes"], lim["max_text_chars"])
        return self._limits

    @staticmethod
    def _npy_chunk_rows(limits: Limits, row_bytes: int) -> int:
        fits = max(1, (limits.max_body_bytes - 1024) // max(1, row_bytes))
        return max(1, min(limits.max_batch, fits))

    def _npy_plan(self, route: str, rows: np.ndarray) -> Plan[np.ndarray]:
        """``rows`` as .npy bodies that fit the server's limits; the answers concatenated."""
        limits = yield from self._limits_plan()
        step = self._npy_chunk_rows(limits, rows.shape[1] * rows.itemsize)
        parts = []
        for i in range(0, len(rows), step):
            resp = yield Request("POST", route, content=wire.npy_bytes(rows[i : i + step]),
                                 headers={"Content-Type": NPY, "Accept": NPY})
            parts.append(wire.npy_load(resp))
        return np.concatenate(parts)

    def _encode_plan(self, embeddings: Any) -> Plan[np.ndarray]:
        x = wire.matrix(embeddings, np.float32)
        if len(x) > self.npy_threshold and x.ndim == 2:
            return (yield from self._npy_plan("/encode", x))
        if not np.isfinite(x).all():  # JSON cannot carry them: fail as the server would (vqvae.api)
            raise MonolithError(422, NON_FINITE, "POST", "/encode")
        resp = yield Request("POST", "/encode", json={"embeddings": x.tolist()})
        return np.asarray(resp.json()["codes"], dtype=np.uint8).reshape(len(x), -1)

    def _encode_text_plan(self, texts: Sequence[str]) -> Plan[np.ndarray]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("texts is empty: pass at least one string")
        step = self.npy_threshold
        if len(texts) > step:
            limits = yield from self._limits_plan()
            step = max(1, min(limits.max_batch, step))
        parts = []
        for i in range(0, len(texts), step):
            resp = yield Request("POST", "/encode", json={"texts": texts[i : i + step]})
            parts.append(np.asarray(resp.json()["codes"], dtype=np.uint8))
        return np.concatenate(parts)

    def _decode_plan(self, codes: Any) -> Plan[np.ndarray]:
        c = wire.codes_array(codes)
        if len(c) > self.npy_threshold and c.ndim == 2:
            return (yield from self._npy_plan("/decode", c))
        resp = yield Request("POST", "/decode", json={"codes": c.tolist()})
        return np.asarray(resp.json()["embeddings"], dtype=np.float32)

    def _json_plan(self, path: str, params: dict[str, str] | None = None) -> Plan[dict[str, Any]]:
        return (yield Request("GET", path, params=params)).json()

    # -- collections ----------------------------------------------------------------------------

    def _create_plan(self, name: str, body: dict[str, Any]) -> Plan[CollectionInfo]:
        resp = yield Request("PUT", wire.path(name), json=body or None)
        return pick(CollectionInfo, resp.json())

    def _train_plan(self, name: str, lists: int | None) -> Plan[CollectionInfo]:
        resp = yield Request("POST", wire.path(name, "train"), json=given(lists=lists) or None)
        return pick(CollectionInfo, resp.json())

    def _migrate_plan(self, name: str) -> Plan[CollectionInfo]:
        answer = (yield Request("POST", wire.path(name, "migrate"))).json()
        # the collection itself, or (like an import's answer) under "collection"
        return pick(CollectionInfo, answer["collection"] if "collection" in answer else answer)

    def _fit_plan(self, name: str, body: dict[str, Any]) -> Plan[FitJob]:
        """``body``: the FitRequest fields the caller gave; none is the server's measured recipe."""
        return pick(FitJob, (yield Request("POST", wire.path(name, "fit"), json=body or None)).json())

    def _fit_status_plan(self, name: str) -> Plan[FitJob]:
        return pick(FitJob, (yield Request("GET", wire.path(name, "fit"))).json())

    def _cancel_fit_plan(self, name: str) -> Plan[FitJob]:
        return pick(FitJob, (yield Request("DELETE", wire.path(name, "fit"))).json())

    def _collection_health_plan(self, name: str) -> Plan[dict[str, Any]]:
        return (yield from self._json_plan(wire.path(name, "health")))

    def _collections_plan(self) -> Plan[list[CollectionInfo]]:
        resp = yield Request("GET", "/collections")
        return [pick(CollectionInfo, c) for c in resp.json()["collections"]]

    def _collection_plan(self, name: str) -> Plan[CollectionInfo]:
        return pick(CollectionInfo, (yield Request("GET", wire.path(name))).json())

    def _drop_plan(self, name: str) -> Plan[None]:
        yield Request("DELETE", wire.path(name))

    # -- upsert ---------------------------------------------------------------------------------

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
        rows = _Rows.of(ids, embeddings, texts, metadata)
        n = len(rows.ids)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if n == 0:
            return UpsertResult(0, 0, 0, 0, None)
        limits = yield from self._limits_plan()
        step = min(batch_size, limits.max_batch)
        totals = {"upserted": 0, "inserted": 0, "updated": 0, "skipped": 0, "count": None}
        bar = Bar(progress, n, f"upsert {name}")
        try:
            for start in range(0, n, step):
                todo = list(range(start, min(n, start + step)))
                if skip_existing:  # resume: leave out what an earlier run already stored
                    todo = yield from self._unstored_plan(name, rows, todo, totals)
                yield from self._write_plan(name, rows, todo, limits, totals)
                bar.update(min(n, start + step))
        finally:
            bar.close()
        return UpsertResult(**totals)

    def _unstored_plan(self, name: str, rows: _Rows, todo: list[int], totals: dict[str, Any]) -> Plan[list[int]]:
        """The rows of ``todo`` the collection does not already hold as they are."""
        resp = yield Request("POST", wire.path(name, "items", "get"), json={"ids": [rows.ids[i] for i in todo]})
        stored = {it["id"]: it for it in resp.json()["items"]}
        left = [i for i in todo if not rows.stored_same(stored.get(rows.ids[i]), i)]
        totals["skipped"] += len(todo) - len(left)
        return left

    def _write_plan(self, name: str, rows: _Rows, todo: list[int], limits: Limits,
                    totals: dict[str, Any]) -> Plan[None]:
        """Upsert rows ``todo`` in bodies that fit the server's limits; adds up the answers."""
        parts = [rows.item_json(i) for i in todo]
        for a, b in wire.pack(parts, limits.max_batch, limits.max_body_bytes - 1024):
            body = b'{"items":[' + b",".join(parts[a:b]) + b"]}"
            answer = (yield Request("POST", wire.path(name, "items"), content=body,
                                    headers={"Content-Type": "application/json"})).json()
            for key in ("upserted", "inserted", "updated"):
                totals[key] += answer[key]
            totals["count"] = answer["count"]

    # -- search ---------------------------------------------------------------------------------

    def _search_plan(
        self, name: str, texts: Sequence[str] | None, embeddings: Any, k: int, options: dict[str, Any]
    ) -> Plan[SearchResults]:
        """``options``: the optional SearchRequest fields the caller gave (see :func:`given`)."""
        if (embeddings is None) == (texts is None):
            raise ValueError("pass exactly one of embeddings= or texts=")
        queries: Any = wire.matrix(embeddings, np.float32) if embeddings is not None else (
            [texts] if isinstance(texts, str) else list(texts or []))
        if len(queries) == 0:
            raise ValueError("no queries: pass at least one text or embedding")
        step = len(queries)
        if step > SMALL_REQUEST:
            step = self._search_step((yield from self._limits_plan()), k, options.get("candidates"))
        results: list[list[Hit]] = []
        answer: dict[str, Any] = {}
        for i in range(0, len(queries), step):
            part = queries[i : i + step]
            body = {"embeddings": part.tolist()} if embeddings is not None else {"texts": part}
            answer = (yield Request("POST", wire.path(name, "search"), json={**body, "k": k, **options})).json()
            results.extend([pick(Hit, h) for h in row] for row in answer["results"])
        return SearchResults(results=results, metric=answer["metric"], candidates=answer["candidates"])

    @staticmethod
    def _search_step(limits: Limits, k: int, candidates: int | None) -> int:
        """Queries a request within the server's batch and hit limits (service/collections/checks.py)."""
        rerank = max(candidates if candidates is not None else 100, k) if candidates != 0 else 0
        return max(1, min(limits.max_batch, 1_000_000 // k, 2_000_000 // rerank if rerank else limits.max_batch,
                          max(1, limits.max_body_bytes // 10_000)))

    # -- items ----------------------------------------------------------------------------------

    def _id_chunks_plan(self, ids: list[str]) -> Plan[int]:
        """Ids a request: all of them when few, else the server's batch limit."""
        step = len(ids) or 1
        if step > SMALL_REQUEST:
            step = (yield from self._limits_plan()).max_batch
        return step

    def _get_items_plan(self, name: str, ids: Sequence[str]) -> Plan[list[Item | None]]:
        ids = wire.ids(ids)
        step = yield from self._id_chunks_plan(ids)
        found: dict[str, Item] = {}
        for i in range(0, len(ids), step):
            resp = yield Request("POST", wire.path(name, "items", "get"), json={"ids": ids[i : i + step]})
            found.update((it["id"], pick(Item, it)) for it in resp.json()["items"])
        return [found.get(i) for i in ids]

    def _page_plan(self, name: str, limit: int, cursor: str | None,
                   filter: dict[str, Any] | None = None) -> Plan[ItemPage]:
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {}), **_filter_param(filter)}
        page = (yield Request("GET", wire.path(name, "items"), params=params)).json()
        return ItemPage(items=[pick(Item, it) for it in page["items"]], next_cursor=page["next_cursor"])

    def _count_plan(self, name: str, filter: dict[str, Any] | None) -> Plan[int]:
        answer = (yield Request("GET", wire.path(name, "count"), params=_filter_param(filter) or None)).json()
        return int(answer["count"])

    def _delete_items_plan(self, name: str, ids: Sequence[str] | None,
                           filter: dict[str, Any] | None = None) -> Plan[DeleteResult]:
        if (ids is None) == (filter is None):
            raise ValueError("pass exactly one of ids or filter=")
        if filter is not None:  # one request, one transaction on the server
            answer = (yield Request("POST", wire.path(name, "items", "delete"), json={"filter": filter})).json()
            return DeleteResult(deleted=[], missing=[], deleted_count=answer["deleted_count"])
        ids = wire.ids(ids)
        step = yield from self._id_chunks_plan(ids)
        deleted: list[str] = []
        missing: list[str] = []
        for i in range(0, len(ids), step):
            req = Request("POST", wire.path(name, "items", "delete"), json={"ids": ids[i : i + step]})
            answer = (yield req).json()
            deleted += answer["deleted"]
            missing += answer["missing"]
        return DeleteResult(deleted=deleted, missing=missing, deleted_count=len(deleted))

    def _delete_item_plan(self, name: str, item_id: str) -> Plan[bool]:
        """One id through the batch route: a missing item is False, not a 404 (like get_item's None)."""
        (item_id,) = wire.ids([item_id])
        return item_id in (yield from self._delete_items_plan(name, [item_id])).deleted

    # -- export / import ------------------------------------------------------------------------

    @staticmethod
    def _export_request(name: str) -> Request:
        return Request("GET", wire.path(name, "export"))  # streamed: each client reads it its own way

    def _import_plan(self, name: str, data: bytes, replace: bool) -> Plan[ImportResult]:
        answer = (yield Request("POST", wire.path(name, "import"), content=data,
                                params={"replace": str(replace).lower()},
                                headers={"Content-Type": "application/gzip"})).json()
        return ImportResult(collection=pick(CollectionInfo, answer["collection"]), imported=answer["imported"],
                            replaced=answer["replaced"])

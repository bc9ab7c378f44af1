"""``AsyncMonolithClient``: the asyncio twin of ``MonolithClient``. It runs the same operations
(``operations.py``), awaiting each request and sleeping with ``asyncio.sleep`` between retries;
its methods, parameters and defaults are the sync client's (tests/service/test_client_parity.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import httpx
import numpy as np

from .local import Dest, Sink, Source, source_bytes
from .operations import DEFAULT_UPSERT_BATCH, FitWait, Operations, given
from .types import (
    CollectionInfo,
    DeleteResult,
    FitJob,
    ImportResult,
    Item,
    ItemPage,
    MonolithError,
    ProgressCallback,
    SearchResults,
    UpsertResult,
)
from .wire import Plan, R, Request


class AsyncMonolithClient(Operations):
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

    async def _send(self, req: Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                resp = await self._http.request(req.method, req.path, json=req.json, content=req.content,
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

    # -- model (see MonolithClient for what each method does) -----------------------------------

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

    # -- collections ----------------------------------------------------------------------------

    async def create_collection(
        self,
        name: str,
        description: str | None = None,
        *,
        index: dict[str, Any] | None = None,
        vectors: Literal["int8", "float16", "none"] | None = None,
        auto_fit: bool | None = None,
    ) -> CollectionInfo:
        body = given(description=description, index=index, vectors=vectors, auto_fit=auto_fit)
        return await self._run(self._create_plan(name, body))

    async def train(self, name: str, lists: int | None = None) -> CollectionInfo:
        return await self._run(self._train_plan(name, lists))

    async def migrate(self, name: str) -> CollectionInfo:
        return await self._run(self._migrate_plan(name))

    async def fit(
        self,
        name: str,
        *,
        epochs: float | None = None,
        lr: float | None = None,
        parts: Literal["all", "decoder_codebooks"] | None = None,
        held_out: float | None = None,
        budget_seconds: float | None = None,
        min_rows: int | None = None,
        seed: int | None = None,
        baselines: bool | None = None,
        wait: bool = False,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> FitJob:
        watch = FitWait(poll_s, timeout_s)  # checks poll_s and timeout_s before anything is sent
        body = given(epochs=epochs, lr=lr, parts=parts, held_out=held_out, budget_seconds=budget_seconds,
                     min_rows=min_rows, seed=seed, baselines=baselines)
        job = await self._run(self._fit_plan(name, body))
        while wait and (pause := watch.pause(job)) is not None:
            await asyncio.sleep(pause)
            job = await self._run(self._fit_status_plan(name))
        return job

    async def fit_status(self, name: str) -> FitJob:
        return await self._run(self._fit_status_plan(name))

    async def cancel_fit(self, name: str) -> FitJob:
        return await self._run(self._cancel_fit_plan(name))

    async def collection_health(self, name: str) -> dict[str, Any]:
        return await self._run(self._collection_health_plan(name))

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
        probe: int | None = None,
        rescore: bool | None = None,
    ) -> SearchResults:
        options = given(candidates=candidates, filter=filter, score_threshold=score_threshold, probe=probe,
                        rescore=rescore)
        return await self._run(self._search_plan(name, texts, embeddings, k, options))

    # -- items ----------------------------------------------------------------------------------

    async def get_item(self, name: str, item_id: str) -> Item | None:
        return (await self._run(self._get_items_plan(name, [item_id])))[0]

    async def get_items(self, name: str, ids: Sequence[str]) -> list[Item | None]:
        return await self._run(self._get_items_plan(name, ids))

    async def list_items(self, name: str, limit: int = 100, cursor: str | None = None, *,
                         filter: dict[str, Any] | None = None) -> ItemPage:
        return await self._run(self._page_plan(name, limit, cursor, filter))

    async def iter_items(self, name: str, page_size: int = 1000, *,
                         filter: dict[str, Any] | None = None) -> AsyncIterator[Item]:
        cursor = None
        while True:
            page = await self.list_items(name, page_size, cursor, filter=filter)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def delete_item(self, name: str, item_id: str) -> bool:
        return await self._run(self._delete_item_plan(name, item_id))

    async def delete_items(self, name: str, ids: Sequence[str] | None = None, *,
                           filter: dict[str, Any] | None = None) -> DeleteResult:
        return await self._run(self._delete_items_plan(name, ids, filter))

    async def count(self, name: str, filter: dict[str, Any] | None = None) -> int:
        return await self._run(self._count_plan(name, filter))

    # -- export / import ------------------------------------------------------------------------

    async def export_collection(self, name: str, dest: Dest) -> int:
        sink = Sink(dest)
        ok = False
        try:
            req = self._export_request(name)
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

    async def import_collection(self, name: str, src: Source, replace: bool = False) -> ImportResult:
        return await self._run(self._import_plan(name, source_bytes(src), replace))

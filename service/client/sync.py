"""``MonolithClient``: the blocking client. It runs the operations of ``operations.py`` by
sending each request with httpx and retrying as the shared policy says; it adds no request
logic of its own, so it behaves exactly like ``AsyncMonolithClient``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
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


class MonolithClient(Operations):
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

    def _send(self, req: Request) -> httpx.Response:
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

    # -- model ----------------------------------------------------------------------------------

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

    def create_collection(
        self,
        name: str,
        description: str | None = None,
        *,
        index: dict[str, Any] | None = None,
        vectors: Literal["int8", "float16", "none"] | None = None,
        auto_fit: bool | None = None,
    ) -> CollectionInfo:
        """Create a collection (or return the existing one, updating what is given).
        ``index``: how searches scan, ``{"kind": "flat"}`` (default) or ``{"kind": "ivf",
        "lists": 1024}`` (given for an existing collection, its index is rebuilt from the stored
        codes); ``vectors``: what it keeps beside the codes for re-scoring ("int8", "float16"
        or "none"; server default if None); ``auto_fit``: whether it fits its own model as it
        grows (server default, on, if None)."""
        body = given(description=description, index=index, vectors=vectors, auto_fit=auto_fit)
        return self._run(self._create_plan(name, body))

    def train(self, name: str, lists: int | None = None) -> CollectionInfo:
        """(Re-)train an IVF collection's lists on its stored codes (no re-encoding); ``lists``:
        how many (default: the collection's). A flat collection is a MonolithError 422."""
        return self._run(self._train_plan(name, lists))

    def migrate(self, name: str) -> CollectionInfo:
        """Bring a collection's storage to this server's current format (POST .../migrate)."""
        return self._run(self._migrate_plan(name))

    def fit(
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
        """Start fitting the collection's own model on its kept vectors (a server-side job; the
        options left None are the server's measured recipe). ``wait=True`` asks again every
        ``poll_s`` until the job ends and returns how it ended; past ``timeout_s`` it raises
        FitTimeout (the fit goes on). A collection without kept vectors is a MonolithError 422."""
        watch = FitWait(poll_s, timeout_s)  # checks poll_s and timeout_s before anything is sent
        body = given(epochs=epochs, lr=lr, parts=parts, held_out=held_out, budget_seconds=budget_seconds,
                     min_rows=min_rows, seed=seed, baselines=baselines)
        job = self._run(self._fit_plan(name, body))
        while wait and (pause := watch.pause(job)) is not None:
            time.sleep(pause)
            job = self._run(self._fit_status_plan(name))
        return job

    def fit_status(self, name: str) -> FitJob:
        """The collection's fit job: running, or how the last one since the server started ended
        (none: MonolithError 404)."""
        return self._run(self._fit_status_plan(name))

    def cancel_fit(self, name: str) -> FitJob:
        """Cancel the running fit, which leaves the collection as it was (none running: 404)."""
        return self._run(self._cancel_fit_plan(name))

    def collection_health(self, name: str) -> dict[str, Any]:
        """Codebook health of the collection's codes (under its own model once fitted), like health()."""
        return self._run(self._collection_health_plan(name))

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
        probe: int | None = None,
        rescore: bool | None = None,
    ) -> SearchResults:
        """Top-k hits per query. ``filter``: metadata conditions that must all hold, e.g.
        ``{"lang": "en", "year": {"gte": 2020}}`` (docs/collections.md); ``candidates``: ADC
        candidates re-ranked by the decoder (server default if None; 0: ADC order); ``probe``:
        lists an IVF collection visits (default the collection's); ``rescore``: re-score with
        the stored vectors (server default if None). Options left None are not sent."""
        options = given(candidates=candidates, filter=filter, score_threshold=score_threshold, probe=probe,
                        rescore=rescore)
        return self._run(self._search_plan(name, texts, embeddings, k, options))

    # -- items ----------------------------------------------------------------------------------

    def get_item(self, name: str, item_id: str) -> Item | None:
        """One item, or None if the collection has no such id."""
        return self._run(self._get_items_plan(name, [item_id]))[0]

    def get_items(self, name: str, ids: Sequence[str]) -> list[Item | None]:
        """Items by id, in the order asked (None for ids not stored); any number of ids."""
        return self._run(self._get_items_plan(name, ids))

    def list_items(self, name: str, limit: int = 100, cursor: str | None = None, *,
                   filter: dict[str, Any] | None = None) -> ItemPage:
        """One page of items in id order; pass ``page.next_cursor`` for the next one. ``filter``:
        only the items whose metadata match it (the syntax of search's filter)."""
        return self._run(self._page_plan(name, limit, cursor, filter))

    def iter_items(self, name: str, page_size: int = 1000, *, filter: dict[str, Any] | None = None) -> Iterator[Item]:
        """Every item (or every one ``filter`` matches), once, in id order, a page at a time
        (safe while others write)."""
        cursor = None
        while True:
            page = self.list_items(name, page_size, cursor, filter=filter)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def delete_item(self, name: str, item_id: str) -> bool:
        """Delete one item; False if the collection had no such id."""
        return self._run(self._delete_item_plan(name, item_id))

    def delete_items(self, name: str, ids: Sequence[str] | None = None, *,
                     filter: dict[str, Any] | None = None) -> DeleteResult:
        """Delete items by id, any number (the answer says which were there), or every item whose
        metadata match ``filter``, in one transaction (the answer has ``deleted_count``)."""
        return self._run(self._delete_items_plan(name, ids, filter))

    def count(self, name: str, filter: dict[str, Any] | None = None) -> int:
        """Items in the collection, or those whose metadata match ``filter``."""
        return self._run(self._count_plan(name, filter))

    # -- export / import ------------------------------------------------------------------------

    def export_collection(self, name: str, dest: Dest) -> int:
        """Stream the collection's export file to ``dest`` (a path: written whole or not at
        all; or a binary file); returns its size in bytes."""
        sink = Sink(dest)
        ok = False
        try:
            req = self._export_request(name)
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

    def import_collection(self, name: str, src: Source, replace: bool = False) -> ImportResult:
        """Create collection ``name`` from an export file (a path, bytes or a binary file);
        ``replace=True`` replaces an existing one. Refused (MonolithError 409) for another
        checkpoint's export, 422 for a truncated or altered file."""
        return self._run(self._import_plan(name, source_bytes(src), replace))

"""Collection routes: create/list/delete collections, upsert/get/delete items, search.

Model work (embedding, encoding, search with its decoder re-ranking) goes through the app's
micro-batcher and its worker thread; SQLite writes, which wait for an fsync, run in the
thread pool so they never hold up model work. Store errors reach the client through
``service.errors``' table, so no route catches them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from service import validation
from service.batcher import MicroBatcher
from service.collections.checks import item_embedding, item_ids, item_metadata, item_text, search_limits
from service.collections.collection import CollectionInfo
from service.collections.errors import ItemNotFound
from service.collections.schemas import (
    CollectionCreate,
    CollectionList,
    CollectionOut,
    Deleted,
    ItemOut,
    SearchHit,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
)
from service.deps import AppSettings, Batcher, Collections
from service.schemas import ErrorResponse
from service.settings import Settings

router = APIRouter(tags=["collections"])

_ERR = {"model": ErrorResponse}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**_ERR, "description": "Missing or wrong API key"},
    404: {**_ERR, "description": "Unknown collection or item"},
    409: {**_ERR, "description": "The collection was encoded with another checkpoint"},
    422: {**_ERR, "description": "Invalid input; the detail says what to fix"},
    503: {**_ERR, "description": "Model not loaded yet, or overloaded"},
}


def _out(info: CollectionInfo) -> CollectionOut:
    return CollectionOut(**info.__dict__)


# ---- collections ---------------------------------------------------------------------------


@router.put(
    "/collections/{name}",
    response_model=CollectionOut,
    status_code=status.HTTP_201_CREATED,
    responses={**ERRORS, 200: {"model": CollectionOut, "description": "Already existed"}},
    summary="Create a collection (idempotent)",
)
async def create_collection(
    name: str, response: Response, store: Collections, body: CollectionCreate | None = None
) -> CollectionOut:
    description = body.description if body is not None else None
    col, created = await run_in_threadpool(store.create, name, description)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _out(await run_in_threadpool(col.info))


@router.get("/collections", response_model=CollectionList, responses=ERRORS, summary="List collections")
async def list_collections(store: Collections) -> CollectionList:
    return CollectionList(collections=[_out(i) for i in await run_in_threadpool(store.list)])


@router.get("/collections/{name}", response_model=CollectionOut, responses=ERRORS, summary="A collection")
async def get_collection(name: str, store: Collections) -> CollectionOut:
    col = await run_in_threadpool(store.get, name)
    return _out(await run_in_threadpool(col.info))


@router.delete("/collections/{name}", response_model=Deleted, responses=ERRORS, summary="Delete a collection")
async def delete_collection(name: str, store: Collections) -> Deleted:
    await run_in_threadpool(store.drop, name)
    return Deleted(deleted=name)


# ---- items ---------------------------------------------------------------------------------


async def _item_vectors(req: UpsertRequest, batcher: MicroBatcher, settings: Settings) -> np.ndarray:
    """float32 [N, input_dim]: embeddings as sent, texts through the text model."""
    dim = batcher.monolith.config.input_dim
    x = np.empty((len(req.items), dim), dtype=np.float32)
    for i, item in enumerate(req.items):
        if item.embedding is not None:
            x[i] = item_embedding(item.embedding, i, dim)
    text_pos = [i for i, item in enumerate(req.items) if item.text is not None]
    if text_pos:
        batcher.require_text_model()
        x[text_pos] = await batcher.embed([item_text(req.items[i].text, i, settings) for i in text_pos])
    return x


@router.post(
    "/collections/{name}/items",
    response_model=UpsertResponse,
    responses={**ERRORS, 413: {**_ERR, "description": "More items than MONOLITH_MAX_BATCH"}},
    summary="Upsert items (durable when answered)",
)
async def upsert_items(
    name: str, req: UpsertRequest, batcher: Batcher, store: Collections, settings: AppSettings
) -> UpsertResponse:
    validation.batch_size(len(req.items), settings.max_batch)
    col = await run_in_threadpool(store.get, name)
    ids = item_ids(req, settings)
    metadata = item_metadata(req, settings)
    codes = await batcher.encode(await _item_vectors(req, batcher, settings))
    texts = [item.text for item in req.items]
    stats = await run_in_threadpool(col.upsert, ids, codes, metadata, texts)
    return UpsertResponse(collection=name, upserted=len(ids), inserted=stats.inserted, updated=stats.updated,
                          count=stats.count)


@router.get("/collections/{name}/items/{item_id:path}", response_model=ItemOut, responses=ERRORS,
            summary="An item: its codes, metadata and text")
async def get_item(name: str, item_id: str, store: Collections) -> ItemOut:
    col = await run_in_threadpool(store.get, name)
    item = await run_in_threadpool(col.get, item_id)
    if item is None:
        raise ItemNotFound(name, item_id)
    return ItemOut(id=item.id, codes=item.codes, metadata=item.metadata, text=item.text)


@router.delete("/collections/{name}/items/{item_id:path}", response_model=Deleted, responses=ERRORS,
               summary="Delete an item (durable when answered)")
async def delete_item(name: str, item_id: str, store: Collections) -> Deleted:
    col = await run_in_threadpool(store.get, name)
    if not await run_in_threadpool(col.delete, [item_id]):
        raise ItemNotFound(name, item_id)
    return Deleted(deleted=item_id)


# ---- search --------------------------------------------------------------------------------


async def _query_vectors(req: SearchRequest, batcher: MicroBatcher, settings: Settings) -> np.ndarray:
    if req.texts is not None:
        batcher.require_text_model()
        return await batcher.embed(validation.texts(req.texts, settings.max_text_chars))
    assert req.embeddings is not None
    dim = batcher.monolith.config.input_dim
    validation.row_lengths(req.embeddings, dim, "embeddings")
    return validation.embeddings(req.embeddings, dim)


@router.post(
    "/collections/{name}/search",
    response_model=SearchResponse,
    responses={**ERRORS, 413: {**_ERR, "description": "More queries than MONOLITH_MAX_BATCH"}},
    summary="Search a collection with texts or embeddings",
)
async def search(
    name: str, req: SearchRequest, batcher: Batcher, store: Collections, settings: AppSettings
) -> SearchResponse:
    candidates = search_limits(req, settings)
    col = await run_in_threadpool(store.get, name)
    x = await _query_vectors(req, batcher, settings)
    monolith = batcher.monolith

    def run() -> tuple[list[list[Any]], str]:
        return col.search(monolith.search_latent(x), x, req.k, candidates)

    hits, metric = await batcher.call(run)
    results = [[SearchHit(id=h.id, score=h.score, metadata=h.metadata) for h in row] for row in hits]
    return SearchResponse(results=results, metric=metric, candidates=candidates)

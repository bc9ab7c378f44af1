"""Collection routes: create/list/delete collections, upsert/get/delete items, search.

``service.app.create_app`` includes :data:`router` behind the API-key dependency and runs
:func:`on_model_loaded` once the model is loaded, which opens the store (every collection's
index is rebuilt from SQLite then). Model work (embedding, encoding, search with its decoder
re-ranking) goes through the app's micro-batcher and its worker thread; SQLite writes, which
wait for an fsync, run in the thread pool so they never hold up model work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from starlette.concurrency import run_in_threadpool

from service.batcher import MicroBatcher, check_texts
from service.collection_schemas import (
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
from service.deps import get_settings, ready_batcher
from service.errors import NotReady
from service.npy import TooManyRows
from service.schemas import ErrorResponse
from service.settings import Settings
from service.store import Collection, CollectionInfo, Store, StoreError, StoreModel
from vqvae.api import check_embeddings

log = logging.getLogger(__name__)

router = APIRouter(tags=["collections"])

# One search request may not make the server build more than this many hits, or decode more
# than this many candidate rows: a 10 000-query batch at k=1000 would be a 10M-hit answer.
MAX_HITS = 1_000_000
MAX_RERANK_ROWS = 2_000_000

_ERR = {"model": ErrorResponse}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**_ERR, "description": "Missing or wrong API key"},
    404: {**_ERR, "description": "Unknown collection or item"},
    409: {**_ERR, "description": "The collection was encoded with another checkpoint"},
    422: {**_ERR, "description": "Invalid input; the detail says what to fix"},
    503: {**_ERR, "description": "Model not loaded yet, or overloaded"},
}


# ---- wiring ------------------------------------------------------------------------------


def open_store(app: FastAPI) -> Store:
    """Open the store for the app's loaded model; every collection's index is built now."""
    settings: Settings = app.state.settings
    store = Store(
        settings.data_dir,
        StoreModel.from_monolith(app.state.monolith),
        synchronous=settings.sqlite_synchronous,
        backend=settings.search_backend,
    )
    store.open_all()
    return store


async def on_model_loaded(app: FastAPI) -> None:
    """Start-up hook (``create_app`` finds it): open the store, close it at shutdown."""
    store = await asyncio.to_thread(open_store, app)
    app.state.collections = store
    app.state.on_shutdown.append(lambda a: store.close())
    log.info("collections: %d open under %s", len(store.names()), store.root)


def install(app: FastAPI) -> None:
    """For apps not built by ``create_app`` (which does this itself): routes + start-up hook."""
    from service.auth import require_api_key

    app.include_router(router, dependencies=[Depends(require_api_key)])
    app.state.on_model_loaded.append(on_model_loaded)


def _store(request: Request) -> Store:
    store = getattr(request.app.state, "collections", None)
    if store is None:
        raise NotReady("collections are not open yet; retry in a few seconds")
    return store


@contextlib.contextmanager
def _http_errors() -> Iterator[None]:
    try:
        yield
    except StoreError as exc:
        raise HTTPException(exc.status_code, detail=str(exc)) from None


async def _collection(store: Store, name: str) -> Collection:
    with _http_errors():
        return await run_in_threadpool(store.get, name)


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


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
    name: str,
    request: Request,
    response: Response,
    body: CollectionCreate | None = None,
    _: MicroBatcher = Depends(ready_batcher),
) -> CollectionOut:
    store = _store(request)
    description = body.description if body is not None else None
    with _http_errors():
        col, created = await run_in_threadpool(store.create, name, description)
        info = await run_in_threadpool(col.info)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _out(info)


@router.get("/collections", response_model=CollectionList, responses=ERRORS, summary="List collections")
async def list_collections(request: Request, _: MicroBatcher = Depends(ready_batcher)) -> CollectionList:
    store = _store(request)
    with _http_errors():
        infos = await run_in_threadpool(store.list)
    return CollectionList(collections=[_out(i) for i in infos])


@router.get("/collections/{name}", response_model=CollectionOut, responses=ERRORS, summary="A collection")
async def get_collection(name: str, request: Request, _: MicroBatcher = Depends(ready_batcher)) -> CollectionOut:
    col = await _collection(_store(request), name)
    with _http_errors():
        return _out(await run_in_threadpool(col.info))


@router.delete("/collections/{name}", response_model=Deleted, responses=ERRORS, summary="Delete a collection")
async def delete_collection(name: str, request: Request, _: MicroBatcher = Depends(ready_batcher)) -> Deleted:
    store = _store(request)
    with _http_errors():
        await run_in_threadpool(store.drop, name)
    return Deleted(deleted=name)


# ---- items ---------------------------------------------------------------------------------


def _checked_metadata(req: UpsertRequest, settings: Settings) -> list[str | None]:
    out: list[str | None] = []
    for i, item in enumerate(req.items):
        if item.metadata is None:
            out.append(None)
            continue
        try:
            raw = json.dumps(item.metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise _unprocessable(f"items[{i}].metadata contains NaN or Infinity, which JSON cannot carry") from None
        size = len(raw.encode("utf-8"))
        if size > settings.max_metadata_bytes:
            raise _unprocessable(
                f"items[{i}].metadata is {size} bytes as JSON, more than the limit of "
                f"{settings.max_metadata_bytes} (MONOLITH_MAX_METADATA_BYTES)"
            )
        out.append(raw)
    return out


def _checked_ids(req: UpsertRequest, settings: Settings) -> list[str]:
    ids = [item.id for item in req.items]
    for i, item_id in enumerate(ids):
        if len(item_id) > settings.max_id_chars:
            raise _unprocessable(
                f"items[{i}].id has {len(item_id)} characters, more than {settings.max_id_chars} "
                "(MONOLITH_MAX_ID_CHARS)"
            )
        if "\x00" in item_id:
            raise _unprocessable(f"items[{i}].id contains a NUL character")
    seen: dict[str, int] = {}
    for i, item_id in enumerate(ids):
        if item_id in seen:
            raise _unprocessable(
                f"duplicate id {item_id!r} at items[{seen[item_id]}] and items[{i}]; "
                "each id may appear once per request"
            )
        seen[item_id] = i
    return ids


async def _item_vectors(req: UpsertRequest, batcher: MicroBatcher, settings: Settings) -> np.ndarray:
    """float32 [N, input_dim]: embeddings as sent, texts through the text model."""
    dim = batcher.monolith.config.input_dim
    x = np.empty((len(req.items), dim), dtype=np.float32)
    text_pos = [i for i, item in enumerate(req.items) if item.text is not None]
    for i, item in enumerate(req.items):
        if item.embedding is None:
            continue
        if len(item.embedding) != dim:
            raise _unprocessable(f"items[{i}].embedding has {len(item.embedding)} values; it needs {dim}")
        try:
            x[i] = check_embeddings(item.embedding, dim)[0]
        except ValueError as exc:
            raise _unprocessable(f"items[{i}].embedding: {exc}") from None
    if text_pos:
        batcher.require_text_model()
        for i in text_pos:
            try:
                check_texts([req.items[i].text], settings.max_text_chars)
            except ValueError as exc:
                raise _unprocessable(f"items[{i}].text: {str(exc).removeprefix('texts[0] ')}") from None
        x[text_pos] = await batcher.embed([req.items[i].text for i in text_pos])
    return x


@router.post(
    "/collections/{name}/items",
    response_model=UpsertResponse,
    responses={**ERRORS, 413: {**_ERR, "description": "More items than MONOLITH_MAX_BATCH"}},
    summary="Upsert items (durable when answered)",
)
async def upsert_items(
    name: str,
    req: UpsertRequest,
    request: Request,
    batcher: MicroBatcher = Depends(ready_batcher),
    settings: Settings = Depends(get_settings),
) -> UpsertResponse:
    if len(req.items) > settings.max_batch:
        raise TooManyRows(len(req.items), settings.max_batch)
    col = await _collection(_store(request), name)
    ids = _checked_ids(req, settings)
    metadata = _checked_metadata(req, settings)
    x = await _item_vectors(req, batcher, settings)
    codes = await batcher.encode(x)
    texts = [item.text for item in req.items]
    with _http_errors():
        stats = await run_in_threadpool(col.upsert, ids, codes, metadata, texts)
    return UpsertResponse(collection=name, upserted=len(ids), inserted=stats.inserted, updated=stats.updated,
                          count=stats.count)


@router.get("/collections/{name}/items/{item_id:path}", response_model=ItemOut, responses=ERRORS,
            summary="An item: its codes, metadata and text")
async def get_item(name: str, item_id: str, request: Request, _: MicroBatcher = Depends(ready_batcher)) -> ItemOut:
    col = await _collection(_store(request), name)
    with _http_errors():
        item = await run_in_threadpool(col.get, item_id)
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"item {item_id!r} not found in collection {name!r}")
    return ItemOut(id=item.id, codes=item.codes, metadata=item.metadata, text=item.text)


@router.delete("/collections/{name}/items/{item_id:path}", response_model=Deleted, responses=ERRORS,
               summary="Delete an item (durable when answered)")
async def delete_item(name: str, item_id: str, request: Request, _: MicroBatcher = Depends(ready_batcher)) -> Deleted:
    col = await _collection(_store(request), name)
    with _http_errors():
        deleted = await run_in_threadpool(col.delete, [item_id])
    if not deleted:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"item {item_id!r} not found in collection {name!r}")
    return Deleted(deleted=item_id)


# ---- search --------------------------------------------------------------------------------


@router.post(
    "/collections/{name}/search",
    response_model=SearchResponse,
    responses={**ERRORS, 413: {**_ERR, "description": "More queries than MONOLITH_MAX_BATCH"}},
    summary="Search a collection with texts or embeddings",
)
async def search(
    name: str,
    req: SearchRequest,
    request: Request,
    batcher: MicroBatcher = Depends(ready_batcher),
    settings: Settings = Depends(get_settings),
) -> SearchResponse:
    n = len(req.texts if req.texts is not None else req.embeddings or [])
    if n > settings.max_batch:
        raise TooManyRows(n, settings.max_batch)
    candidates = settings.default_candidates if req.candidates is None else req.candidates
    if candidates > settings.max_candidates:
        raise _unprocessable(f"candidates={candidates} is more than the limit of {settings.max_candidates} "
                             "(MONOLITH_MAX_CANDIDATES)")
    if n * req.k > MAX_HITS:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            detail=f"{n} queries × k={req.k} is more than {MAX_HITS} hits; send fewer queries")
    if candidates and n * max(candidates, req.k) > MAX_RERANK_ROWS:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            detail=f"{n} queries × {candidates} candidates is more than {MAX_RERANK_ROWS} rows to "
                            "re-rank; send fewer queries or ask for fewer candidates")
    col = await _collection(_store(request), name)
    dim = batcher.monolith.config.input_dim
    if req.texts is not None:
        batcher.require_text_model()
        try:
            texts = check_texts(req.texts, settings.max_text_chars)
        except ValueError as exc:
            raise _unprocessable(str(exc)) from None
        x = await batcher.embed(texts)
    else:
        assert req.embeddings is not None
        for i, row in enumerate(req.embeddings):
            if len(row) != dim:
                raise _unprocessable(f"embeddings[{i}] has {len(row)} values; every row needs {dim}")
        try:
            x = check_embeddings(req.embeddings, dim)
        except ValueError as exc:
            raise _unprocessable(str(exc)) from None
    monolith = batcher.monolith

    def run() -> tuple[list[list[Any]], str]:
        return col.search(monolith.encode_latent(x), x, req.k, candidates)

    with _http_errors():
        hits, metric = await batcher.call(run)
    results = [[SearchHit(id=h.id, score=h.score, metadata=h.metadata) for h in row] for row in hits]
    return SearchResponse(results=results, metric=metric, candidates=candidates)

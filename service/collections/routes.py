"""Collection routes: create/list/delete collections, upsert/get/delete items, search.

Model work (embedding, encoding, search with its decoder re-ranking) goes through the app's
micro-batcher and its worker thread; SQLite writes, which wait for an fsync, run in the
thread pool so they never hold up model work. Store errors reach the client through
``service.errors``' table, so no route catches them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service import validation
from service.batcher import MicroBatcher
from service.collections import migrate, transfer
from service.collections.checks import item_embedding, item_ids, item_metadata, item_text, search_limits
from service.collections.collection import Collection, CollectionInfo, StoredItem
from service.collections.errors import ItemNotFound, ModelChanged
from service.collections.filters import Filter, parse_filter
from service.collections.schemas import (
    MAX_PAGE,
    CollectionCreate,
    CollectionList,
    CollectionOut,
    Deleted,
    DeletedMany,
    DeleteRequest,
    FitJobOut,
    FitRequest,
    ImportResponse,
    ItemCount,
    ItemIds,
    ItemOut,
    ItemPage,
    ItemsOut,
    MigrateResponse,
    MigrationOut,
    SearchHit,
    SearchRequest,
    SearchResponse,
    TrainRequest,
    UpsertRequest,
    UpsertResponse,
)
from service.deps import AppSettings, Batcher, Collections, Fits
from service.errors import InvalidInput
from service.schemas import CodebookHealthResponse, ErrorResponse
from service.settings import Settings

router = APIRouter(tags=["collections"])

# Path parameters with an example, so /docs "Try it out" starts from values that work together
# with the request examples (service.collections.schemas; tests/service/test_openapi_examples.py).
Name = Annotated[str, Path(description="The collection's name", examples=["notes"],
                           openapi_examples={"notes": {"value": "notes"}})]
ItemId = Annotated[str, Path(description="The item's id", examples=["paris"],
                             openapi_examples={"paris": {"value": "paris"}})]

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
    responses={**ERRORS, 200: {"model": CollectionOut, "description": "Already existed"},
               409: {**_ERR, "description": "Exists with another 'vectors' kind, or made with another checkpoint"}},
    summary="Create a collection (idempotent)",
)
async def create_collection(
    name: Name, response: Response, store: Collections, body: CollectionCreate | None = None
) -> CollectionOut:
    description = body.description if body is not None else None
    index = body.index if body is not None else None
    kept = body.vectors if body is not None else None
    auto_fit = body.auto_fit if body is not None else None
    col, created = await run_in_threadpool(store.create, name, description, index, kept, auto_fit)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _out(await run_in_threadpool(col.info))


@router.post(
    "/collections/{name}/train",
    response_model=CollectionOut,
    responses={**ERRORS, 422: {**_ERR, "description": "The collection is flat, or the request is invalid"}},
    summary="(Re-)train a partitioned collection's lists on its stored codes (no re-encoding)",
)
async def train_collection(name: Name, store: Collections, body: TrainRequest | None = None) -> CollectionOut:
    col = await run_in_threadpool(store.get, name)
    if (await run_in_threadpool(col.info)).index.get("kind") != "ivf":
        raise InvalidInput(f"collection {name!r} is flat: PUT it with {{\"index\": {{\"kind\": \"ivf\"}}}} first")
    lists = body.lists if body is not None else None
    await run_in_threadpool(col.train, lists)
    return _out(await run_in_threadpool(col.info))


@router.post(
    "/collections/{name}/migrate",
    response_model=MigrateResponse,
    responses={**ERRORS,
               409: {**_ERR, "description": "A migration of it is running, or some items keep neither a vector nor "
                     "a text (named)"},
               507: {**_ERR, "description": "Out of disk space: nothing was changed"}},
    summary="Re-encode a collection for the server's checkpoint from its kept vectors (or texts), atomically",
)
async def migrate_collection(name: Name, store: Collections, batcher: Batcher) -> MigrateResponse:
    mig = await run_in_threadpool(migrate.Migration.open, store, name)
    try:
        while (chunk := await run_in_threadpool(mig.next_chunk)) is not None:
            if chunk.text_pos:
                chunk.x[chunk.text_pos] = await _embed_stored(batcher, chunk.texts)
            codes = await batcher.encode(chunk.x, bulk=True)
            await run_in_threadpool(mig.stage, chunk, codes)
        col = await run_in_threadpool(mig.finish)
    except BaseException:
        await run_in_threadpool(mig.abort)
        raise
    return MigrateResponse(collection=_out(await run_in_threadpool(col.info)),
                           migration=MigrationOut(**mig.result.public()))


@router.post(
    "/collections/{name}/fit",
    response_model=FitJobOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**ERRORS,
               409: {**_ERR, "description": "A fit or migration of it is running"},
               422: {**_ERR, "description": "It keeps no vectors, has fewer items than a fit needs, or the recipe "
                     "is invalid"}},
    summary="Start fitting the collection's own model on its kept vectors (a background job)",
    description="Fine-tunes the server's checkpoint on the collection's kept vectors in a background process, "
    "judges it on a held-out split against the current model and faiss fitted on the same rows, re-encodes every "
    "item and switches atomically; applied only if it beats the current model. Follow it with GET, cancel with "
    "DELETE. docs/collections.md, \"Fitting a collection\".",
)
async def start_fit(name: Name, fits: Fits, body: FitRequest | None = None) -> FitJobOut:
    body = body or FitRequest()
    job = await run_in_threadpool(fits.start, name, body.recipe(), "request", body.baselines)
    return FitJobOut(**job.public())


@router.get("/collections/{name}/fit", response_model=FitJobOut,
            responses={**ERRORS, 404: {**_ERR, "description": "Unknown collection, or no fit of it since the "
                                      "server started"}},
            summary="The collection's fit job: state, progress and result")
async def get_fit(name: Name, store: Collections, fits: Fits) -> FitJobOut:
    await run_in_threadpool(store.get, name)
    return FitJobOut(**fits.get(name).public())


@router.delete("/collections/{name}/fit", response_model=FitJobOut,
               responses={**ERRORS, 404: {**_ERR, "description": "Unknown collection, or no fit of it running"}},
               summary="Cancel the collection's running fit (the collection is left as it was)")
async def cancel_fit(name: Name, store: Collections, fits: Fits) -> FitJobOut:
    await run_in_threadpool(store.get, name)
    return FitJobOut(**(await run_in_threadpool(fits.cancel, name)).public())


@router.get("/collections/{name}/health", response_model=CodebookHealthResponse, responses=ERRORS,
            summary="Codebook health of the collection's codes (under its own model once fitted)",
            description="Usage, entropy and Zipf fit of every stored item's codes. For a fitted collection, "
            "`drift` judges the writes this server encoded for it since it started against its own model's "
            "reference (the codes and reconstruction cosine of the rows its fit held out): `insufficient_data` "
            "until enough were seen, `drifted` (with a log warning) when they reconstruct far worse. Null for a "
            "collection on the server's checkpoint, whose writes are the server's traffic (GET /codebook/health).")
async def collection_health(name: Name, store: Collections, batcher: Batcher) -> CodebookHealthResponse:
    col = await run_in_threadpool(store.get, name)
    health = await run_in_threadpool(col.codebook_health)
    own = col.encoder  # a fitted collection's writes are judged against its own model's reference
    drift = batcher.collection_drift(name, own).check() if own is not None else None
    return CodebookHealthResponse(**health.model_dump(), source="collection", drift=drift)


async def _embed_stored(batcher: MicroBatcher, texts: list[str]) -> np.ndarray:
    """Embeddings of stored texts, sent in groups within the per-request text budget."""
    budget = batcher.max_request_chars or sum(len(t) for t in texts) or 1
    out, group, chars = [], [], 0
    for text in texts:
        if group and chars + len(text) > budget:
            out.append(await batcher.embed(group))
            group, chars = [], 0
        group.append(text)
        chars += len(text)
    out.append(await batcher.embed(group))
    return np.concatenate(out)


@router.get("/collections", response_model=CollectionList, responses=ERRORS, summary="List collections")
async def list_collections(store: Collections) -> CollectionList:
    return CollectionList(collections=[_out(i) for i in await run_in_threadpool(store.list)])


@router.get("/collections/{name}", response_model=CollectionOut, responses=ERRORS, summary="A collection")
async def get_collection(name: Name, store: Collections) -> CollectionOut:
    col = await run_in_threadpool(store.get, name)
    return _out(await run_in_threadpool(col.info))


@router.delete("/collections/{name}", response_model=Deleted, responses=ERRORS, summary="Delete a collection")
async def delete_collection(name: Name, store: Collections) -> Deleted:
    await run_in_threadpool(store.drop, name)
    return Deleted(deleted=name)


# ---- items ---------------------------------------------------------------------------------


async def _item_vectors(req: UpsertRequest, batcher: MicroBatcher, settings: Settings) -> np.ndarray:
    """float32 [N, input_dim]: embeddings as sent; the texts of items without one through the text model."""
    dim = batcher.monolith.config.input_dim
    x = np.empty((len(req.items), dim), dtype=np.float32)
    for i, item in enumerate(req.items):
        if item.embedding is not None:
            x[i] = item_embedding(item.embedding, i, dim)
    text_pos = [i for i, item in enumerate(req.items) if item.embedding is None]
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
    name: Name, req: UpsertRequest, batcher: Batcher, store: Collections, settings: AppSettings, fits: Fits
) -> UpsertResponse:
    validation.batch_size(len(req.items), settings.max_batch)
    col = await run_in_threadpool(store.get, name)
    ids = item_ids(req, settings)
    metadata = item_metadata(req, settings)
    x = await _item_vectors(req, batcher, settings)
    texts = [item.text for item in req.items]
    for attempt in range(SWITCH_RETRIES):
        codes, weights = await _encode_for(col, batcher, x)
        try:
            stats = await run_in_threadpool(col.upsert, ids, codes, metadata, texts, x, weights)
            break
        except ModelChanged:
            if attempt == SWITCH_RETRIES - 1:
                raise
    await run_in_threadpool(fits.maybe_auto, col)
    return UpsertResponse(collection=name, upserted=len(ids), inserted=stats.inserted, updated=stats.updated,
                          count=stats.count)


SWITCH_RETRIES = 3  # encodes of one request when its collection switches model meanwhile (a fit)


async def _encode_for(col: Collection, batcher: MicroBatcher, x: np.ndarray) -> tuple[np.ndarray, str]:
    """Codes of ``x`` by the collection's model (its own once fitted, else the server's, through the
    micro-batcher) and the weights that made them, which the collection checks when it stores them."""
    own = col.encoder
    if own is None:
        return await batcher.encode(x), batcher.monolith.weights_sha256
    return await batcher.encode_with(col.name, own, x), own.weights_sha256


def _item(item: StoredItem) -> ItemOut:
    return ItemOut(id=item.id, codes=item.codes, metadata=item.metadata, text=item.text)


def _cursor(last_id: str) -> str:
    """Opaque to clients: the last id of the page, base64url (safe in a query string)."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def _after(cursor: str) -> str:
    try:
        after = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = ""
    if not after:
        raise InvalidInput("cursor is not one this server gave out; start the listing again without a cursor")
    return after


FILTER_QUERY = Query(
    description='A metadata filter as JSON text, as search takes it (e.g. {"lang": "en"}, URL-encoded): only the '
    "items it matches. Not JSON, or not a JSON object: 422",
    examples=['{"lang": "en"}'], openapi_examples={"lang": {"value": '{"lang": "en"}'}},
)


def _query_filter(raw: str | None) -> Filter | None:
    """The ``filter`` query parameter: JSON text of a filter object (docs/collections.md, Filters)."""
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f'filter is not valid JSON ({exc}); send a JSON object such as {{"lang": "en"}}, '
                           "URL-encoded") from None
    if not isinstance(value, dict):
        raise InvalidInput(f'filter must be a JSON object such as {{"lang": "en"}}, got {type(value).__name__}')
    return parse_filter(value)


@router.get("/collections/{name}/items", response_model=ItemPage, responses=ERRORS,
            summary="List items, page by page, in id order (optionally only those a filter matches)")
async def list_items(
    name: Name,
    store: Collections,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Items per page")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    filter: Annotated[str | None, FILTER_QUERY] = None,
) -> ItemPage:
    after = _after(cursor) if cursor else None
    flt = _query_filter(filter)
    col = await run_in_threadpool(store.get, name)
    items, last = await run_in_threadpool(col.page, limit, after, flt)
    return ItemPage(items=[_item(i) for i in items], next_cursor=_cursor(last) if last is not None else None)


@router.get("/collections/{name}/count", response_model=ItemCount, responses=ERRORS,
            summary="Count items (optionally only those a filter matches)")
async def count_items(name: Name, store: Collections, filter: Annotated[str | None, FILTER_QUERY] = None) -> ItemCount:
    flt = _query_filter(filter)
    col = await run_in_threadpool(store.get, name)
    return ItemCount(collection=name, count=await run_in_threadpool(col.count, flt))


@router.post("/collections/{name}/items/get", response_model=ItemsOut,
             responses={**ERRORS, 413: {**_ERR, "description": "More ids than MONOLITH_MAX_BATCH"}},
             summary="Fetch many items by id")
async def get_items(name: Name, req: ItemIds, store: Collections, settings: AppSettings) -> ItemsOut:
    validation.batch_size(len(req.ids), settings.max_batch)
    col = await run_in_threadpool(store.get, name)
    found = await run_in_threadpool(col.get_many, req.ids)
    ids = list(dict.fromkeys(req.ids))
    return ItemsOut(items=[_item(found[i]) for i in ids if i in found], missing=[i for i in ids if i not in found])


@router.post(
    "/collections/{name}/items/delete",
    response_model=DeletedMany,
    responses={**ERRORS, 413: {**_ERR, "description": "More ids than MONOLITH_MAX_BATCH"}},
    summary="Delete many items by id, or every item a filter matches (durable when answered)",
    description='Send exactly one of `{"ids": [...]}` or `{"filter": {...}}`. By ids the answer lists `deleted` '
    "and `missing` ids; by filter every matching item is deleted in one transaction, and the answer holds only "
    "the count (`deleted` and `missing` are null). `deleted_count` is the number deleted either way. An empty "
    "filter, which would match every item, is a 422.",
)
async def delete_items(name: Name, req: DeleteRequest, store: Collections, settings: AppSettings) -> DeletedMany:
    if req.filter is not None:
        flt = parse_filter(req.filter)
        if flt is None:
            raise InvalidInput("filter {} matches every item; give a condition, or delete the collection "
                               "(DELETE /collections/{name})")
        col = await run_in_threadpool(store.get, name)
        count = await run_in_threadpool(col.delete_matching, flt)
        return DeletedMany(deleted=None, missing=None, deleted_count=count)
    assert req.ids is not None
    validation.batch_size(len(req.ids), settings.max_batch)
    col = await run_in_threadpool(store.get, name)
    deleted = await run_in_threadpool(col.delete, req.ids)
    gone = set(deleted)
    return DeletedMany(deleted=deleted, missing=[i for i in dict.fromkeys(req.ids) if i not in gone],
                       deleted_count=len(deleted))


@router.get("/collections/{name}/items/{item_id:path}", response_model=ItemOut, responses=ERRORS,
            summary="An item: its codes, metadata and text")
async def get_item(name: Name, item_id: ItemId, store: Collections) -> ItemOut:
    col = await run_in_threadpool(store.get, name)
    item = await run_in_threadpool(col.get, item_id)
    if item is None:
        raise ItemNotFound(name, item_id)
    return _item(item)


@router.delete("/collections/{name}/items/{item_id:path}", response_model=Deleted, responses=ERRORS,
               summary="Delete an item (durable when answered)")
async def delete_item(name: Name, item_id: ItemId, store: Collections) -> Deleted:
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
    return validation.query_embeddings(req.embeddings, dim)  # unit length: huge norms overflowed


@router.post(
    "/collections/{name}/search",
    response_model=SearchResponse,
    responses={**ERRORS, 413: {**_ERR, "description": "More queries than MONOLITH_MAX_BATCH"},
               422: {**_ERR, "description": "Invalid input, or rescore=true on a collection that keeps no vectors"}},
    summary="Search a collection with texts or embeddings",
)
async def search(
    name: Name, req: SearchRequest, batcher: Batcher, store: Collections, settings: AppSettings
) -> SearchResponse:
    flt = parse_filter(req.filter)
    col = await run_in_threadpool(store.get, name)
    rescore = req.rescore if req.rescore is not None else col.vector_kind != "none"
    candidates = search_limits(req, settings, rescore)
    await run_in_threadpool(col.prepare_filter, flt)
    x = await _query_vectors(req, batcher, settings)

    def run() -> tuple[list[list[Any]], str]:
        monolith = col.encoder or batcher.monolith  # the collection's own model once fitted
        for attempt in range(SWITCH_RETRIES):
            try:
                return col.search(monolith.search_latent(x), x, req.k, candidates, flt, req.score_threshold,
                                  req.probe, rescore, monolith.weights_sha256)
            except ModelChanged:
                if attempt == SWITCH_RETRIES - 1:
                    raise
                monolith = col.encoder or batcher.monolith
        raise AssertionError("unreachable")

    hits, metric = await batcher.call(run)
    results = [[SearchHit(id=h.id, score=h.score, metadata=h.metadata, text=h.text) for h in row] for row in hits]
    return SearchResponse(results=results, metric=metric, candidates=candidates, rescored=rescore and candidates > 0)


# ---- export / import -----------------------------------------------------------------------


@router.get(
    "/collections/{name}/export",
    response_class=StreamingResponse,
    responses={
        **ERRORS,
        200: {"content": {transfer.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
              "description": "The collection as one file (gzip JSON lines; docs/collections.md), streamed"},
    },
    summary="Export a collection as one file (a consistent snapshot, safe while it is written)",
)
async def export_collection(name: Name, store: Collections) -> StreamingResponse:
    col = await run_in_threadpool(store.get, name)
    return StreamingResponse(
        transfer.export_gzip(col.path, name),
        media_type=transfer.MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{name}{transfer.SUFFIX}"'},
    )


@router.post(
    "/collections/{name}/import",
    response_model=ImportResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        **ERRORS,
        200: {"model": ImportResponse, "description": "Replaced an existing collection (replace=true)"},
        409: {**_ERR, "description": "Made with another checkpoint, or the collection exists (use replace=true)"},
        413: {**_ERR, "description": "File larger than MONOLITH_MAX_BODY_BYTES (use monolith-collection import)"},
        422: {**_ERR, "description": "Not an export, or truncated or altered (checksum)"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {
        transfer.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
    summary="Import a collection from an export file (all or nothing)",
)
async def import_collection(
    name: Name,
    request: Request,
    response: Response,
    store: Collections,
    settings: AppSettings,
    replace: Annotated[bool, Query(description="Replace the collection if it exists")] = False,
) -> ImportResponse:
    store.path(name)  # a bad name is a 422 before the upload is read
    body = await request.body()
    if not body:
        raise InvalidInput("send the export file (from GET /collections/{name}/export) as the request body")
    limits = transfer.ImportLimits(settings.max_id_chars, settings.max_metadata_bytes)
    col, count, created = await run_in_threadpool(transfer.import_collection, store, name, io.BytesIO(body),
                                                  replace, limits)
    if not created:
        response.status_code = status.HTTP_200_OK
    return ImportResponse(collection=_out(await run_in_threadpool(col.info)), imported=count, replaced=not created)

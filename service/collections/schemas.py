"""Pydantic v2 models of the collection routes' requests and answers.

Limits that depend on the server (batch size, id length, metadata bytes, the model's input
dimension) are checked in ``service.collections.routes`` against ``Settings`` and the loaded
checkpoint, so the same request is judged the same way by every route.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.collections.partitions import IndexSpec
from service.collections.vectors import VectorKind

MAX_K = 1000

# Each request model carries one complete, valid body as its example (``json_schema_extra``), so
# /docs "Try it out" sends a request the server accepts, instead of one Swagger UI assembles from
# the fields (both 'texts' and 'embeddings', say: a 422). tests/service/test_openapi_examples.py
# sends every one. Embedding examples would need input_dim floats each, so examples use texts.

FILTER_DESCRIPTION = (
    'Metadata conditions that must all hold, e.g. {"lang": "en", "year": {"gte": 2020}, "tag": {"in": ["a", "b"]}}; '
    "operators eq, ne, in, gt, gte, lt, lte; combine filters with $and and $or (lists of filters) and $not "
    '(one filter), e.g. {"$or": [{"lang": "en"}, {"$not": {"year": {"lt": 2000}}}]}, nested at most 8 deep. '
    "A range bound of a type the key never holds, or a condition on a key no item holds, is a 422 "
    "(docs/collections.md, Filters, has the whole syntax)"
)


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"description": "first sentences of Wikipedia articles", "vectors": "int8"}]})

    description: str | None = Field(None, max_length=2000, description="Free text shown by GET")
    index: IndexSpec | None = Field(
        None, description='How searches scan: {"kind": "flat"} (default: every code) or {"kind": "ivf", "lists": n} '
        "(the probe nearest partitions); given for an existing collection, its index is rebuilt from the stored codes",
        examples=[{"kind": "ivf", "lists": 1024}],
    )
    vectors: VectorKind | None = Field(
        None, description="What the collection keeps of each item's input vector, on disk, for exact rescoring and "
        "migration: 'int8' (default, 388 bytes an item), 'float16' (768 bytes) or 'none' (codes only). RAM holds "
        "only the codes either way; an existing collection keeps its kind",
    )
    auto_fit: bool | None = Field(
        None, description="Whether the collection fits its own model as it grows (default true): at "
        "MONOLITH_AUTO_FIT_AT items, then after each MONOLITH_AUTO_FIT_GROWTH-fold growth (needs kept vectors)")


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"lists": 16}]})

    lists: int | None = Field(None, ge=2, le=65_536, description="Lists to train (default: the collection's)")


class CollectionOut(BaseModel):
    """A collection as stored; ``status`` says whether this server's checkpoint can serve it."""

    name: str
    status: Literal["ok", "checkpoint_mismatch", "error"]
    count: int | None = Field(None, description="Stored items")
    checkpoint_sha256: str | None = Field(None, description="Checkpoint file the codes were made with")
    weights_sha256: str | None = Field(
        None, description="Checksum of that checkpoint's weights, which the codes are bound to (absent in "
        "collections made before it was recorded: those are bound to checkpoint_sha256)")
    created: str | None = Field(None, description="ISO 8601, UTC")
    description: str | None = None
    size_bytes: int | None = Field(None, description="Database (+ WAL) bytes on disk")
    model: dict[str, Any] = Field(default_factory=dict, description="The model config the codes belong to")
    error: str | None = Field(None, description="Why the collection cannot be served, when it cannot")
    index: dict[str, Any] = Field(
        default_factory=dict, description="'kind' ('flat' or 'ivf'); for IVF also lists, trained, default_probe, "
        "bytes (RAM of codes, ids and lists), train_at while untrained",
    )
    vectors: str | None = Field(None, description="What it keeps of each input vector: int8, float16 or none")
    bytes_per_item: dict[str, float] | None = Field(
        None, description="'ram': index bytes per item (the codes, and IVF lists); 'disk': file bytes per item; "
        "'vector': bytes of one kept vector")
    auto_fit: bool | None = Field(None, description="Whether it fits its own model as it grows")
    fit: dict[str, Any] | None = Field(
        None, description="Its own model ('model': weights_sha256, fitted_from, rows, created, recipe; null while it "
        "uses the server's checkpoint) and the report of the fit that made it, or of the last fit when none was "
        "applied ('report': recall 10@10 on the held-out rows of generic, adapted, faiss OPQ4,PQ4 and LSQ4x8 fitted "
        "on the same rows, with paired SEs, fit seconds); null before any fit")


class CollectionList(BaseModel):
    collections: list[CollectionOut]


class ItemIn(BaseModel):
    """One item: ``text`` (embedded by the server), ``embedding``, or both (the embedding is
    encoded and kept, the text stored and returned with hits)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="Your id; upserting an existing id replaces that item")
    text: str | None = Field(
        None, description="Stored as the item's text; embedded with the text model when no embedding is given")
    embedding: list[float] | None = Field(None, description="An L2-normalised input_dim-d embedding")
    metadata: dict[str, Any] | None = Field(None, description="Any JSON object, returned with search hits")

    @model_validator(mode="after")
    def _at_least_one(self) -> ItemIn:
        if self.text is None and self.embedding is None:
            raise ValueError("each item needs a 'text', an 'embedding', or both")
        return self


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": [
        {"id": "paris", "text": "Paris is the capital of France.", "metadata": {"lang": "en", "year": 2021}},
        {"id": "berlin", "text": "Berlin ist die Hauptstadt Deutschlands.", "metadata": {"lang": "de"}},
    ]}]})

    items: list[ItemIn] = Field(min_length=1, description="At most MONOLITH_MAX_BATCH items, distinct ids")


class UpsertResponse(BaseModel):
    collection: str
    upserted: int
    inserted: int
    updated: int
    count: int = Field(description="Items in the collection after this write (committed, durable)")


class ItemOut(BaseModel):
    id: str
    codes: list[int] = Field(description="The item's codes, one per head: all the collection keeps of its vector")
    metadata: dict[str, Any] | None = None
    text: str | None = None


class Deleted(BaseModel):
    deleted: str


MAX_PAGE = 1000


class ItemCount(BaseModel):
    collection: str
    count: int = Field(description="Items that match the filter (every item without one)")


class ItemPage(BaseModel):
    """One page of a listing in id order; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[ItemOut]
    next_cursor: str | None = Field(description="Cursor of the next page; null on the last page")


class ItemIds(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ids": ["paris", "rome"]}]})

    ids: list[str] = Field(min_length=1, description="At most MONOLITH_MAX_BATCH ids")


class DeleteRequest(BaseModel):
    """Exactly one of ``ids`` (those items) or ``filter`` (every item whose metadata match)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ids": ["paris", "rome"]},
                                                                              {"filter": {"lang": "de"}}]})

    ids: list[str] | None = Field(None, min_length=1, description="At most MONOLITH_MAX_BATCH ids")
    filter: dict[str, Any] | None = Field(
        None, description=f"Delete every item matching it, in one transaction. {FILTER_DESCRIPTION}; "
        "an empty filter (which would match every item) is a 422: delete the collection instead")

    @model_validator(mode="after")
    def _exactly_one(self) -> DeleteRequest:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("send exactly one of 'ids' or 'filter'")
        return self


class ItemsOut(BaseModel):
    items: list[ItemOut] = Field(description="The items found, in the order their ids were asked for")
    missing: list[str] = Field(description="Ids asked for that the collection does not hold")


class DeletedMany(BaseModel):
    deleted: list[str] | None = Field(
        description="By ids: the ids that existed and are now deleted (durable when answered); null by filter")
    missing: list[str] | None = Field(description="By ids: the ids that did not exist; null by filter")
    deleted_count: int = Field(description="Items deleted (by ids: len(deleted))")


class ImportResponse(BaseModel):
    collection: CollectionOut
    imported: int = Field(description="Items imported")
    replaced: bool = Field(description="Whether an existing collection of that name was replaced")


class SearchRequest(BaseModel):
    """Exactly one of ``texts`` or ``embeddings``; one result list per query."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["capital of France"], "k": 5, "filter": {"lang": "en"}}]})

    texts: list[str] | None = Field(None, min_length=1)
    embeddings: list[list[float]] | None = Field(None, min_length=1)
    k: int = Field(10, ge=1, le=MAX_K, description="Hits per query")
    candidates: int | None = Field(
        None,
        ge=0,
        description="ADC candidates ranked again: by exact cosine with their kept vectors when rescoring "
        "(default MONOLITH_RESCORE_CANDIDATES), else by cosine with their decoded codes (default "
        "MONOLITH_DEFAULT_CANDIDATES); 0 = ADC order only",
    )
    rescore: bool | None = Field(
        None, description="Rank the candidates by exact cosine with their kept vectors (default: on where the "
        "collection keeps vectors; true on a collection without them is a 422)",
    )
    filter: dict[str, Any] | None = Field(
        None,
        description=f"{FILTER_DESCRIPTION}. Applied before the scan: k hits come back whenever k items match.",
        examples=[{"lang": "en", "year": {"gte": 2020}}],
    )
    probe: int | None = Field(
        None, ge=1, le=65_536, description="Partitions a partitioned (IVF) collection visits (more: slower, closer "
        "to the exhaustive answer); default the collection's default_probe; flat collections scan everything",
    )
    score_threshold: float | None = Field(
        None, allow_inf_nan=False, description="Leave out hits scoring below this (scores as in 'metric')"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchRequest:
        if (self.texts is None) == (self.embeddings is None):
            raise ValueError("send exactly one of 'texts' or 'embeddings'")
        return self


class SearchHit(BaseModel):
    id: str
    score: float
    metadata: dict[str, Any] | None = None
    text: str | None = Field(None, description="The item's text, where one was stored")


class SearchResponse(BaseModel):
    results: list[list[SearchHit]] = Field(description="One list per query, best first, at most k hits")
    metric: Literal["cosine", "latent_cosine", "neg_sq_l2"] = Field(
        description="What 'score' is: 'cosine' (rescored: exact cosine of query and kept vector; re-ranked: "
        "cosine of query and decoded item), "
        "'latent_cosine' (ADC: mean per-head cosine of the query's latent and the item's codes), "
        "'neg_sq_l2' (ADC: minus the squared latent distance). Higher is better in every case."
    )
    candidates: int = Field(description="ADC candidates ranked again (0: none)")
    rescored: bool = Field(False, description="Whether the candidates were ranked by exact cosine with kept vectors")


class MigrationOut(BaseModel):
    changed: bool = Field(description="False when the collection already belonged to the serving checkpoint")
    items: int = Field(description="Items re-encoded")
    from_vectors: int = Field(description="Of those, re-encoded from their kept vectors")
    from_texts: int = Field(description="Of those, embedded again from their texts (no kept vector)")
    seconds: float
    previous: dict[str, str] = Field(description="The checkpoint (and weights) checksums the codes had before")


class MigrateResponse(BaseModel):
    collection: CollectionOut
    migration: MigrationOut


class FitRequest(BaseModel):
    """Overrides of the fit recipe (docs/training.md, "Fitting codes to a collection"); empty: the
    measured recipe."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"epochs": 20, "baselines": True}]})

    epochs: float | None = Field(None, gt=0, le=1000, description="Passes over the training rows (default 20)")
    lr: float | None = Field(None, gt=0, le=1, description="Peak learning rate (default 2e-3)")
    parts: Literal["all", "decoder_codebooks"] | None = Field(
        None, description="What moves: every weight (default) or the decoder and codebooks only")
    held_out: float | None = Field(None, gt=0, lt=1, description="Share of the items held out (default 0.2, "
                                   "at most 2,000)")
    budget_seconds: float | None = Field(None, gt=0, description="CPU seconds the training may take at most")
    min_rows: int | None = Field(None, ge=50, description="Fewest items accepted (default: the measured 1,000)")
    seed: int | None = Field(None, ge=0)
    baselines: bool | None = Field(None, description="Fit faiss OPQ4,PQ4 and LSQ4x8 on the same rows for the report "
                                   "(default MONOLITH_FIT_BASELINES, on)")

    def recipe(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"baselines"}).items() if v is not None}


class FitJobOut(BaseModel):
    """A fit job: running, or how it ended."""

    id: str
    collection: str
    trigger: Literal["request", "auto"] = Field(description="Asked by POST, or started by the collection's growth")
    recipe: dict[str, Any] = Field(description="The recipe overrides it runs with")
    status: Literal["running", "applied", "not_applied", "failed", "cancelled"] = Field(
        description="applied: the collection now uses the fitted model; not_applied: it did not beat the current "
        "model on the held-out rows (see reason); failed: see reason, the collection is unchanged")
    phase: str = Field(description="snapshot, fit, baselines, report, encode, switch")
    progress: float = Field(description="Share of the current phase done, 0-1")
    rows: int | None = Field(None, description="Items it fits on")
    created: str
    finished: str | None = None
    seconds: float | None = None
    applied: bool | None = None
    reason: str | None = Field(None, description="Why it was not applied, failed or was cancelled")
    report: dict[str, Any] | None = Field(None, description="The fair report on the held-out rows (as in "
                                          "GET /collections/{name} 'fit.report')")

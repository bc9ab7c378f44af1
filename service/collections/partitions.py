"""Partitioned (IVF) collections: the index config in a collection's ``meta`` table, the trained
lists' centroids beside it, and when to train them.

A collection is ``flat`` (every search scans every code: ``vqvae.search.CodeIndex``) or ``ivf``
(``vqvae.ivf.IVFCodeIndex``: a search scans the ``probe`` lists nearest to the query). Both keep
the same rows, SQLite slots and 4-byte codes; an IVF collection only adds, in ``meta``:

* ``index`` — the JSON of :class:`IndexSpec` (``{"kind": "ivf", "lists": n, ...}``);
* ``ivf_centroids`` — the trained lists' centroids as hex (``lists × H`` bytes: centroids are
  codes), absent until the collection is trained.

Nothing else is stored: an item's list is a function of its codes and the centroids, so the lists
are rebuilt from the items at open, exactly like a flat index, and survive a crash the same way
(the centroids are written in one transaction; a crash before it leaves the collection untrained,
which searches exhaustively until it trains again). An untrained IVF collection trains itself after
the upsert that brings it to ``train_at`` items (default 32 per list, :func:`due`); :func:`train`
re-trains it at any time from its stored codes, without re-encoding anything. This layer builds
indexes from the model binding and the ``meta`` rows; the collection persists what it returns.
An export must carry both keys (:data:`META_KEYS`) for the copy to keep its lists; a copy
without them is simply untrained.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.collections.binding import StoreModel
from vqvae.ivf import MAX_LISTS, TRAIN_POINTS_PER_LIST, IVFCodeIndex, default_lists
from vqvae.search import Backend, CodeIndex

log = logging.getLogger(__name__)

META_INDEX = "index"
META_CENTROIDS = "ivf_centroids"
META_KEYS = (META_INDEX, META_CENTROIDS)
AUTO_TRAIN_AT = 16_384  # items at which an IVF collection without a set number of lists trains
MIN_TRAIN_AT = 256


class IndexSpec(BaseModel):
    """How a collection's codes are searched (``PUT /collections/{name}`` ``"index"``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["flat", "ivf"] = Field("flat", description="'flat': scan every code; 'ivf': scan the nearest lists")
    lists: int | None = Field(
        None, ge=2, le=MAX_LISTS,
        description="IVF partitions (k-means lists); default ≈ √n, chosen when the collection trains",
    )
    probe: int | None = Field(
        None, ge=1, description="Lists a search visits when it does not say; default max(lists/64, enough for "
        "~32k codes), which measured top-10 overlap ≥ 0.95 with the flat search",
    )
    coarse: Literal["kmeans", "imi"] = Field(
        "kmeans", description="'kmeans': lists are k-means cells of the latent space; 'imi': an inverted "
        "multi-index on the first two heads' codes (65 536 lists, no training)",
    )
    train_at: int | None = Field(
        None, ge=MIN_TRAIN_AT, description="Items at which the lists are trained (default 32 per list, or "
        f"{AUTO_TRAIN_AT} without 'lists'); until then searches scan everything",
    )

    @model_validator(mode="after")
    def _imi_lists(self) -> IndexSpec:
        if self.coarse == "imi" and self.lists not in (None, 65_536):
            raise ValueError("'imi' lists are the first two heads' code pairs: 65 536 of them; leave 'lists' out")
        return self

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True) if self.kind == "ivf" else {"kind": "flat"}


def spec_of(meta: dict[str, str]) -> IndexSpec:
    raw = meta.get(META_INDEX)
    return IndexSpec.model_validate(json.loads(raw)) if raw else IndexSpec()


def meta_for(spec: IndexSpec | None) -> dict[str, str]:
    """The meta rows a new collection with ``spec`` starts with (none for a flat one)."""
    if spec is None or spec.kind == "flat":
        return {}
    return {META_INDEX: json.dumps(spec.public(), sort_keys=True)}


def centroids_of(meta: dict[str, str], num_heads: int) -> np.ndarray | None:
    raw = meta.get(META_CENTROIDS)
    if not raw:
        return None
    return np.frombuffer(bytes.fromhex(raw), dtype=np.uint8).reshape(-1, num_heads).copy()


def new_index(model: StoreModel, meta: dict[str, str], backend: Backend) -> CodeIndex | IVFCodeIndex:
    """The empty index a collection with this ``meta`` searches with."""
    spec = spec_of(meta)
    if spec.kind == "flat":
        return CodeIndex(model.codebooks, backend=backend, latent_unit_heads=model.latent_unit_heads)
    centroids = centroids_of(meta, model.num_heads) if spec.coarse == "kmeans" else None
    return IVFCodeIndex(model.codebooks, centroids=centroids, latent_unit_heads=model.latent_unit_heads,
                        probe=spec.probe, backend=backend, coarse=spec.coarse)


def train_at(spec: IndexSpec) -> int:
    if spec.train_at is not None:
        return spec.train_at
    if spec.lists is None:
        return AUTO_TRAIN_AT
    return max(MIN_TRAIN_AT, TRAIN_POINTS_PER_LIST * spec.lists)


def describe(index: CodeIndex | IVFCodeIndex, meta: dict[str, str]) -> dict[str, Any]:
    """What ``GET /collections/{name}`` says about the index."""
    spec = spec_of(meta)
    if not isinstance(index, IVFCodeIndex):
        return {"kind": "flat"}
    out: dict[str, Any] = {**spec.public(), "trained": index.trained, "lists": index.lists,
                           "default_probe": index.default_probe(), "bytes": index.nbytes}
    if spec.coarse == "kmeans" and not index.trained:
        out["train_at"] = train_at(spec)
    return out


def due(index: CodeIndex | IVFCodeIndex, meta: dict[str, str]) -> bool:
    """Whether an untrained k-means IVF index has reached ``train_at`` items and should train now."""
    if not isinstance(index, IVFCodeIndex) or index.trained:
        return False
    return len(index) >= train_at(spec_of(meta))


def train(index: IVFCodeIndex, meta: dict[str, str], lists: int | None = None, seed: int = 0) -> dict[str, str]:
    """(Re-)train ``index``'s lists on its codes; returns the meta rows that persist them (an empty
    ``ivf_centroids`` value means: no centroids, delete the row). An inverted multi-index has
    nothing to train and returns no rows."""
    spec = spec_of(meta)
    if spec.coarse == "imi":
        return {}  # lists are the codes' first two heads: nothing to train
    t0 = time.perf_counter()
    want = lists or spec.lists or default_lists(len(index))
    centroids = index.train(lists=want, seed=seed)
    log.info("%d lists trained on %d codes in %.2fs", index.lists, len(index), time.perf_counter() - t0)
    return {META_CENTROIDS: centroids.tobytes().hex() if len(centroids) > 1 else ""}

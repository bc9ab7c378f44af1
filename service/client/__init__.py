"""Python clients for the Monolith HTTP API: ``MonolithClient`` (sync) and ``AsyncMonolithClient``.

numpy in, numpy out. Batches above ``npy_threshold`` rows travel as ``.npy`` (a float32
row is 1.5 KB as .npy and ~8 KB as JSON), split to fit the server's limits, which are read
once from ``GET /model``. A 503 (overloaded or still loading) is retried with exponential
backoff, honouring ``Retry-After``, a bounded number of times; every other failure raises
``MonolithError`` with the HTTP status and the server's message.

Collections (create with an index, train, fit their own model, list, upsert in chunks with
progress and resume, search with metadata filters, read, list, count and delete items (by id or
by filter), export and import) answer typed results: the dataclasses of ``types``
(``CollectionInfo``, ``Hit``, ``SearchResults``, ``Item``, ``FitJob``, ...).

The package is split by what each part holds:

* ``types``: ``MonolithError`` and the result dataclasses;
* ``wire``: the request record, collection paths, ``.npy`` bodies, body packing;
* ``local``: progress bars, export destinations, import sources;
* ``operations``: every operation, written once as a generator that yields requests and
  receives responses (the one source of request logic);
* ``sync`` and ``aio``: ``MonolithClient`` and ``AsyncMonolithClient``, which only differ in
  how they send those requests.

Its modules import only the standard library, httpx and numpy (tqdm only when a progress bar
is asked for), and one another relatively: the package is also the light ``monolith-client``
distribution (``client/monolith_client`` is a symlink to it), which installs without torch.
"""

from __future__ import annotations

from .aio import AsyncMonolithClient
from .operations import DEFAULT_NPY_THRESHOLD, DEFAULT_UPSERT_BATCH, SMALL_REQUEST
from .sync import MonolithClient
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
)
from .wire import NPY, Plan

__all__ = [
    "DEFAULT_NPY_THRESHOLD",
    "DEFAULT_UPSERT_BATCH",
    "NON_FINITE",
    "NPY",
    "SMALL_REQUEST",
    "AsyncMonolithClient",
    "CollectionInfo",
    "DeleteResult",
    "FitJob",
    "FitTimeout",
    "Hit",
    "ImportResult",
    "Item",
    "ItemPage",
    "MonolithClient",
    "MonolithError",
    "Plan",
    "ProgressCallback",
    "SearchResults",
    "UpsertResult",
]

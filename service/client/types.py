"""What the clients answer: ``MonolithError`` and the typed results of the collection routes.

Plain frozen dataclasses, built with :func:`pick`, which ignores fields a newer server may
add, so an older client keeps working against a newer server. Fields the server sends only
in some versions (``index``, ``vectors``, ``bytes_per_item``, ``auto_fit``, ``fit``) have
defaults, so a client that knows them also works against a server that does not send them yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")

NON_FINITE = "embeddings contain NaN or Inf"  # the server's 422 for them (vqvae.api.check_embeddings)

ProgressCallback = Callable[[int, int], None]  # (items done, items in all)


class MonolithError(Exception):
    """A request failed. ``status`` is the HTTP status (None when no answer came back) and
    ``detail`` the server's ``detail`` (a message, or FastAPI's list of validation errors)."""

    def __init__(self, status: int | None, detail: Any, method: str = "", path: str = "") -> None:
        self.status = status
        self.detail = detail
        where = f" on {method} {path}" if method else ""
        super().__init__(f"{status if status is not None else 'no response'}{where}: {detail_text(detail)}")


def detail_text(detail: Any) -> str:
    """FastAPI's list of validation errors as one line; any other detail as it is."""
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    return str(detail)


class FitTimeout(MonolithError, TimeoutError):
    """``fit(wait=True)`` stopped waiting after ``timeout_s``. The fit itself goes on on the
    server (``fit_status`` follows it, ``cancel_fit`` stops it); ``job`` is its last state."""

    def __init__(self, job: FitJob, timeout_s: float) -> None:
        self.job, self.status = job, None
        self.detail = (f"fit {job.id} of {job.collection!r} still running after {timeout_s:g} s (phase {job.phase}, "
                       f"{job.progress:.0%}); it goes on: fit_status() follows it, cancel_fit() stops it")
        Exception.__init__(self, self.detail)


def pick(cls: type[T], data: dict[str, Any], **extra: Any) -> T:
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
    # how searches scan: {"kind": "flat"} or {"kind": "ivf", "lists", "trained", "default_probe", ...}
    index: dict[str, Any] = field(default_factory=dict)
    vectors: str | None = None  # stored vectors beside the codes: "int8", "float16" or "none"
    bytes_per_item: dict[str, Any] | None = None  # what an item costs, by part (codes, vectors, ...)
    auto_fit: bool | None = None  # whether it fits its own model as it grows
    fit: dict[str, Any] | None = None  # its own model ("model") and the last fit's "report"; None before any fit


@dataclass(frozen=True)
class FitJob:
    """A collection's fit job (``GET /collections/{name}/fit``): running, or how it ended."""

    id: str
    collection: str
    trigger: str  # "request" (asked for) or "auto" (started by the collection's growth)
    recipe: dict[str, Any]  # the recipe overrides it runs with
    status: str  # "running", "applied", "not_applied", "failed" or "cancelled"
    phase: str  # snapshot, fit, baselines, report, encode, switch
    progress: float  # share of the current phase done, 0-1
    rows: int | None = None
    created: str | None = None
    finished: str | None = None
    seconds: float | None = None
    applied: bool | None = None
    reason: str | None = None  # why it was not applied, failed or was cancelled
    report: dict[str, Any] | None = None  # the held-out report (as in CollectionInfo.fit["report"])

    @property
    def running(self) -> bool:
        return self.status == "running"


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
    """By ids: which were there (``deleted``) and which not; by filter only ``deleted_count``
    is known (the server does not send the ids back: ``deleted`` and ``missing`` are empty)."""

    deleted: list[str]
    missing: list[str]
    deleted_count: int | None = None  # items deleted (by ids: len(deleted))


@dataclass(frozen=True)
class ImportResult:
    collection: CollectionInfo
    imported: int
    replaced: bool

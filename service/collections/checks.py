"""Checks of collection requests that the schemas cannot make: limits from ``Settings`` and
the loaded checkpoint. Each raises ``InvalidInput`` (422) or ``TooLarge`` (413), naming the item.
"""

from __future__ import annotations

import json

import numpy as np

from service import validation
from service.collections.files import nesting_depth
from service.collections.schemas import SearchRequest, UpsertRequest
from service.errors import InvalidInput, TooLarge
from service.settings import Settings

# One search request may not make the server build more than this many hits, or decode more
# than this many candidate rows: a 10 000-query batch at k=1000 would be a 10M-hit answer.
MAX_HITS = 1_000_000
MAX_RERANK_ROWS = 2_000_000


def item_ids(req: UpsertRequest, settings: Settings) -> list[str]:
    """The ids, each short enough, NUL-free and once per request."""
    ids = [item.id for item in req.items]
    seen: dict[str, int] = {}
    for i, item_id in enumerate(ids):
        if len(item_id) > settings.max_id_chars:
            raise InvalidInput(
                f"items[{i}].id has {len(item_id)} characters, more than {settings.max_id_chars} "
                "(MONOLITH_MAX_ID_CHARS)"
            )
        if "\x00" in item_id:
            raise InvalidInput(f"items[{i}].id contains a NUL character")
        if not validation.is_unicode(item_id):
            raise InvalidInput(f"items[{i}].id {validation.NOT_UNICODE}")
    for i, item_id in enumerate(ids):
        if item_id in seen:
            raise InvalidInput(
                f"duplicate id {item_id!r} at items[{seen[item_id]}] and items[{i}]; "
                "each id may appear once per request"
            )
        seen[item_id] = i
    return ids


def item_metadata(req: UpsertRequest, settings: Settings) -> list[str | None]:
    """Each item's metadata as compact JSON text, within ``max_metadata_bytes``."""
    out: list[str | None] = []
    for i, item in enumerate(req.items):
        if item.metadata is None:
            out.append(None)
            continue
        depth = nesting_depth(item.metadata, settings.max_metadata_depth)
        if depth > settings.max_metadata_depth:
            raise InvalidInput(
                f"items[{i}].metadata nests more than {settings.max_metadata_depth} levels of objects and arrays "
                "(MONOLITH_MAX_METADATA_DEPTH); flatten it"
            )
        try:
            raw = json.dumps(item.metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise InvalidInput(f"items[{i}].metadata contains NaN or Infinity, which JSON cannot carry") from None
        try:
            size = len(raw.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInput(f"items[{i}].metadata {validation.NOT_UNICODE}") from None
        if size > settings.max_metadata_bytes:
            raise InvalidInput(
                f"items[{i}].metadata is {size} bytes as JSON, more than the limit of "
                f"{settings.max_metadata_bytes} (MONOLITH_MAX_METADATA_BYTES)"
            )
        out.append(raw)
    return out


def item_embedding(embedding: list[float], i: int, dim: int) -> np.ndarray:
    if len(embedding) != dim:
        raise InvalidInput(f"items[{i}].embedding has {len(embedding)} values; it needs {dim}")
    x = validation.embeddings(embedding, dim, where=f"items[{i}].embedding: ")
    return validation.nonzero_embeddings(x, f"items[{i}].embedding")[0]


def item_text(text: str | None, i: int, settings: Settings) -> str:
    try:
        return validation.texts([text], settings.max_text_chars)[0]
    except InvalidInput as exc:
        raise InvalidInput(f"items[{i}].text: {str(exc).removeprefix('texts[0] ')}") from None


def search_limits(req: SearchRequest, settings: Settings, rescore: bool = False) -> int:
    """The candidates to rank again (rescored or re-ranked), once the request's size is within every limit."""
    n = len(req.texts if req.texts is not None else req.embeddings or [])
    validation.batch_size(n, settings.max_batch)
    default = settings.rescore_candidates if rescore else settings.default_candidates
    candidates = default if req.candidates is None else req.candidates
    if candidates > settings.max_candidates:
        raise InvalidInput(f"candidates={candidates} is more than the limit of {settings.max_candidates} "
                           "(MONOLITH_MAX_CANDIDATES)")
    if n * req.k > MAX_HITS:
        raise TooLarge(f"{n} queries × k={req.k} is more than {MAX_HITS} hits; send fewer queries")
    if candidates and n * max(candidates, req.k) > MAX_RERANK_ROWS:
        raise TooLarge(f"{n} queries × {candidates} candidates is more than {MAX_RERANK_ROWS} rows to "
                       "re-rank; send fewer queries or ask for fewer candidates")
    return candidates

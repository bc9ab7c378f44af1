"""Request input, checked once at the route boundary into what the batcher trusts.

Each check raises ``InvalidInput`` (422) or ``TooManyRows`` (413) with a message that names
the first offending item. The model's own rules (dimension, finiteness, code range) stay in
``vqvae.api.check_embeddings`` / ``check_codes``; this module only words them for HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from service.errors import NOT_UNICODE, InvalidInput, TooManyRows, validation_error
from vqvae.api import check_codes, check_embeddings

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """A JSON body read by hand (routes that also take .npy), failing like a declared body."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def batch_size(rows: int, limit: int) -> None:
    if rows > limit:
        raise TooManyRows(rows, limit)


def row_lengths(rows: Sequence[Sequence[Any]], width: int, field: str, why: str | None = None) -> None:
    """Ragged JSON rows get a message naming the row, before numpy turns them into objects."""
    for i, row in enumerate(rows):
        if len(row) != width:
            reason = f" ({why})" if why else ""
            raise InvalidInput(f"{field}[{i}] has {len(row)} values; every row needs {width}{reason}")


def embeddings(x: Any, dim: int, where: str = "") -> np.ndarray:
    """float32 C-contiguous [N, dim], finite; ``where`` prefixes the message (``items[3].embedding: ``)."""
    try:
        return check_embeddings(x, dim)
    except ValueError as exc:
        raise InvalidInput(f"{where}{exc}") from None


def first_zero_row(x: np.ndarray) -> int | None:
    """The index of the first all-zero row of a checked [N, dim] array, or None."""
    zero = np.flatnonzero(~np.any(x != 0, axis=1))
    return int(zero[0]) if len(zero) else None


def nonzero_embeddings(x: np.ndarray, name: str = "embeddings[{i}]") -> np.ndarray:
    """``x`` unchanged, or a 422 naming the first all-zero row (``name`` formatted with its index
    ``i``): a zero vector has no direction, so no codes stand for it; encoding one gave codes
    that decode to some unrelated vector."""
    i = first_zero_row(x)
    if i is not None:
        raise InvalidInput(f"{name.format(i=i)} is all zeros: a zero vector has no direction to encode; "
                           "send L2-normalised embeddings")
    return x


def query_embeddings(x: Any, dim: int) -> np.ndarray:
    """Search queries, checked and scaled to unit length: search ranks by cosine, which ignores
    a query's length, but the scores of a huge (finite) one overflow float32 and its hits were
    lost. A zero row has no direction to search in and is refused."""
    q = embeddings(x, dim).astype(np.float64)
    norms = np.linalg.norm(q, axis=1)
    zero = np.flatnonzero(~(norms > 0))
    if len(zero):
        raise InvalidInput(f"embeddings[{zero[0]}] is all zeros: a search query needs a direction")
    return np.ascontiguousarray(q / norms[:, None], dtype=np.float32)


def codes(x: Any, num_heads: int, codebook_size: int) -> np.ndarray:
    """int64 [N, H] codes within the loaded checkpoint's codebook."""
    try:
        return check_codes(x, num_heads, codebook_size)
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(str(exc)) from None


def is_unicode(text: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot (lone surrogates, e.g. ``"\\ud800"``):
    SQLite and the tokenizer would fail on them later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def texts(items: Any, max_chars: int | None = None) -> list[str]:
    """A list of non-empty strings of at most ``max_chars`` characters."""
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise InvalidInput("texts must be a list of strings")
    out = list(items)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InvalidInput(f"texts[{i}] must be a string, got {type(t).__name__}")
        if not t.strip():
            raise InvalidInput(f"texts[{i}] is empty; every text needs some non-space characters")
        if not is_unicode(t):
            raise InvalidInput(f"texts[{i}] {NOT_UNICODE}")
        if max_chars is not None and len(t) > max_chars:
            raise InvalidInput(
                f"texts[{i}] has {len(t)} characters, more than the limit of {max_chars} "
                "(MONOLITH_MAX_TEXT_CHARS); shorten or split it"
            )
    return out

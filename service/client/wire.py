"""How requests travel: the request record an operation yields, collection paths, ``.npy``
bodies, and the packing of JSON arrays into bodies that fit the server's limits.

Values are shaped here and checked by the server: shapes, dimensions and code ranges have one
set of rules (the server's), so the client never rejects what the server would accept.
"""

from __future__ import annotations

import io
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import numpy as np

NPY = "application/x-npy"
R = TypeVar("R")


@dataclass
class Request:
    """One HTTP request of an operation, before the client (sync or async) sends it."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Limits:
    """The server's request limits (``GET /model`` ``limits``)."""

    max_batch: int
    max_body_bytes: int
    max_text_chars: int


# An operation: a generator that yields requests, receives their (successful) responses and
# returns the operation's result.
Plan = Generator[Request, httpx.Response, R]


def path(name: str, *rest: str) -> str:
    """``/collections/{name}/...`` with the name quoted (a name never reaches another route)."""
    return "/".join(["/collections", quote(name, safe=""), *rest])


def pack(parts: list[bytes], max_count: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """Slices ``[i, j)`` of JSON-encoded elements whose JSON array fits both limits."""
    i = 0
    while i < len(parts):
        size, j = 2, i
        while j < len(parts) and j - i < max_count and (j == i or size + len(parts[j]) + 1 <= max_bytes):
            size += len(parts[j]) + 1
            j += 1
        yield i, j
        i = j


def ids(values: Sequence[Any]) -> list[str]:
    """Item ids as strings; one string instead of a list is a mistake, not a list of characters."""
    if isinstance(values, str):
        raise TypeError("ids must be a sequence of strings, not one string")
    out = []
    for i in values:
        if isinstance(i, bool) or not isinstance(i, str | int):
            raise TypeError(f"ids must be strings (or ints, sent as strings), got {type(i).__name__}")
        out.append(str(i))
    return out


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npy_load(resp: httpx.Response) -> np.ndarray:
    return np.load(io.BytesIO(resp.content), allow_pickle=False)


def matrix(x: Any, dtype: type | None = None) -> np.ndarray:
    """A row-per-item array; shape and value checks are the server's (one set of rules)."""
    arr = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    return np.ascontiguousarray(arr[None, :] if arr.ndim == 1 else arr)


def codes_array(codes: Any) -> np.ndarray:
    """uint8 when every code fits (1 byte per code on the wire); otherwise sent as they are so
    the server's 422 names the bad values instead of a silent wrap-around here."""
    c = matrix(codes)
    if np.issubdtype(c.dtype, np.integer) and c.size and c.min() >= 0 and c.max() <= 255:
        return c.astype(np.uint8)
    return c

"""Kept vectors: each item's input vector, stored on disk beside its codes, for exact rescoring,
migration to another checkpoint and fitting a collection's own model.

RAM holds only the codes (4 bytes an item); the vectors live in the ``vector`` column of the
collection's SQLite file, written in the same transaction as the codes, so a kill -9 can never
leave one without the other. Three kinds (``PUT /collections/{name}`` ``"vectors"``):

* ``int8`` (default, 4 + d bytes): each row scaled by its own largest magnitude, ``q = round(127
  · x / max|x|)``, with that scale kept as a float32 before the bytes. A per-row scale needs no
  range fitted per collection or per dimension, so it cannot go stale as a collection grows or
  its data moves, and it serves vectors of any scale. For unit-length MiniLM vectors the step is
  about 0.002 against a typical component of 0.05: the cosine of a row and its int8 copy is above
  0.9999 (tests/service/collections/test_vectors.py), far below what changes a top-10.
* ``float16`` (2·d bytes): half precision, for users who want the last digit.
* ``none``: nothing is kept; search re-ranks by the decoded codes, as before kept vectors existed.

An item stored without a vector (imported from an older export, or written before the collection
kept vectors) is rescored by its decoded codes instead.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

VectorKind = Literal["int8", "float16", "none"]
KINDS: tuple[str, ...] = get_args(VectorKind)
DEFAULT_KIND: VectorKind = "int8"
META_KEY = "vectors"  # the collection's kind, in its meta table


def row_bytes(kind: str, dim: int) -> int:
    """Bytes one kept vector takes in its blob."""
    return {"int8": 4 + dim, "float16": 2 * dim, "none": 0}[kind]


def pack(kind: str, x: np.ndarray) -> list[bytes | None]:
    """The blobs that keep the rows of ``x`` (float32 [N, d]); Nones for ``none``."""
    x = np.asarray(x, dtype=np.float32)
    if kind == "none":
        return [None] * len(x)
    if kind == "float16":
        return [row.tobytes() for row in x.astype(np.float16)]
    if kind != "int8":
        raise ValueError(f"vectors must be one of {list(KINDS)}, got {kind!r}")
    scale = np.abs(x).max(axis=1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    return [s.tobytes() + row.tobytes() for s, row in zip(scale.astype(np.float32), q, strict=True)]


def unpack(kind: str, blobs: list[bytes], dim: int, scaled: bool = True) -> np.ndarray:
    """float32 [len(blobs), d] from blobs made by :func:`pack` with the same kind. ``scaled=False``
    leaves int8 rows unscaled (each off by its own positive factor): enough for a cosine, and a
    third of the work where rescoring reads thousands of rows per search."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    raw = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    width = row_bytes(kind, dim)
    if raw.size != width * len(blobs):
        raise ValueError(f"kept vectors are not {width} bytes each")
    rows = raw.reshape(len(blobs), width)
    if kind == "float16":
        return rows.view(np.float16).astype(np.float32)
    # One contiguous conversion and a view past the scale bytes: converting the strided
    # [:, 4:] view directly is several times slower.
    values = raw.view(np.int8).astype(np.float32).reshape(len(blobs), width)[:, 4:]
    if not scaled:
        return values
    return values * rows[:, :4].copy().view(np.float32)

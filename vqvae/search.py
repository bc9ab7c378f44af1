"""Search in the compressed domain: asymmetric distance computation (ADC) over 4-byte codes.

A stored vector is only its H one-byte codes. A query keeps its full encoder output z_e, so
the squared L2 distance from z_e to the quantised latent z_q of every stored row is a sum of H
look-ups into per-query tables (one table of K distances per head). That is exact for the
latent geometry the model was trained in and never decodes the database.

Two interchangeable ADC kernels score the rows:

* ``"faiss"`` hands faiss's ``ProductQuantizer.search`` (M=4 unrolled scanner, heap top-k,
  OpenMP over queries) a pointer to our own code buffer: no copy, no second index to keep in
  sync. It is the default: it measured ~1.3-2x faster than the numpy kernel on 2 cores
  (bench/bench_search.py).
* ``"numpy"`` merges head pairs into 65 536-entry tables (two gathers per row instead of
  four) and finds the top-k with a sampled threshold instead of a full ``argpartition``.

Optionally the top ``candidates`` rows are re-ranked by the exact cosine between the query
embedding and the decoder's reconstruction of each candidate (``vqvae.decoding.CodeDecoder``).

:class:`CodeIndex` stores codes densely in one uint8 [capacity, H] array addressed by row
(4 bytes per vector, nothing per item in Python). Deletion swaps the last row into the hole,
so rows stay dense and every kernel scans only live rows; the caller (``service.collections``)
maps its own ids to rows and applies the same moves, which :func:`swap_remove_plan` spells out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

Backend = Literal["numpy", "faiss"]
BACKENDS: tuple[Backend, ...] = ("faiss", "numpy")
DEFAULT_BACKEND: Backend = "faiss"
MAX_CODES = 256  # one byte per head
DENSE_MASK = 0.5  # a row mask admitting at least this share is served by an over-fetching full scan

# Score names, reported to users next to the scores (see docs/collections.md).
METRIC_COSINE = "cosine"  # re-ranked: cosine(query embedding, decoded candidate)
METRIC_LATENT_COSINE = "latent_cosine"  # ADC with unit-norm heads: 1 - d / (2H) = mean per-head cosine
METRIC_NEG_L2 = "neg_sq_l2"  # ADC otherwise: minus the squared latent distance

Decoder = Callable[[np.ndarray], np.ndarray]


@dataclass
class SearchResult:
    """One row per query, best first. ``rows`` is -1 (and ``scores`` -inf) past the stored count."""

    rows: np.ndarray  # int64 [Q, k]
    scores: np.ndarray  # float32 [Q, k], higher is better
    metric: str


def swap_remove_plan(n: int, rows: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """Moves ``(src, dst)`` that delete ``rows`` from a dense table of ``n`` rows.

    Rows are removed highest first; each removal moves the current last row into the hole
    (a removed row that is itself the last row needs no move). Applying the moves in order,
    after dropping the removed rows, leaves rows ``0..n-len(rows)-1`` dense. Highest-first
    matters: a row still to be removed is never the last row when a lower hole is filled.
    """
    uniq = np.unique(np.asarray(rows, dtype=np.int64))
    if uniq.size and (uniq[0] < 0 or uniq[-1] >= n):
        raise IndexError(f"rows must lie in 0..{n - 1}")
    moves: list[tuple[int, int]] = []
    size = n
    for r in uniq[::-1].tolist():
        last = size - 1
        if r != last:
            moves.append((last, r))
        size -= 1
    return moves


def lookup_tables(z_e: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Squared L2 from each head of each query to each code: float32 [Q, H, K]."""
    h, k, d = codebooks.shape
    z = np.ascontiguousarray(z_e, dtype=np.float32).reshape(len(z_e), h, d)
    cross = np.einsum("qhd,hkd->qhk", z, codebooks, optimize=True)
    tables = (z * z).sum(-1)[:, :, None] - 2.0 * cross + (codebooks * codebooks).sum(-1)[None]
    return tables.astype(np.float32, copy=False)


def smallest_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest values, ascending (stable on ties).

    A full ``argpartition`` of a million floats costs more than scoring them, so a threshold
    is taken first from a strided sample: the k-th smallest sample value is ≥ the k-th
    smallest overall (the sample is a subset), so at least k values pass it and the answer is
    exact; about ``k·n/m`` values pass for a sample of m, partitioned cheaply.
    """
    n = values.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k == n:
        idx = np.arange(n)
    else:
        m = max(4 * k, 2 * math.isqrt(k * n))
        if m * 4 >= n:
            idx = np.argpartition(values, k - 1)[:k]
        else:
            sample = values[:: n // m]
            threshold = np.partition(sample, k - 1)[k - 1]
            idx = np.flatnonzero(values <= threshold)
            if idx.size > k:
                idx = idx[np.argpartition(values[idx], k - 1)[:k]]
    return idx[np.argsort(values[idx], kind="stable")].astype(np.int64, copy=False)


def adc_scores(dist: np.ndarray, rows: np.ndarray, metric: str, num_heads: int) -> np.ndarray:
    """ADC distances as the scores a search returns: latent cosine (each head's codes unit length)
    or −L2; -inf where ``rows`` is -1 (fewer than k results)."""
    scores = 1.0 - dist / (2.0 * num_heads) if metric == METRIC_LATENT_COSINE else -dist
    return np.where(rows >= 0, scores, -np.inf).astype(np.float32)


def rerank_queries(z_e: np.ndarray, queries: np.ndarray | None, decoder: object | None) -> np.ndarray:
    """The float queries [Q, d] that re-ranking needs, checked against the latent queries."""
    if queries is None or decoder is None:
        raise ValueError("re-ranking (candidates > 0) needs the query embeddings and a decoder")
    x = np.asarray(queries, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if len(x) != len(np.atleast_2d(z_e)):
        raise ValueError(f"{len(x)} query embeddings for {len(np.atleast_2d(z_e))} latent queries")
    return x


def rerank_by_cosine(
    queries: np.ndarray, candidates: np.ndarray, k: int, reconstruct: Callable[[np.ndarray], np.ndarray]
) -> SearchResult:
    """The re-ranking step, defined once: each query's candidate rows, best k by exact cosine.

    ``candidates`` int [Q, C] holds row numbers (-1 where there is none); ``reconstruct(rows)``
    returns the reconstructions [len(rows), d] of a 1-D array of rows, at any scale (they are
    normalised here, as are the queries). Scores are the cosines; rows past the valid candidates
    are -1 with score -inf. Work is done in blocks of about 65 536 candidates.
    """
    x = np.asarray(queries, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cand = np.asarray(candidates, dtype=np.int64)
    q, c = cand.shape
    if len(x) != q:
        raise ValueError(f"{len(x)} queries for {q} candidate lists")
    rows = np.full((q, k), -1, dtype=np.int64)
    scores = np.full((q, k), -np.inf, dtype=np.float32)
    step = max(1, 65536 // max(c, 1))  # bound the reconstructions held at once
    valid = cand >= 0
    for s in range(0, q, step):
        blk, ok = cand[s : s + step], valid[s : s + step]
        if not ok.any():
            continue
        recon = np.asarray(reconstruct(blk[ok]), dtype=np.float32)
        # cos = <r, x> / |r| row by row: two passes over the block, no normalised copy of it
        norms = np.sqrt(np.maximum(np.einsum("nd,nd->n", recon, recon), 1e-24))
        sims = np.full(blk.shape, -np.inf, dtype=np.float32)
        sims[ok] = np.einsum("nd,nd->n", recon, x[s : s + step][np.nonzero(ok)[0]]) / norms
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        top_rows = np.take_along_axis(blk, order, axis=1)
        top_sims = np.take_along_axis(sims, order, axis=1)
        kk = top_rows.shape[1]
        rows[s : s + step, :kk] = np.where(np.isfinite(top_sims), top_rows, -1)
        scores[s : s + step, :kk] = top_sims
    return SearchResult(rows=rows, scores=scores, metric=METRIC_COSINE)


class CodeIndex:
    """A dense table of H-byte codes with ADC search; rows are positions, not ids.

    Not thread-safe: callers serialise mutation and search (``service.collections`` holds a lock).
    """

    def __init__(
        self,
        codebooks: np.ndarray | torch.Tensor,
        backend: Backend = DEFAULT_BACKEND,
        latent_unit_heads: bool = False,
    ) -> None:
        cb = codebooks.detach().cpu().numpy() if isinstance(codebooks, torch.Tensor) else np.asarray(codebooks)
        if cb.ndim != 3:
            raise ValueError(f"codebooks must be [heads, codes, dim], got shape {list(cb.shape)}")
        h, k, d = cb.shape
        if k > MAX_CODES:
            raise ValueError(f"at most {MAX_CODES} codes per head fit in a byte, got {k}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.num_heads, self.codebook_size, self.head_dim = h, k, d
        # Pad to 256 codes: unused entries are never referenced by stored codes, and a full
        # byte range lets faiss (nbits=8) and the pair tables index by the raw byte.
        padded = np.zeros((h, MAX_CODES, d), dtype=np.float32)
        padded[:, :k] = cb
        self.codebooks = padded
        self.backend: Backend = backend
        # With unit-norm heads and codes, d = Σ_h (2 − 2 cos_h): report 1 − d/(2H) as similarity.
        self.metric = METRIC_LATENT_COSINE if latent_unit_heads else METRIC_NEG_L2
        self._codes = np.zeros((0, h), dtype=np.uint8)
        self._n = 0
        self._pq = None

    @classmethod
    def from_model(cls, model: nn.Module, backend: Backend = DEFAULT_BACKEND) -> CodeIndex:
        return cls(
            model.quantizer.codebooks,
            backend=backend,
            latent_unit_heads=bool(getattr(model.config, "latent_unit_heads", False)),
        )

    # ---- storage -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    @property
    def codes(self) -> np.ndarray:
        """The stored codes, uint8 [n, H] (a read-only view)."""
        view = self._codes[: self._n]
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Bytes held for codes (capacity included)."""
        return self._codes.nbytes

    def reserve(self, capacity: int) -> None:
        """Grow the buffer to hold ``capacity`` rows (bulk loads size it once, exactly)."""
        if capacity > self._codes.shape[0]:
            grown = np.zeros((capacity, self.num_heads), dtype=np.uint8)
            grown[: self._n] = self._codes[: self._n]
            self._codes = grown

    def _check(self, codes: np.ndarray) -> np.ndarray:
        arr = np.asarray(codes)
        if arr.ndim == 1 and arr.shape[0] == self.num_heads:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != self.num_heads:
            raise ValueError(f"codes must have shape [N, {self.num_heads}], got {list(arr.shape)}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"codes must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in 0..{self.codebook_size - 1}")
        return arr.astype(np.uint8, copy=False)

    def add(self, codes: np.ndarray) -> np.ndarray:
        """Append rows; returns their row numbers (int64)."""
        c = self._check(codes)
        need = self._n + len(c)
        if need > self._codes.shape[0]:
            self.reserve(max(need, int(self._codes.shape[0] * 1.5) + 1024))
        rows = np.arange(self._n, need, dtype=np.int64)
        self._codes[self._n : need] = c
        self._n = need
        return rows

    def replace(self, rows: np.ndarray | Sequence[int], codes: np.ndarray) -> None:
        """Overwrite existing rows (an upsert of a known id)."""
        r = self._rows(rows)
        c = self._check(codes)
        if len(r) != len(c):
            raise ValueError(f"{len(r)} rows but {len(c)} code rows")
        self._codes[r] = c

    def remove(
        self, rows: np.ndarray | Sequence[int], moves: list[tuple[int, int]] | None = None
    ) -> list[tuple[int, int]]:
        """Delete rows by moving the last row into each hole; returns the moves applied.

        ``moves``: ``swap_remove_plan(len(self), rows)`` when the caller has already computed it
        to move its own records the same way (``service.collections`` writes it to SQLite first),
        so the plan is computed once and both sides apply the same one.
        """
        r = np.unique(self._rows(rows))
        if moves is None:
            moves = swap_remove_plan(self._n, r)
        removed = len(r)
        for src, dst in moves:
            self._codes[dst] = self._codes[src]
        self._n -= removed
        return moves

    def _rows(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        if r.size and (r.min() < 0 or r.max() >= self._n):
            raise IndexError(f"rows must lie in 0..{self._n - 1}")
        return r

    # ---- search --------------------------------------------------------------------------

    def _check_latent(self, z_e: np.ndarray) -> np.ndarray:
        z = np.asarray(z_e, dtype=np.float32)
        if z.ndim == 1:
            z = z[None]
        dim = self.num_heads * self.head_dim
        if z.ndim != 2 or z.shape[1] != dim:
            raise ValueError(f"latent queries must have shape [Q, {dim}], got {list(z.shape)}")
        return np.ascontiguousarray(z)

    def adc(
        self, z_e: np.ndarray, k: int, backend: Backend | None = None, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Squared latent distances [Q, k] (ascending) and rows [Q, k]; -1 / inf past the count.

        ``rows``: scan only these rows, so the top k are the best k among them (not a filtered
        global top k): distinct ascending row numbers, or a bool mask over all rows (e.g. the
        rows a metadata filter matched). A mask admitting most rows is served by a scan of
        every row for more than k, kept when at least k of them are admitted (then they are
        exactly the best k admitted), which is cheaper than gathering the admitted codes.
        """
        z = self._check_latent(z_e)
        if k < 1:
            raise ValueError("k must be at least 1")
        q = len(z)
        dist = np.full((q, k), np.inf, dtype=np.float32)
        out_rows = np.full((q, k), -1, dtype=np.int64)
        if rows is not None and np.asarray(rows).dtype == bool:
            mask = np.asarray(rows)
            if mask.shape != (self._n,):
                raise ValueError(f"a row mask must have one entry per row ({self._n}), got {list(mask.shape)}")
            admitted = int(np.count_nonzero(mask))
            if q and admitted >= max(k, DENSE_MASK * self._n):
                found = self._adc_masked(z, k, backend, mask, admitted)
                if found is not None:
                    return found
            rows = np.flatnonzero(mask)
        if rows is None:
            codes = self._codes[: self._n]  # a view: the buffer is C-contiguous
        else:
            subset = self._rows(rows)
            codes = self._gather(subset)
        kk = min(k, len(codes))
        if q == 0 or kk == 0:
            return dist, out_rows
        backend = backend or self.backend
        if backend == "faiss":
            d, r = self._adc_faiss(z, kk, codes)
        elif backend == "numpy":
            d, r = self._adc_numpy(z, kk, codes)
        else:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        dist[:, :kk], out_rows[:, :kk] = d, (r if rows is None else np.where(r >= 0, subset[r], -1))
        return dist, out_rows

    def _adc_masked(self, z: np.ndarray, k: int, backend: Backend | None, mask: np.ndarray,
                    admitted: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Best k admitted rows from a full scan for more than k; None where some query's
        scan held fewer than k admitted rows (the caller then scans the admitted rows alone)."""
        want = min(self._n, int(k * self._n / admitted * 1.5) + 16)  # ~1.5 k admitted expected
        dist, rows = self.adc(z, want, backend)
        ok = mask[rows]  # want ≤ n, so every row is valid
        if not (ok.sum(axis=1) >= k).all():
            return None
        first = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # admitted ones, in distance order
        return np.take_along_axis(dist, first, 1), np.take_along_axis(rows, first, 1)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """The codes of ``rows``, uint8 [len(rows), H], copied contiguously for the kernels."""
        table = self._codes[: self._n]
        if self.num_heads == 4:  # one 4-byte copy per row instead of four 1-byte ones
            return table.view(np.uint32)[rows].view(np.uint8).reshape(-1, 4)
        return table[rows]

    def _adc_faiss(self, z: np.ndarray, k: int, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if self._pq is None:
            pq = faiss.ProductQuantizer(self.num_heads * self.head_dim, self.num_heads, 8)
            faiss.copy_array_to_vector(self.codebooks.ravel(), pq.centroids)
            self._pq = pq
        codes = np.ascontiguousarray(codes)
        dist = np.empty((len(z), k), dtype=np.float32)
        rows = np.empty((len(z), k), dtype=np.int64)
        heap = faiss.float_maxheap_array_t()
        heap.nh, heap.k = len(z), k
        heap.val, heap.ids = faiss.swig_ptr(dist), faiss.swig_ptr(rows)
        self._pq.search(faiss.swig_ptr(z), len(z), faiss.swig_ptr(codes), len(codes), heap, True)
        return dist, rows

    def _adc_numpy(self, z: np.ndarray, k: int, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tables = lookup_tables(z, self.codebooks)  # [Q, H, 256]
        h = self.num_heads
        pairs = h // 2
        n = len(codes)
        codes = np.ascontiguousarray(codes)
        wide = codes[:, : 2 * pairs].view("<u2") if pairs else None  # byte pair → c_a + 256·c_b
        scores = np.empty(n, dtype=np.float32)
        tmp = np.empty(n, dtype=np.float32)
        dist = np.empty((len(z), k), dtype=np.float32)
        rows = np.empty((len(z), k), dtype=np.int64)
        for i, t in enumerate(tables):
            for j in range(pairs):
                pair = (t[2 * j + 1][:, None] + t[2 * j][None, :]).ravel()
                np.take(pair, wide[:, j], out=scores if j == 0 else tmp)
                if j:
                    scores += tmp
            if h % 2:
                np.take(t[h - 1], codes[:, h - 1], out=scores if not pairs else tmp)
                if pairs:
                    scores += tmp
            top = smallest_k(scores, k)
            dist[i], rows[i] = scores[top], top
        return dist, rows

    def search(
        self,
        z_e: np.ndarray,
        k: int = 10,
        candidates: int = 0,
        queries: np.ndarray | None = None,
        decoder: Decoder | None = None,
        backend: Backend | None = None,
        rows: np.ndarray | None = None,
    ) -> SearchResult:
        """Top-k rows per query.

        ``candidates=0``: ADC order, scored as :attr:`metric`. ``candidates>0``: the top
        ``max(candidates, k)`` ADC rows are decoded and re-ranked by cosine with ``queries``
        (the float embeddings whose encoder outputs are ``z_e``), scored as that cosine.
        ``rows``: search only these rows (see :meth:`adc`).
        """
        if candidates < 0:
            raise ValueError("candidates must be ≥ 0")
        if candidates == 0:
            dist, found = self.adc(z_e, k, backend, rows)
            return SearchResult(rows=found, scores=adc_scores(dist, found, self.metric, self.num_heads),
                                metric=self.metric)
        x = rerank_queries(z_e, queries, decoder)
        _, cand = self.adc(z_e, max(candidates, k), backend, rows)
        return self._rerank(x, cand, k, decoder)

    def _rerank(self, x: np.ndarray, cand: np.ndarray, k: int, decoder: Decoder) -> SearchResult:
        def reconstruct(rows: np.ndarray) -> np.ndarray:
            uniq, inverse = self._distinct(self._codes[rows])  # each distinct code decoded once
            return np.asarray(decoder(uniq), dtype=np.float32)[inverse]

        return rerank_by_cosine(x, cand, k, reconstruct)

    def _distinct(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct code rows and the inverse map, so each distinct code is decoded once."""
        if self.num_heads > 8:
            uniq, inverse = np.unique(codes, axis=0, return_inverse=True)
            return uniq.astype(np.int64), inverse.reshape(-1)
        key = np.zeros(len(codes), dtype=np.uint64)
        for j in range(self.num_heads):
            key |= codes[:, j].astype(np.uint64) << np.uint64(8 * j)
        uniq, inverse = np.unique(key, return_inverse=True)
        rows = np.stack([(uniq >> np.uint64(8 * j)) & np.uint64(255) for j in range(self.num_heads)], 1)
        return rows.astype(np.int64), inverse

"""Codebook health from code counts: how evenly a model spends its 8 bits per head.

A compressor wants every code used about equally (≈ log2 K bits per head). The Zipf fit
is reported so users can compare with the rank–frequency figures they know; it is not a
target, and the status is judged by dead codes and normalised entropy alone — and only once
enough vectors were counted (about 20 per codebook entry): a few requests' codes leave most
entries unused by chance, which is no sign of a collapsed codebook.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

Status = Literal["healthy", "warning", "collapsed", "insufficient_data"]


class HealthThresholds(BaseModel):
    """When a head stops being healthy. Defaults: ≥ 240 of 256 codes used, ≥ 0.9 of max entropy,
    judged once 20 vectors per codebook entry (5,120 for 256 codes) were counted."""

    warn_dead_fraction: float = Field(16 / 256, ge=0, le=1)
    warn_normalized_entropy: float = Field(0.9, ge=0, le=1)
    collapsed_usage: float = Field(0.1, ge=0, le=1)
    collapsed_normalized_entropy: float = Field(0.5, ge=0, le=1)
    min_counts_per_code: float = Field(20.0, ge=0)


class HeadHealth(BaseModel):
    head: int
    total: int
    used: int
    dead: int
    usage: float
    entropy_bits: float
    normalized_entropy: float
    perplexity: float
    zipf_alpha: float | None
    zipf_r2: float | None
    top10_share: float


class CodebookHealth(BaseModel):
    heads: list[HeadHealth]
    overall_usage: float
    total_assignments: int
    min_vectors: int = Field(0, description="Vectors (codes per head) counted before a status is judged")
    status: Status
    reasons: list[str]


def count_codes(codes: np.ndarray | torch.Tensor, codebook_size: int) -> np.ndarray:
    """How often each code was assigned, per head: codes [N, H] → counts [H, K] (int64 numpy).

    The one definition of code counting. ``codes`` may be a numpy array or a torch tensor
    (any integer dtype, any device; tensors are detached and copied to the host), so callers
    that keep torch state convert the result with ``torch.from_numpy``. Every code must lie
    in ``[0, codebook_size)``. One ``np.bincount`` over codes offset by ``h * K``.
    """
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [rows, heads], got shape {list(codes.shape)}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must be integers, got {codes.dtype}")
    codes = codes.astype(np.int64, copy=False)
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"codes must lie in [0, {codebook_size}), got [{codes.min()}, {codes.max()}]")
    num_heads = codes.shape[1]
    flat = (codes + np.arange(num_heads, dtype=np.int64) * codebook_size).reshape(-1)
    return np.bincount(flat, minlength=num_heads * codebook_size).reshape(num_heads, codebook_size)


def zipf_fit(counts: np.ndarray) -> tuple[float | None, float | None]:
    """Least-squares line log f = c − α log r over used codes; returns (α, R²).

    None when fewer than 3 codes are used (no line to fit).
    """
    freq = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    freq = freq[freq > 0]
    if freq.size < 3:
        return None, None
    log_r = np.log(np.arange(1, freq.size + 1))
    log_f = np.log(freq)
    slope, intercept = np.polyfit(log_r, log_f, 1)
    resid = log_f - (slope * log_r + intercept)
    ss_tot = float(((log_f - log_f.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return float(-slope), r2


def head_health(head: int, counts: np.ndarray) -> HeadHealth:
    counts = np.asarray(counts, dtype=np.int64)
    k = counts.size
    total = int(counts.sum())
    used = int((counts > 0).sum())
    if total > 0:
        p = counts[counts > 0] / total
        entropy = float(-(p * np.log2(p)).sum())
        top = max(1, int(round(0.1 * k)))
        top10 = float(np.sort(counts)[::-1][:top].sum() / total)
    else:
        entropy, top10 = 0.0, 0.0
    alpha, r2 = zipf_fit(counts)
    return HeadHealth(
        head=head,
        total=total,
        used=used,
        dead=k - used,
        usage=used / k,
        entropy_bits=entropy,
        normalized_entropy=entropy / np.log2(k) if k > 1 else 0.0,
        perplexity=float(2.0**entropy),
        zipf_alpha=alpha,
        zipf_r2=r2,
        top10_share=top10,
    )


def codebook_health(counts: np.ndarray, thresholds: HealthThresholds | None = None) -> CodebookHealth:
    """Statistics and a status from counts [H, K] of assigned codes."""
    t = thresholds or HealthThresholds()
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be [heads, codes], got shape {list(counts.shape)}")
    heads = [head_health(h, c) for h, c in enumerate(counts)]
    reasons: list[str] = []
    status: Status = "healthy"
    total = int(counts.sum())
    min_vectors = math.ceil(t.min_counts_per_code * counts.shape[1])
    vectors = max((h.total for h in heads), default=0)  # every vector gives each head one code
    if total == 0 or vectors < min_vectors:
        seen = "no codes assigned yet" if total == 0 else f"{vectors} vectors counted"
        return CodebookHealth(
            heads=heads, overall_usage=float((counts > 0).mean()) if counts.size else 0.0,
            total_assignments=total, min_vectors=min_vectors, status="insufficient_data",
            reasons=[f"{seen}; the status is judged from {min_vectors} ({t.min_counts_per_code:g} per "
                     f"codebook entry): fewer leave codes unused by chance"],
        )
    for h in heads:
        if h.usage < t.collapsed_usage or h.normalized_entropy < t.collapsed_normalized_entropy:
            status = "collapsed"
            reasons.append(
                f"head {h.head}: {h.used}/{h.used + h.dead} codes used, "
                f"normalised entropy {h.normalized_entropy:.2f}"
            )
        elif h.dead / (h.used + h.dead) > t.warn_dead_fraction or h.normalized_entropy < t.warn_normalized_entropy:
            status = "warning" if status == "healthy" else status
            reasons.append(
                f"head {h.head}: {h.dead} dead codes, normalised entropy {h.normalized_entropy:.2f}"
            )
    return CodebookHealth(
        heads=heads,
        overall_usage=float((counts > 0).mean()),
        total_assignments=total,
        min_vectors=min_vectors,
        status=status,
        reasons=reasons,
    )

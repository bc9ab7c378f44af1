"""How far the vectors a model is given drift from the ones it was trained for.

Vectors from another 384-d embedding model, or from a very different domain, encode without
any error — only into poor codes. Two cheap signs show it, each judged against what the
checkpoint stored at training time:

* **Reconstruction cosine** of a sample of the traffic, cos(x, decode(encode(x))), against the
  checkpoint's own evaluation cosine (``metrics.cosine``). It is the direct symptom, and the
  sharpest one: on the shipped checkpoint, held-out WordNet/Debian vectors give 0.71–0.73,
  other text domains 0.58–0.63, and vectors that are not all-MiniLM-L6-v2's (the same vectors
  in a rotated or permuted basis, or random unit vectors) about 0.26. Drifted below
  ``min_cosine_ratio`` × the reference (0.75 × 0.72 ≈ 0.54); judged after a few hundred vectors.
* **Code usage**: the Jensen–Shannon divergence (bits; 0 = the same distribution, 1 = disjoint)
  of each head's usage distribution, traffic against the stored ``reference_counts``, averaged
  over heads; total variation is reported beside it. On the shipped checkpoint a mix like the
  reference's gives 0.02, one of its two sources alone 0.18–0.20, other domains 0.35–0.45:
  drifted beyond 0.3. Two samples of one distribution differ by chance by about
  (K − 1)(1/n₁ + 1/n₂) / (8 ln 2) bits (``noise_floor``), so usage is judged only from 20
  vectors per codebook entry, like the health status. Usage alone misses some foreign vectors
  (random unit vectors spread over the codes much as the reference does), hence the cosine.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

DriftStatus = Literal["ok", "drifted", "insufficient_data"]

USAGE_REASON = "traffic codes differ from the reference: likely another embedding model or another domain"
COSINE_REASON = ("traffic vectors reconstruct far worse than the reference: likely another embedding model "
                 "(this checkpoint expects all-MiniLM-L6-v2 vectors; for another model, train one with "
                 "monolith-train)")


class DriftThresholds(BaseModel):
    """When traffic counts as drifted from the reference, and from how many vectors that is judged."""

    max_js_divergence: float = Field(0.3, gt=0, le=1)
    min_counts_per_code: float = Field(20.0, ge=0)
    min_cosine_ratio: float = Field(0.75, gt=0, le=1)
    min_cosine_vectors: int = Field(256, ge=1)


class CodeDrift(BaseModel):
    status: DriftStatus
    reasons: list[str]
    js_divergence: float | None = Field(description="Mean over heads of the Jensen–Shannon divergence, bits (0..1)")
    js_divergence_per_head: list[float]
    total_variation: float | None = Field(description="Mean over heads of the total-variation distance (0..1)")
    noise_floor: float | None = Field(description="The JSD expected by chance alone between two samples this size")
    js_threshold: float = Field(description="Mean JSD above which the traffic's code usage counts as drifted")
    vectors: int = Field(description="Vectors counted in the traffic")
    reference_vectors: int = Field(description="Vectors behind the reference counts (0: none stored)")
    min_vectors: int = Field(description="Vectors counted before code usage is judged")
    reconstruction_cosine: float | None = Field(description="Mean cos(x, decode(encode(x))) of sampled traffic")
    reference_cosine: float | None = Field(description="The checkpoint's evaluation cosine")
    cosine_threshold: float | None = Field(description="Traffic cosine below which it counts as drifted")
    cosine_vectors: int = Field(description="Traffic vectors whose reconstruction cosine was measured")
    min_cosine_vectors: int


def reconstruction_cosines(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """Row-wise cos(x, x̂) of [N, D] arrays (0 for a zero row)."""
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1)
    dots = np.einsum("nd,nd->n", x, x_hat)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen–Shannon divergence (bits) of distributions p, q [H, K]."""
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        ratio = np.divide(a, m, out=np.ones_like(a), where=a > 0)
        return (a * np.log2(ratio)).sum(axis=1)

    return np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0)


def _distributions(counts: np.ndarray) -> tuple[np.ndarray, int]:
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    return p, int(totals.max()) if totals.size else 0


def code_drift(
    traffic: np.ndarray,
    reference: np.ndarray | None,
    *,
    cosine_sum: float = 0.0,
    cosine_vectors: int = 0,
    reference_cosine: float | None = None,
    thresholds: DriftThresholds | None = None,
) -> CodeDrift:
    """Drift of the traffic from the reference: code usage (counts [H, K] against the stored
    reference counts, or None) and reconstruction cosine (the sum and count of sampled traffic
    cosines against the checkpoint's, or None). Each sign is judged once enough was counted."""
    t = thresholds or DriftThresholds()
    traffic = np.asarray(traffic)
    if traffic.ndim != 2:
        raise ValueError(f"traffic counts must be [heads, codes], got shape {list(traffic.shape)}")
    if reference is not None and np.shape(reference) != traffic.shape:
        raise ValueError(f"reference counts must have the traffic's shape {list(traffic.shape)}, "
                         f"got {list(np.shape(reference))}")
    k = traffic.shape[1]
    p, n = _distributions(traffic)
    min_vectors = math.ceil(t.min_counts_per_code * k)
    reasons: list[str] = []
    judged = drifted = False

    js = tv = noise = None
    per_head: list[float] = []
    n_ref = 0
    if reference is not None:
        q, n_ref = _distributions(reference)
        if n and n_ref:
            per_head = [float(v) for v in js_divergence(p, q)]
            js = float(np.mean(per_head))
            tv = float((0.5 * np.abs(p - q).sum(axis=1)).mean())
            noise = float(min(1.0, (k - 1) * (1 / n + 1 / n_ref) / (8 * math.log(2))))
        if n >= min_vectors and n_ref and js is not None:
            judged = True
            if js > t.max_js_divergence:
                drifted = True
                reasons.append(f"{USAGE_REASON} (Jensen–Shannon divergence {js:.3f} bits > {t.max_js_divergence:g})")
        else:
            reasons.append(f"code usage: {n} vectors counted, judged from {min_vectors} "
                           f"({t.min_counts_per_code:g} per codebook entry)")

    cosine = cosine_sum / cosine_vectors if cosine_vectors else None
    cos_threshold = None if reference_cosine is None else t.min_cosine_ratio * reference_cosine
    if cos_threshold is not None:
        if cosine is not None and cosine_vectors >= t.min_cosine_vectors:
            judged = True
            if cosine < cos_threshold:
                drifted = True
                reasons.append(f"{COSINE_REASON}: reconstruction cosine {cosine:.2f} < {cos_threshold:.2f} "
                               f"({t.min_cosine_ratio:g} × the reference's {reference_cosine:.2f})")
        else:
            reasons.append(f"reconstruction cosine: {cosine_vectors} vectors measured, judged from "
                           f"{t.min_cosine_vectors}")

    status: DriftStatus = "drifted" if drifted else "ok" if judged else "insufficient_data"
    if status != "insufficient_data":  # say why it was judged so, not what is still being counted
        reasons = [r for r in reasons if r.startswith((USAGE_REASON, COSINE_REASON))]
    return CodeDrift(
        status=status, reasons=reasons, js_divergence=js, js_divergence_per_head=per_head, total_variation=tv,
        noise_floor=noise, js_threshold=t.max_js_divergence, vectors=n, reference_vectors=n_ref,
        min_vectors=min_vectors, reconstruction_cosine=cosine, reference_cosine=reference_cosine,
        cosine_threshold=cos_threshold, cosine_vectors=cosine_vectors, min_cosine_vectors=t.min_cosine_vectors,
    )

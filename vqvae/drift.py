"""How far the vectors a model is given drift from the ones it was trained for.

Vectors from another 384-d embedding model encode without any error — only into poor codes.
Two signs are measured, each against what the checkpoint stored at training time:

* **Reconstruction cosine** of a sample of the traffic, cos(x, decode(encode(x))), against the
  checkpoint's own evaluation cosine (``metrics.cosine``). It is the direct symptom and the one
  that decides: on the shipped checkpoint (reference 0.72), genuine all-MiniLM-L6-v2 text gives
  0.49–0.73 — held-out WordNet/Debian 0.72, other domains (man pages, info, pydoc, changelogs,
  templated sentences, questions, reviews, code) 0.57–0.68, French/German 0.49–0.54 — while the
  same vectors in another basis (what another 384-d model's look like: a random rotation) and
  random unit vectors give 0.26–0.27. Drifted below ``min_cosine_ratio`` × the reference
  (0.6 × 0.72 ≈ 0.43, between the two groups); judged from ``min_cosine_vectors`` sampled vectors.
* **Code usage**: the Jensen–Shannon divergence (bits; 0 = the same distribution, 1 = disjoint)
  of each head's usage distribution, traffic against the stored ``reference_counts``, averaged
  over heads; total variation is reported beside it. Two samples of one distribution differ by
  chance by about (K − 1)(1/n₁ + 1/n₂) / (8 ln 2) bits (``noise_floor``: 0.017 at 5,000 vectors),
  so usage is judged only from 20 vectors per codebook entry, like the health status. It tells
  the *domain*, not the model: measured, genuine text of other domains or narrow topics gives
  0.31–0.69 bits, a mix like the reference's 0.06, and another model's vectors (rotated) only
  0.23–0.38 and random vectors 0.12. So above ``max_js_divergence`` usage is ``shifted`` — a note
  in ``reasons``, never drift by itself — except for a checkpoint that stores no evaluation
  cosine, where usage is all there is and decides (``drifted`` above the same threshold).

The rule: the deciding signals (``deciding``) are the cosine where the checkpoint stores a
reference cosine, else usage. ``status`` is ``drifted`` as soon as a deciding signal was judged
drifted, ``ok`` only once every deciding signal was judged and found ok, and otherwise
``insufficient_data``, with ``needs`` saying how many more vectors each unjudged signal wants.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

DriftStatus = Literal["ok", "drifted", "insufficient_data"]
CosineStatus = Literal["ok", "drifted", "insufficient_data", "unavailable"]
UsageStatus = Literal["ok", "shifted", "insufficient_data", "unavailable"]
Signal = Literal["cosine", "usage"]

USAGE_REASON = "traffic codes differ from the reference: likely another embedding model or another domain"
USAGE_SHIFT_NOTE = "code usage differs from the reference: likely another text domain or narrower topics"
COSINE_REASON = ("traffic vectors reconstruct far worse than the reference: likely another embedding model "
                 "(this checkpoint expects all-MiniLM-L6-v2 vectors; for another model, train one with "
                 "monolith-train)")


class DriftThresholds(BaseModel):
    """When traffic counts as drifted from the reference, and from how many vectors that is judged."""

    max_js_divergence: float = Field(0.3, gt=0, le=1)
    min_counts_per_code: float = Field(20.0, ge=0)
    min_cosine_ratio: float = Field(0.6, gt=0, le=1)
    min_cosine_vectors: int = Field(256, ge=1)


class CodeDrift(BaseModel):
    status: DriftStatus = Field(
        description="drifted: a deciding signal was judged drifted; ok: every deciding signal was judged ok; "
                    "insufficient_data: not yet (see needs)")
    reasons: list[str] = Field(description="Why: the drifted signal, a usage shift, or what is still being counted")
    deciding: list[Signal] = Field(
        description="The signals that decide status: the reconstruction cosine where the checkpoint stores its "
                    "evaluation cosine, else code usage")
    cosine_status: CosineStatus = Field(
        description="The reconstruction-cosine signal alone (unavailable: the checkpoint stores no cosine)")
    usage_status: UsageStatus = Field(
        description="The code-usage signal alone; shifted: usage differs beyond js_threshold (another domain), "
                    "which is drift only where usage decides (unavailable: no reference counts)")
    needs: dict[Signal, int] = Field(
        description="More vectors each signal needs before it is judged: cosine counts sampled reconstruction "
                    "cosines, usage counts encoded vectors; judged or unavailable signals are absent")
    js_divergence: float | None = Field(description="Mean over heads of the Jensen–Shannon divergence, bits (0..1)")
    js_divergence_per_head: list[float]
    total_variation: float | None = Field(description="Mean over heads of the total-variation distance (0..1)")
    noise_floor: float | None = Field(description="The JSD expected by chance alone between two samples this size")
    js_threshold: float = Field(description="Mean JSD above which the traffic's code usage counts as shifted")
    vectors: int = Field(description="Vectors counted in the traffic")
    reference_vectors: int = Field(description="Vectors behind the reference counts (0: none stored)")
    min_vectors: int = Field(description="Vectors counted before code usage is judged")
    reconstruction_cosine: float | None = Field(description="Mean cos(x, decode(encode(x))) of sampled traffic")
    reference_cosine: float | None = Field(description="The checkpoint's evaluation cosine")
    cosine_threshold: float | None = Field(description="Traffic cosine below which it counts as drifted")
    cosine_vectors: int = Field(description="Traffic vectors whose reconstruction cosine was measured")
    min_cosine_vectors: int = Field(description="Sampled vectors measured before the cosine is judged")


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
    cosines against the checkpoint's, or None). The rule is the module docstring's."""
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
    needs: dict[Signal, int] = {}
    counting: list[str] = []  # what is still being counted: said only while the status waits for it

    js = tv = noise = None
    per_head: list[float] = []
    n_ref = 0
    usage: UsageStatus = "unavailable"
    if reference is not None:
        q, n_ref = _distributions(reference)
        if n and n_ref:
            per_head = [float(v) for v in js_divergence(p, q)]
            js = float(np.mean(per_head))
            tv = float((0.5 * np.abs(p - q).sum(axis=1)).mean())
            noise = float(min(1.0, (k - 1) * (1 / n + 1 / n_ref) / (8 * math.log(2))))
        if not n_ref:
            usage = "unavailable"  # all-zero reference counts: nothing to compare with
        elif n >= min_vectors and js is not None:
            usage = "shifted" if js > t.max_js_divergence else "ok"
        else:
            usage = "insufficient_data"
            needs["usage"] = min_vectors - n
            counting.append(f"code usage: {n} vectors counted, judged from {min_vectors} "
                            f"({t.min_counts_per_code:g} per codebook entry)")

    cosine = cosine_sum / cosine_vectors if cosine_vectors else None
    cos_threshold = None if reference_cosine is None else t.min_cosine_ratio * reference_cosine
    cos_status: CosineStatus = "unavailable"
    if cos_threshold is not None:
        if cosine is not None and cosine_vectors >= t.min_cosine_vectors:
            cos_status = "drifted" if cosine < cos_threshold else "ok"
        else:
            cos_status = "insufficient_data"
            needs["cosine"] = t.min_cosine_vectors - cosine_vectors
            counting.append(f"reconstruction cosine: {cosine_vectors} vectors measured, judged from "
                            f"{t.min_cosine_vectors}")

    deciding: list[Signal] = ["cosine"] if cos_status != "unavailable" else ["usage"] if usage != "unavailable" else []
    reasons: list[str] = []
    if cos_status == "drifted":
        reasons.append(f"{COSINE_REASON}: reconstruction cosine {cosine:.2f} < {cos_threshold:.2f} "
                       f"({t.min_cosine_ratio:g} × the reference's {reference_cosine:.2f})")
    if usage == "shifted":
        if "usage" in deciding:
            reasons.append(f"{USAGE_REASON} (Jensen–Shannon divergence {js:.3f} bits > {t.max_js_divergence:g})")
        else:
            reasons.append(f"{USAGE_SHIFT_NOTE} than the checkpoint was trained on (Jensen–Shannon divergence "
                           f"{js:.3f} bits > {t.max_js_divergence:g}); not drift by itself: genuine "
                           "all-MiniLM-L6-v2 text of another domain moves usage as much as another model's "
                           "vectors do, so the reconstruction cosine decides")
    verdicts = {"cosine": cos_status, "usage": "drifted" if usage == "shifted" else usage}
    decided = [verdicts[s] for s in deciding]
    status: DriftStatus = ("drifted" if "drifted" in decided
                           else "ok" if decided and all(v == "ok" for v in decided) else "insufficient_data")
    if status == "insufficient_data":
        reasons = counting + reasons
    return CodeDrift(
        status=status, reasons=reasons, deciding=deciding, cosine_status=cos_status, usage_status=usage,
        needs=needs, js_divergence=js, js_divergence_per_head=per_head, total_variation=tv, noise_floor=noise,
        js_threshold=t.max_js_divergence, vectors=n, reference_vectors=n_ref, min_vectors=min_vectors,
        reconstruction_cosine=cosine, reference_cosine=reference_cosine, cosine_threshold=cos_threshold,
        cosine_vectors=cosine_vectors, min_cosine_vectors=t.min_cosine_vectors,
    )

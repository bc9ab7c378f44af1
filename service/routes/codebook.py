"""GET /codebook/health (JSON) and /codebook/health.svg|.png (rank–frequency plot).

``source=traffic`` counts every code this server assigned since it started (the batcher
keeps them); ``source=reference`` is the checkpoint's stored evaluation-set counts. The
statistics are ``vqvae.health.codebook_health``'s, and for traffic ``vqvae.drift.code_drift``
says how far its usage is from the reference's (another embedding model or domain shows up
there first); nothing is recomputed here. The traffic plot draws the reference beside it.
"""

from __future__ import annotations

import logging

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Query, Response

from service.batcher import MicroBatcher
from service.deps import Batcher, State
from service.errors import NoReferenceCounts
from service.plots import MEDIA_TYPES, PlotFormat, rank_frequency_plot
from service.routes.codec import ERRORS
from service.schemas import CodebookHealthResponse, HealthSource
from service.state import ServiceState
from vqvae.drift import CodeDrift, code_drift
from vqvae.health import codebook_health

log = logging.getLogger(__name__)
router = APIRouter(tags=["codebook"])

SourceQuery = Query(
    "traffic",
    description="traffic: codes this server assigned since start; reference: the checkpoint's stored counts",
)


def counts_for(batcher: MicroBatcher, source: HealthSource) -> np.ndarray:
    """Counts [H, K] for a source; ``NoReferenceCounts`` when the checkpoint stores no usable ones."""
    if source == "traffic":
        return batcher.snapshot_counts()
    return reference_counts(batcher)


def reference_or_none(batcher: MicroBatcher) -> np.ndarray | None:
    """The checkpoint's reference counts, or None where it stores no usable ones."""
    try:
        return reference_counts(batcher)
    except NoReferenceCounts:
        return None


def reference_counts(batcher: MicroBatcher) -> np.ndarray:
    cfg = batcher.monolith.config
    raw = batcher.monolith.metadata.get("reference_counts")
    if raw is None:
        raise NoReferenceCounts("this checkpoint stores no reference_counts; use ?source=traffic")
    try:
        counts = np.asarray(raw, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        counts = np.zeros(0)
    if counts.shape != (cfg.num_heads, cfg.codebook_size) or (counts < 0).any():
        log.warning("checkpoint reference_counts have shape %s, expected %s",
                    list(counts.shape), [cfg.num_heads, cfg.codebook_size])
        raise NoReferenceCounts(
            f"this checkpoint's reference_counts are not non-negative counts of shape "
            f"[{cfg.num_heads}, {cfg.codebook_size}]; use ?source=traffic"
        )
    return counts


@router.get(
    "/codebook/health",
    response_model=CodebookHealthResponse,
    responses={401: ERRORS[401], 404: {"description": "No reference counts in the checkpoint"}, 503: ERRORS[503]},
    summary="Codebook usage statistics and status",
)
async def health(batcher: Batcher, source: HealthSource = SourceQuery) -> CodebookHealthResponse:
    if source == "reference":
        return CodebookHealthResponse(**codebook_health(reference_counts(batcher)).model_dump(), source=source)
    counts, cosine_sum, cosine_rows = batcher.snapshot_traffic()
    return CodebookHealthResponse(**codebook_health(counts).model_dump(), source=source,
                                  drift=traffic_drift(batcher, counts, cosine_sum, cosine_rows))


def traffic_drift(batcher: MicroBatcher, counts: np.ndarray, cosine_sum: float, cosine_rows: int) -> CodeDrift | None:
    """How far traffic is from the checkpoint's reference; None where it stores neither counts nor a cosine."""
    reference = reference_or_none(batcher)
    cosine = batcher.monolith.metadata.get("metrics", {})
    cosine = cosine.get("cosine") if isinstance(cosine, dict) else None
    reference_cosine = float(cosine) if isinstance(cosine, int | float) and 0 < cosine <= 1 else None
    if reference is None and reference_cosine is None:
        return None
    return code_drift(counts, reference, cosine_sum=cosine_sum, cosine_vectors=cosine_rows,
                      reference_cosine=reference_cosine)


async def _plot(state: ServiceState, batcher: MicroBatcher, source: HealthSource, fmt: PlotFormat) -> Response:
    counts = counts_for(batcher, source)
    key = f"{source}.{fmt}"
    if source == "reference" and key in state.plot_cache:
        return Response(state.plot_cache[key], media_type=MEDIA_TYPES[fmt])
    stats = codebook_health(counts)
    ref = state.model_ref
    vectors = stats.heads[0].total if stats.heads else 0
    title = f"Code rank–frequency per head: {source} counts of {vectors} vectors, {ref.name} {ref.version}"
    reference = reference_or_none(batcher) if source == "traffic" else None
    image = await anyio.to_thread.run_sync(rank_frequency_plot, counts, stats, fmt, title, reference)
    if source == "reference":  # fixed for the life of the process: render once
        state.plot_cache[key] = image
    return Response(image, media_type=MEDIA_TYPES[fmt])


@router.get(
    "/codebook/health.svg",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}, 401: ERRORS[401], 503: ERRORS[503]},
    summary="Rank–frequency plot (SVG)",
)
async def health_svg(state: State, batcher: Batcher, source: HealthSource = SourceQuery) -> Response:
    return await _plot(state, batcher, source, "svg")


@router.get(
    "/codebook/health.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 401: ERRORS[401],
               501: {"description": "matplotlib is not installed (the `plots` extra); the SVG needs nothing"},
               503: ERRORS[503]},
    summary="Rank–frequency plot (PNG)",
)
async def health_png(state: State, batcher: Batcher, source: HealthSource = SourceQuery) -> Response:
    return await _plot(state, batcher, source, "png")

"""GET /codebook/health (JSON) and /codebook/health.svg|.png (rank–frequency plot).

``source=traffic`` counts every code this server assigned since it started (the batcher
keeps them); ``source=reference`` is the checkpoint's stored evaluation-set counts. The
statistics are ``vqvae.health.codebook_health``'s, and for traffic ``drift`` is
``vqvae.drift.code_drift``'s judgement of it against the checkpoint's reference, made by the
batcher's ``service.drift.DriftWatch`` (which also logs and counts its changes); nothing is
recomputed here. The traffic plot draws the reference beside it.
"""

from __future__ import annotations

import logging

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Query, Response

from service.batcher import MicroBatcher
from service.deps import Batcher, State
from service.drift import BadReferenceCounts, stored_reference_counts
from service.errors import NoReferenceCounts
from service.plots import MEDIA_TYPES, PlotFormat, rank_frequency_plot
from service.routes.codec import ERRORS
from service.schemas import CodebookHealthResponse, HealthSource
from service.state import ServiceState
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
    try:
        counts = stored_reference_counts(batcher.monolith)
    except BadReferenceCounts as exc:
        log.warning("%s", exc)
        raise NoReferenceCounts(f"{exc}; use ?source=traffic") from exc
    if counts is None:
        raise NoReferenceCounts("this checkpoint stores no reference_counts; use ?source=traffic")
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
    counts, drift = batcher.traffic_drift()  # judged now; a change of status is logged and counted
    return CodebookHealthResponse(**codebook_health(counts).model_dump(), source=source, drift=drift)


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

"""Operational routes: /healthz (alive), /readyz (model loaded) and /metrics (Prometheus).

/healthz and /readyz never ask for the API key: orchestrators probe them without secrets.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import JSONResponse

from service.auth import header_problem, require_api_key
from service.deps import State
from service.schemas import ErrorResponse, Liveness, Readiness
from vqvae.health import codebook_health

probes = APIRouter(tags=["ops"])
protected = APIRouter(tags=["ops"], dependencies=[Depends(require_api_key)])


@probes.get("/healthz", response_model=Liveness, summary="The process is alive")
async def healthz() -> Liveness:
    return Liveness()


@probes.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": ErrorResponse, "description": "Model still loading, or failed to load"}},
    summary="The model (and text model, if enabled) is loaded",
)
async def readyz(state: State, request: Request) -> Readiness | JSONResponse:
    if state.ready:
        return Readiness(model=state.model_ref, text_model=state.batcher.embedder is not None)
    if state.load_error and header_problem(request.headers.get("authorization"), state.settings.api_key):
        # Open without the key, so the reason (it names files on the server) stays behind it.
        detail = (f"the model failed to load ({state.load_error.split(':', 1)[0]}); send the API key "
                  "(Authorization: Bearer <key>) to see why, or read the server log")
    elif state.load_error:
        detail = f"the model failed to load: {state.load_error}"
    else:
        detail = "the model is still loading"
    return JSONResponse({"detail": detail}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": "5"})


@protected.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(state: State) -> Response:
    if state.ready:
        # Code-usage gauges are refreshed at scrape time from the traffic counts.
        state.metrics.set_codebook(codebook_health(state.batcher.snapshot_counts()))
    return Response(state.metrics.render(), media_type=state.metrics.content_type)

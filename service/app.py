"""The FastAPI application: ``create_app(settings)``.

Wiring is explicit, so that a reader can follow it from here: ``create_app`` includes each
router by name (the collections router too: it is part of the service, not a plug-in) and
the lifespan opens and closes every resource (model worker, micro-batcher, collection store)
in one visible order. Everything the server holds lives in one typed object,
``service.state.ServiceState`` at ``app.state.service``; routes reach it through the
``Annotated`` dependencies of ``service.deps`` rather than through ``request.app.state``,
and errors become statuses in one table (``service.errors``) rather than in every route.

Start-up loads in the background so /healthz answers at once and /readyz tells an
orchestrator when the model (and its collections) are there; loading runs on the model
worker thread. Nothing is marked ready until every resource is open, so a route that
passes ``service.deps`` can use all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse

from service.auth import require_api_key
from service.batcher import MicroBatcher
from service.card import model_card, model_ref, service_version
from service.collections import routes as collections
from service.collections.binding import StoreModel
from service.collections.fitting import FitJobs, FitSettings
from service.collections.store import Store
from service.errors import install_error_handlers
from service.limits import BodyLimitMiddleware, MemoryBudget, ShutdownMiddleware
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.openapi import document_statuses
from service.routes import codebook, codec, dashboard, ops
from service.server import quiet_library_logs
from service.settings import Settings
from service.state import ServiceState
from vqvae.api import Monolith

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    monolith: Monolith | None = None,
    embedder: Any | None = None,
) -> FastAPI:
    """A new app with its own metrics registry and model worker.

    ``monolith`` / ``embedder`` may be passed pre-loaded (tests, benchmarks) to skip loading;
    otherwise they load at start-up from ``settings``.
    """
    state = ServiceState(settings=settings or Settings(), metrics=ServiceMetrics())
    quiet_library_logs(state.settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="monolith-model")
        loader = asyncio.create_task(_start(state, executor, monolith, embedder), name="monolith-load")
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await _stop(state, executor)

    # The schema is added below behind the API key, like every route but the probes; /docs and
    # /dashboard are pages without data (service.routes.dashboard), their data routes keep the key.
    app = FastAPI(
        title="Monolith",
        summary="384-d sentence embeddings in 4 bytes: encode, decode, search",
        version=service_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = state
    install_error_handlers(app)
    auth = [Depends(require_api_key)]  # every route but the probes (ops.protected has its own)
    routers: list[tuple[APIRouter, list[Any]]] = [
        (ops.probes, []), (ops.protected, []), (codec.router, auth), (codebook.router, auth),
        (collections.router, auth),
    ]
    for router, dependencies in routers:
        app.include_router(router, dependencies=dependencies)
    _add_docs(app)
    asset_mounts = dashboard.install_pages(app)

    # Route templates for metrics labels of requests refused before routing (413), and of static
    # assets (labelled by their mount: /static, /swagger-ui).
    templates = [route for router, _ in routers for route in router.routes] + asset_mounts
    # Added last = outermost: metrics see every answer, including the body limit's 401/413s and
    # the 503s of requests cancelled at shutdown (service.limits says what each one bounds).
    settings = state.settings
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, api_key=settings.api_key,
                       budget=MemoryBudget(settings.body_memory_bytes), budget_wait_s=settings.body_wait_s,
                       body_timeout_s=settings.body_timeout_s)
    app.add_middleware(ShutdownMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, routes=templates)
    document_statuses(app)  # every status each route can answer, in its OpenAPI entry
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (several workers): settings from ``MONOLITH_*`` only."""
    return create_app(Settings())


def open_store(settings: Settings, monolith: Monolith) -> Store:
    """The collection store for the loaded model; every collection's index is built now."""
    store = Store(settings.data_dir, StoreModel.from_monolith(monolith),
                  synchronous=settings.sqlite_synchronous, backend=settings.search_backend)
    store.open_all()
    return store


async def _start(state: ServiceState, executor: ThreadPoolExecutor, monolith: Monolith | None,
                 embedder: Any) -> None:
    """Load the model and text model, start the batcher, open the store; then mark ready.
    A failure leaves the server unready with the reason in /readyz."""
    settings = state.settings
    loop = asyncio.get_running_loop()
    try:
        if monolith is None:
            log.info("loading checkpoint %s", settings.checkpoint or "(shipped default)")
            monolith = await loop.run_in_executor(executor, lambda: Monolith.load(
                settings.checkpoint, settings.fallback_checkpoint, settings.text_model,
                candidates=settings.encode_candidates))
        if embedder is None and settings.load_text_model:
            embedder = await loop.run_in_executor(executor, _load_text_model, settings, monolith)
        state.batcher = MicroBatcher(
            monolith, embedder, wait_ms=settings.batch_wait_ms, max_size=settings.batch_max_size,
            queue_limit=settings.queue_limit, metrics=state.metrics, executor=executor,
            torch_threads=settings.torch_threads, max_request_chars=settings.max_request_chars,
        )
        await state.batcher.start()
        state.model_ref = model_ref(monolith)
        text_dir = str(embedder.model_dir) if getattr(embedder, "model_dir", None) is not None else None
        state.model_card = model_card(monolith, settings, text_dir)
        state.store = await asyncio.to_thread(open_store, settings, monolith)
        state.fits = FitJobs(state.store, monolith.checkpoint.path, FitSettings(
            threads=settings.fit_threads, nice=settings.fit_nice, baselines=settings.fit_baselines,
            auto_at=settings.auto_fit_at, auto_growth=settings.auto_fit_growth))
        await asyncio.to_thread(state.fits.clean_up)
        log.info("collections: %d open under %s", len(state.store.names()), state.store.root)
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("start-up failed; /readyz will answer 503")
        return
    state.ready = True
    state.metrics.ready.set(1)
    log.info("ready: %s %s (sha256 %s), text model %s", state.model_ref.name, state.model_ref.version,
             state.model_ref.sha256[:12], "on" if embedder is not None else "off")


def _load_text_model(settings: Settings, monolith: Monolith) -> Any:
    from vqvae.embedder import TextEmbedder

    log.info("loading text model %s", settings.text_model or "(bundled MiniLM)")
    return TextEmbedder(settings.text_model, expected_dim=monolith.config.input_dim)


async def _stop(state: ServiceState, executor: ThreadPoolExecutor) -> None:
    """Unready first (new requests get 503), then close in the reverse order of opening."""
    state.ready = False
    state.metrics.ready.set(0)
    if state.fits is not None:
        await asyncio.to_thread(state.fits.close)
    if state.store is not None:
        state.store.close()
    if state.batcher is not None:
        await state.batcher.close()
    executor.shutdown(wait=False, cancel_futures=True)


def _add_docs(app: FastAPI) -> None:
    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

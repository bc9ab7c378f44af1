"""The FastAPI application: ``create_app(settings)``.

Contract with the collections code (``service/routes/collections.py``, ``service/store.py``)
------------------------------------------------------------------------------------------
``create_app`` includes ``service.routes.collections.router`` (an ``APIRouter``) when that
module exists, behind the ``service.auth.require_api_key`` dependency. Routes reach the
server's pieces through ``request.app.state``:

- ``settings``: ``service.settings.Settings`` (set at once).
- ``ready``: bool; ``load_error``: str | None. Model routes answer 503 (``service.deps.
  ready_batcher`` does it) until ``ready``.
- ``monolith``: ``vqvae.Monolith``; None until ready.
- ``embedder``: ``vqvae.embedder.TextEmbedder``, or None when ``settings.load_text_model`` is
  False (``batcher.require_text_model()`` raises the matching 422).
- ``batcher``: ``service.batcher.MicroBatcher``; None until ready. Coroutines
  ``await batcher.encode(x)`` (float32 [N,384] → uint8 [N,4], counted in the traffic),
  ``await batcher.embed(texts)`` (→ float32 [N,384] unit vectors), ``await batcher.decode(codes)``
  and ``await batcher.call(fn, *args)`` for any other CPU-bound model work (search) on the
  model's worker thread. ``Overloaded``, ``BatcherClosed`` and ``TextModelUnavailable``
  become 503/503/422 answers through the app's exception handlers.
- ``metrics``: ``service.metrics.ServiceMetrics`` (its own ``CollectorRegistry``).
- ``traffic_counts``: numpy int64 [H, K], codes assigned since start (same array the
  batcher adds to; read it with ``batcher.snapshot_counts()``).
- ``model_ref`` / ``model_card``: ``service.schemas.ModelRef`` / ``ModelCard``.
- ``on_model_loaded``: list of callables ``hook(app)`` (sync or async). The lifespan loads the
  model in the background, then calls each in order, then marks the app ready; a failing
  hook leaves the app unready with the error in /readyz. If the collections module defines
  a module-level ``on_model_loaded(app)``, it is appended automatically (e.g. to open the store).
- ``on_shutdown``: list of callables ``hook(app)`` called at shutdown (e.g. to close the store).

Start-up loads in the background so /healthz answers at once and /readyz tells an
orchestrator when the model is there; loading runs on the model worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from service.auth import require_api_key
from service.batcher import MicroBatcher
from service.card import model_card, model_ref, service_version
from service.errors import install_error_handlers
from service.limits import BodyLimitMiddleware
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.routes import codebook, codec, ops
from service.settings import Settings
from vqvae.api import Monolith

log = logging.getLogger(__name__)

COLLECTIONS_MODULE = "service.routes.collections"


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
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="monolith-model")
        loader = asyncio.create_task(_load(app, executor, monolith, embedder), name="monolith-load")
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await _run_hooks(app, app.state.on_shutdown, "shutdown", raise_errors=False)
            if app.state.batcher is not None:
                await app.state.batcher.close()
            executor.shutdown(wait=False, cancel_futures=True)
            app.state.ready = False
            metrics.ready.set(0)

    # Docs and schema are added below behind the API key, like every route but the probes.
    app = FastAPI(
        title="Monolith",
        summary="384-d sentence embeddings in 4 bytes: encode, decode, search",
        version=service_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    state = app.state
    state.settings = settings
    state.metrics = metrics
    state.ready = False
    state.load_error = None
    state.monolith = None
    state.embedder = None
    state.batcher = None
    state.traffic_counts = None
    state.model_ref = None
    state.model_card = None
    state.plot_cache = {}
    state.on_model_loaded = []
    state.on_shutdown = []

    install_error_handlers(app)
    auth = [Depends(require_api_key)]
    routers: list[tuple[APIRouter, list[Any]]] = [
        (ops.probes, []), (ops.protected, []), (codec.router, auth), (codebook.router, auth),
    ]
    if importlib.util.find_spec(COLLECTIONS_MODULE) is not None:
        collections = importlib.import_module(COLLECTIONS_MODULE)
        routers.append((collections.router, auth))
        hook = getattr(collections, "on_model_loaded", None)
        if callable(hook):
            state.on_model_loaded.append(hook)
    else:
        log.info("%s not present: collection routes are off", COLLECTIONS_MODULE)
    for router, dependencies in routers:
        app.include_router(router, dependencies=dependencies)
    _add_docs(app)

    # Route templates for metrics labels of requests refused before routing (413).
    templates = [route for router, _ in routers for route in router.routes]
    # Added last = outermost: metrics see every answer, including the body limit's 413s.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=templates)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (several workers): settings from ``MONOLITH_*`` only."""
    return create_app(Settings())


async def _load(app: FastAPI, executor: ThreadPoolExecutor, monolith: Monolith | None, embedder: Any) -> None:
    state = app.state
    settings: Settings = state.settings
    loop = asyncio.get_running_loop()
    try:
        if monolith is None:
            log.info("loading checkpoint %s", settings.checkpoint or "(shipped default)")
            monolith = await loop.run_in_executor(executor, lambda: Monolith.load(
                settings.checkpoint, settings.fallback_checkpoint, settings.text_model,
                candidates=settings.encode_candidates))
        if embedder is None and settings.load_text_model:
            from vqvae.embedder import TextEmbedder

            log.info("loading text model %s", settings.text_model or "(bundled MiniLM)")
            embedder = await loop.run_in_executor(
                executor, lambda: TextEmbedder(settings.text_model, expected_dim=monolith.config.input_dim)
            )
        batcher = MicroBatcher(
            monolith,
            embedder,
            wait_ms=settings.batch_wait_ms,
            max_size=settings.batch_max_size,
            queue_limit=settings.queue_limit,
            max_text_chars=settings.max_text_chars,
            metrics=state.metrics,
            executor=executor,
            torch_threads=settings.torch_threads,
        )
        await batcher.start()
        state.monolith = monolith
        state.embedder = embedder
        state.batcher = batcher
        state.traffic_counts = batcher.traffic_counts
        state.model_ref = model_ref(monolith)
        text_dir = str(embedder.model_dir) if getattr(embedder, "model_dir", None) is not None else None
        state.model_card = model_card(monolith, settings, text_dir)
        await _run_hooks(app, state.on_model_loaded, "model-loaded", raise_errors=True)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("start-up failed; /readyz will answer 503")
        return
    state.ready = True
    state.metrics.ready.set(1)
    log.info("ready: %s %s (sha256 %s), text model %s", state.model_ref.name, state.model_ref.version,
             state.model_ref.sha256[:12], "on" if embedder is not None else "off")


async def _run_hooks(app: FastAPI, hooks: list[Callable[[FastAPI], Any]], what: str, *, raise_errors: bool) -> None:
    for hook in list(hooks):
        try:
            result = hook(app)
            if inspect.isawaitable(result):
                await result
        except Exception:
            if raise_errors:
                raise
            log.exception("%s hook %r failed", what, hook)


def _add_docs(app: FastAPI) -> None:
    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Monolith API")

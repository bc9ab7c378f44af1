"""The browser pages: ``GET /dashboard`` and ``GET /docs``, with every asset served from here.

The service runs offline, so nothing is loaded from a CDN: the dashboard's HTML, CSS and
JavaScript live in ``service/static/`` (served at ``/static``), and Swagger UI's own files come
from the ``fastapi-offline`` package (served at ``/swagger-ui``), which ships swagger-ui-dist's
bundle and stylesheet. A Content-Security-Policy of ``'self'`` makes the browser refuse any
other origin, so a page that tried to reach out would fail visibly rather than leak.

The pages are shells without data, so they are served without the API key; the data routes
they call keep theirs. With ``MONOLITH_API_KEY`` set, the page asks for the key once, keeps it
in the tab's ``sessionStorage`` and sends it as ``Authorization: Bearer`` (``static/auth.js``).
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")

# Same origin only. Inline styles are allowed (Swagger UI sets style attributes); inline
# scripts, eval and every other origin are not. Plots are shown from blob: URLs (fetched
# with the key), Swagger's icons are data: URIs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}

router = APIRouter(include_in_schema=False)


def swagger_ui_dir() -> Path | None:
    """The folder holding swagger-ui-dist's bundle and stylesheet, or None if not installed."""
    try:
        folder = Path(str(importlib.resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return folder if all((folder / name).is_file() for name in SWAGGER_FILES) else None


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=PAGE_HEADERS)


@router.get("/dashboard")
async def dashboard() -> FileResponse:
    return _page("dashboard.html")


@router.get("/docs", response_model=None)
async def docs() -> FileResponse | HTMLResponse:
    if swagger_ui_dir() is None:
        return HTMLResponse(
            "<!doctype html><title>Monolith API</title><p>Swagger UI's files are not installed "
            "(pip install fastapi-offline). The schema is at <a href=/openapi.json>/openapi.json</a>.</p>",
            status_code=501, headers=PAGE_HEADERS)
    return _page("docs.html")


def install_pages(app: FastAPI) -> list[Mount]:
    """Add the pages and mount their static folders (each folder serves only its own files);
    returns the mounts, so that metrics can label asset requests by them."""
    app.include_router(router)
    mounts = [Mount("/static", StaticFiles(directory=STATIC_DIR), name="static")]
    swagger = swagger_ui_dir()
    if swagger is None:
        log.warning("fastapi-offline is not installed: /docs cannot serve Swagger UI's files")
    else:
        mounts.append(Mount("/swagger-ui", StaticFiles(directory=swagger), name="swagger-ui"))
    app.router.routes.extend(mounts)
    return mounts

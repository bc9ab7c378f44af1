"""Every status a route can answer, in its OpenAPI entry (docs/service.md, "Limits and errors";
docs/collections.md, "Status codes").

Some statuses come from outside the route's own code: the API key dependency (401), the body
limits middleware (401, 408, 413, 503 for every route with a body), the readiness dependencies
(503), the HTTP server (503 past ``MONOLITH_LIMIT_CONCURRENCY`` or at shutdown, for any
route), the store (404, 409, 500 and 507 for a collection's routes). Rather than each router
repeating them, :func:`document_statuses` adds them to the generated schema from what each
route declares: its dependencies, methods, parameters and path. Statuses a route documents
itself keep its own description.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service.auth import require_api_key
from service.deps import ready_batcher, ready_store
from service.limits import BODY_METHODS
from service.schemas import ErrorResponse

DESCRIPTIONS = {
    401: "Missing or wrong API key (MONOLITH_API_KEY)",
    404: "Unknown collection or item",
    408: "The body did not arrive within MONOLITH_BODY_TIMEOUT_S",
    409: "The collection was encoded with another checkpoint, or already exists",
    413: "Body over MONOLITH_MAX_BODY_BYTES, or more rows or text than a limit allows",
    422: "Invalid input or unparseable body; the detail says what to fix",
    500: "A stored collection is unreadable; the detail names it",
    503: "Not ready, overloaded or shutting down; Retry-After says when to retry",
    507: "The disk holding the collections is full; nothing was written",
}
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})


def _calls(dependant: Any) -> set[Any]:
    out = {dependant.call} if dependant.call is not None else set()
    for sub in dependant.dependencies:
        out |= _calls(sub)
    return out


def api_routes(app: FastAPI) -> Iterator[Any]:
    """Every route OpenAPI documents, with its effective dependencies (those of the routers it
    was included with too): FastAPI ≥ 0.16x keeps included routers as a tree, older ones flat."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before included-router trees
        routes: Any = app.routes
    else:
        routes = iter_route_contexts(app.routes)
    for route in routes:
        if isinstance(route, APIRoute) or getattr(route, "dependant", None) is not None:
            if getattr(route, "include_in_schema", False) and getattr(route, "path_format", None):
                yield route


def route_statuses(route: Any) -> set[int]:
    """The statuses ``route`` can answer besides its successes."""
    calls = _calls(route.dependant)
    methods = set(route.methods or ())
    out = {503}  # the HTTP server's concurrency limit and shutdown apply to every route
    if require_api_key in calls:
        out.add(401)
    if methods & BODY_METHODS:
        out |= {401, 408, 413, 422}
    d = route.dependant
    if d.path_params or d.query_params or d.body_params or d.header_params:
        out.add(422)
    if ready_batcher in calls or ready_store in calls:
        out.add(503)
    if route.path_format.startswith("/collections/{"):
        out |= {404, 409, 500}
        if methods & WRITE_METHODS and not route.path_format.endswith("/search"):
            out.add(507)
    return out


def document_statuses(app: FastAPI) -> None:
    """Wrap ``app.openapi`` so that the schema it builds lists every status of every route (the
    additions are idempotent: FastAPI caches the schema and this runs on each call)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI's own, cached until routes change
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("ErrorResponse", ErrorResponse.model_json_schema(
            ref_template="#/components/schemas/{model}"))
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for route in api_routes(app):
            path = schema.get("paths", {}).get(route.path_format, {})
            for method in route.methods or ():
                operation = path.get(method.lower())
                if operation is None:
                    continue
                responses = operation.setdefault("responses", {})
                for code in sorted(route_statuses(route)):
                    responses.setdefault(str(code), {"description": DESCRIPTIONS[code], "content": error})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

"""The Python clients keep up with the HTTP API (issue 25).

Walks the app's OpenAPI operations: each one has a client method (``OPERATIONS``) or a reason
not to (``NOT_FOR_THE_CLIENT``), and every path, query and request-body field an operation
takes is a parameter of its method, so a new route or field fails here until the client
sends it. ``MonolithClient`` and ``AsyncMonolithClient`` have the same methods, parameters
and defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from service.app import create_app
from service.client import AsyncMonolithClient, MonolithClient
from service.settings import Settings

Op = tuple[str, str]  # (METHOD, path as the schema writes it)

# Each operation → the client methods that send it (together they take every field).
OPERATIONS: dict[Op, tuple[str, ...]] = {
    ("GET", "/readyz"): ("ready",),
    ("POST", "/encode"): ("encode", "encode_text"),
    ("POST", "/decode"): ("decode",),
    ("GET", "/model"): ("model",),
    ("GET", "/codebook/health"): ("health",),
    ("GET", "/collections"): ("list_collections",),
    ("PUT", "/collections/{name}"): ("create_collection",),
    ("GET", "/collections/{name}"): ("get_collection",),
    ("DELETE", "/collections/{name}"): ("delete_collection",),
    ("POST", "/collections/{name}/train"): ("train",),
    ("POST", "/collections/{name}/migrate"): ("migrate",),
    ("POST", "/collections/{name}/fit"): ("fit",),
    ("GET", "/collections/{name}/fit"): ("fit_status",),  # fit(wait=True) polls it too
    ("DELETE", "/collections/{name}/fit"): ("cancel_fit",),
    ("GET", "/collections/{name}/health"): ("collection_health",),
    ("POST", "/collections/{name}/items"): ("upsert",),
    ("GET", "/collections/{name}/items"): ("list_items",),
    ("GET", "/collections/{name}/count"): ("count",),
    ("POST", "/collections/{name}/items/get"): ("get_items",),
    ("POST", "/collections/{name}/items/delete"): ("delete_items",),
    ("GET", "/collections/{name}/items/{item_id}"): ("get_item",),  # sent as items/get: a miss is None
    ("DELETE", "/collections/{name}/items/{item_id}"): ("delete_item",),  # as items/delete: a miss is False
    ("POST", "/collections/{name}/search"): ("search",),
    ("GET", "/collections/{name}/export"): ("export_collection",),
    ("POST", "/collections/{name}/import"): ("import_collection",),
}

# Routes the client sends ahead of the server: another change adds them (issue 25). An entry
# whose route is served is checked like any other; drop it from here once the route lands.
AHEAD_OF_SERVER: set[Op] = {("POST", "/collections/{name}/migrate")}

# Operations that are not meant for the client, and why. (/docs, /dashboard and /openapi.json
# are pages for browsers and not in the schema; they would belong here if they were.)
NOT_FOR_THE_CLIENT: dict[Op, str] = {
    ("GET", "/healthz"): "liveness probe for orchestrators; ready() says whether to send requests",
    ("GET", "/metrics"): "Prometheus scrape",
    ("GET", "/codebook/health.svg"): "a chart for browsers and the dashboard; health() has its numbers",
    ("GET", "/codebook/health.png"): "a chart for browsers and the dashboard; health() has its numbers",
    ("GET", "/docs"): "Swagger UI",
    ("GET", "/dashboard"): "HTML page",
    ("GET", "/openapi.json"): "the schema itself",
}

# Fields a method does not take, and why.
NOT_PARAMETERS: dict[Op, dict[str, str]] = {
    ("POST", "/encode"): {"return_reconstructions": "decode(codes) answers the same vectors"},
}

# Operations whose only body is a file (no JSON fields): the parameter that carries it.
FILE_BODIES: dict[Op, str] = {("POST", "/collections/{name}/import"): "src"}

# Public methods that send no operation of their own.
CLIENT_ONLY = {
    "iter_items": "pages of list_items",
    "close": "MonolithClient's lifecycle (a context manager)",
    "aclose": "AsyncMonolithClient's lifecycle (an async context manager)",
}
LIFECYCLE = {MonolithClient: {"close"}, AsyncMonolithClient: {"aclose"}}
CLIENTS = [MonolithClient, AsyncMonolithClient]


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data"), load_text_model=False))
    return app.openapi()


def operations(schema: dict[str, Any]) -> dict[Op, dict[str, Any]]:
    return {(method.upper(), path): op for path, ops in schema["paths"].items() for method, op in ops.items()}


def resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A schema with ``$ref`` followed and ``X | None`` unwrapped."""
    while True:
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif "anyOf" in schema and len(alts := [s for s in schema["anyOf"] if s.get("type") != "null"]) == 1:
            schema = alts[0]
        else:
            return schema


def object_fields(schema: dict[str, Any], spec: dict[str, Any]) -> Iterator[str]:
    """An object's fields; a list of objects (upsert's ``items``) stands for its objects' fields,
    which a method takes one list per field (``ids=``, ``texts=``, ...)."""
    for name, prop in resolve(schema, spec).get("properties", {}).items():
        prop = resolve(prop, spec)
        inner = resolve(prop.get("items", {}), spec) if prop.get("type") == "array" else {}
        if inner.get("properties"):
            yield from object_fields(inner, spec)
        else:
            yield name


def operation_fields(key: Op, op: dict[str, Any], spec: dict[str, Any]) -> set[str]:
    """What a caller can send: path and query parameters and the JSON body's fields."""
    names = {p["name"] for p in op.get("parameters", []) if p["in"] in ("path", "query")}
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        names |= set(object_fields(content["application/json"]["schema"], spec))
    elif content:
        assert key in FILE_BODIES, f"{key}: a file body ({sorted(content)}); name its parameter in FILE_BODIES"
        names.add(FILE_BODIES[key])
    return names - set(NOT_PARAMETERS.get(key, {}))


def parameters(cls: type, method: str) -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(getattr(cls, method)).parameters)
    params.pop("self")
    return params


def public_methods(cls: type) -> set[str]:
    return {n for n, v in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def takes(params: dict[str, inspect.Parameter], field: str) -> bool:
    return field in params or f"{field}s" in params  # item fields are taken as lists: id → ids


def test_every_operation_has_a_client_method_or_a_reason(schema: dict[str, Any]) -> None:
    served = set(operations(schema))
    missing = served - set(OPERATIONS) - set(NOT_FOR_THE_CLIENT)
    assert not missing, f"operations without a client method: {sorted(missing)} (add one, or a reason)"
    assert not served & set(OPERATIONS) & set(NOT_FOR_THE_CLIENT)
    gone = set(OPERATIONS) - served - AHEAD_OF_SERVER
    assert not gone, f"the client maps operations the server does not serve: {sorted(gone)}"


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
def test_every_field_of_an_operation_is_a_parameter(schema: dict[str, Any], cls: type) -> None:
    problems = []
    for key, op in sorted(operations(schema).items()):
        if key in NOT_FOR_THE_CLIENT:
            continue
        methods = OPERATIONS[key]
        params = {n: p for m in methods if hasattr(cls, m) for n, p in parameters(cls, m).items()}
        problems += [f"{key}: no method {m}" for m in methods if not hasattr(cls, m)]
        problems += [f"{key}: {'/'.join(methods)} takes no {f!r}"
                     for f in sorted(operation_fields(key, op, schema)) if not takes(params, f)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
def test_every_public_method_sends_an_operation(cls: type) -> None:
    mapped = {m for methods in OPERATIONS.values() for m in methods}
    assert public_methods(cls) - mapped - set(CLIENT_ONLY) == set()
    assert mapped <= public_methods(cls)


def test_sync_and_async_clients_have_the_same_methods_and_parameters() -> None:
    sync = public_methods(MonolithClient) - LIFECYCLE[MonolithClient]
    aio = public_methods(AsyncMonolithClient) - LIFECYCLE[AsyncMonolithClient]
    assert sync == aio, f"only sync: {sorted(sync - aio)}; only async: {sorted(aio - sync)}"
    for name in sorted(sync):
        ps = [(p.name, p.kind, p.default, p.annotation) for p in parameters(MonolithClient, name).values()]
        pa = [(p.name, p.kind, p.default, p.annotation) for p in parameters(AsyncMonolithClient, name).values()]
        assert ps == pa, f"{name}: sync {ps} != async {pa}"
        fn = getattr(AsyncMonolithClient, name)
        assert inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn), f"async {name} is not async"


def test_the_walk_finds_each_operations_fields(schema: dict[str, Any]) -> None:
    """The walk finds the fields it must (a check that finds nothing passes for nothing)."""
    ops = operations(schema)
    search = operation_fields(("POST", "/collections/{name}/search"), ops["POST", "/collections/{name}/search"],
                              schema)
    assert {"name", "texts", "embeddings", "k", "candidates", "filter", "probe", "score_threshold"} <= search
    upsert = operation_fields(("POST", "/collections/{name}/items"), ops["POST", "/collections/{name}/items"],
                              schema)
    assert upsert == {"name", "id", "text", "embedding", "metadata"}
    assert {"name", "replace", "src"} == operation_fields(("POST", "/collections/{name}/import"),
                                                          ops["POST", "/collections/{name}/import"], schema)
    assert not takes(parameters(MonolithClient, "train"), "probe")

"""Every example in the OpenAPI schema is a request the server accepts.

Swagger UI's "Try it out" (/docs) sends a request body's example and pre-fills parameters with
theirs, so each example must be valid on its own and in the order a user tries them: create a
collection, upsert the example items, then get, list, search, train and delete them. This test
walks the served /openapi.json (not the pydantic models), so it fails when an example becomes
invalid, when a JSON request body has no example, or when a path parameter has none.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.collections.test_routes import FakeEmbedder
from tests.service.conftest import AppFactory

# Operations in the order a user would try them; the rest (health, metrics, plots) after these.
ORDER = [
    ("put", "/collections/{name}"),
    ("post", "/collections/{name}/items"),
    ("get", "/collections/{name}"),
    ("get", "/collections"),
    ("get", "/collections/{name}/items"),
    ("get", "/collections/{name}/count"),
    ("post", "/collections/{name}/items/get"),
    ("get", "/collections/{name}/items/{item_id}"),
    ("post", "/collections/{name}/search"),
    ("post", "/collections/{name}/train"),
    ("get", "/collections/{name}/health"),
    ("post", "/encode"),
    ("post", "/decode"),
    ("get", "/collections/{name}/export"),
    ("delete", "/collections/{name}/items/{item_id}"),
    ("post", "/collections/{name}/items/delete"),
    ("delete", "/collections/{name}"),
]
# Bodies Swagger UI sends as a file upload, not from an example: the .npy forms of /encode and
# /decode (docs/service.md) and an export file for import (round-tripped in collections tests).
BINARY = {"application/x-npy", "application/gzip"}
# Operations that need more than their parameters' examples to answer 2xx: migrate answers 409
# unless the collection belongs to another checkpoint; import needs an export file; a fit needs
# 1,000 items and GET/DELETE a fit started before (tests/service/collections/test_fitting.py).
NOT_SENT = {("post", "/collections/{name}/migrate"), ("post", "/collections/{name}/import"),
            ("post", "/collections/{name}/fit"), ("get", "/collections/{name}/fit"),
            ("delete", "/collections/{name}/fit")}


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A body schema with its $ref (also inside anyOf, for optional bodies) followed."""
    for candidate in (schema, *schema.get("anyOf", [])):
        ref = candidate.get("$ref")
        if ref:
            return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return schema


def body_examples(spec: dict[str, Any], op: dict[str, Any]) -> list[Any] | None:
    """The JSON examples of an operation's request body; None when it takes no JSON body."""
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return None
    media = content["application/json"]
    found = list(resolve(spec, media.get("schema", {})).get("examples", []))
    if "example" in media:
        found.append(media["example"])
    found += [e["value"] for e in media.get("examples", {}).values() if "value" in e]
    return found


def param_example(param: dict[str, Any]) -> Any:
    if "example" in param:
        return param["example"]
    for example in param.get("examples", {}).values():
        if "value" in example:
            return example["value"]
    return (param.get("schema", {}).get("examples") or [None])[0]


def request_of(path: str, op: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The URL with path parameters from their examples, and the query parameters that have one."""
    query = {}
    for param in op.get("parameters", []):
        value = param_example(param)
        if param["in"] == "path":
            assert value is not None, f"{path}: path parameter {param['name']!r} has no example"
            path = path.replace("{" + param["name"] + "}", str(value))
        elif param["in"] == "query" and value is not None:
            query[param["name"]] = value
    return path, query


@pytest.fixture
def app_client(make_client: AppFactory) -> TestClient:
    return make_client(embedder=FakeEmbedder())


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = [(method, path, op) for path, item in spec["paths"].items() for method, op in item.items()]
    rank = {key: i for i, key in enumerate(ORDER)}
    # Unlisted operations go after the reads and before the deletes.
    middle = rank[("post", "/decode")] + 0.5
    return sorted(ops, key=lambda o: rank.get((o[0], o[1]), middle))


def test_every_json_body_and_path_parameter_has_an_example(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    missing = []
    for method, path, op in operations(spec):
        content = op.get("requestBody", {}).get("content", {})
        assert set(content) <= {"application/json"} | BINARY, f"{method} {path}: {set(content)}"
        if body_examples(spec, op) == []:
            missing.append(f"{method.upper()} {path}")
        for param in op.get("parameters", []):
            if param["in"] == "path" and param_example(param) is None:
                missing.append(f"{method.upper()} {path} parameter {param['name']}")
    assert missing == []
    assert {(m, p) for m, p, _ in operations(spec)} >= set(ORDER) | NOT_SENT  # the lists name real routes


def test_every_example_is_accepted(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    sent = []
    for method, path, op in operations(spec):
        if (method, path) in NOT_SENT:
            continue
        url, query = request_of(path, op)
        examples = body_examples(spec, op)
        if (method, path) == ("post", "/collections/{name}/train"):
            # Train answers 422 on a flat collection: make it partitioned first, with the example
            # of CollectionCreate's index field (the user would PUT it so).
            index = spec["components"]["schemas"]["CollectionCreate"]["properties"]["index"]["examples"][0]
            resp = app_client.put(url.removesuffix("/train"), json={"index": index})
            assert resp.status_code == 200, resp.text
        for body in examples or [None]:
            kwargs: dict[str, Any] = {"params": query}
            if body is not None:
                kwargs["content"] = json.dumps(body)
                kwargs["headers"] = {"Content-Type": "application/json"}
            resp = app_client.request(method.upper(), url, **kwargs)
            assert 200 <= resp.status_code < 300, (method, url, query, body, resp.status_code, resp.text)
            sent.append((method, path, body, resp))
    by_op = {(m, p): r for m, p, _, r in sent}
    # The examples fit together: the upserted items are the ones found, listed and deleted.
    assert by_op[("post", "/collections/{name}/items")].json()["inserted"] == 2
    assert by_op[("get", "/collections/{name}/count")].json()["count"] == 1  # lang en
    got = by_op[("post", "/collections/{name}/items/get")].json()
    assert [i["id"] for i in got["items"]] == ["paris"] and got["missing"] == ["rome"]
    assert [h["id"] for h in by_op[("post", "/collections/{name}/search")].json()["results"][0]] == ["paris"]
    assert by_op[("get", "/collections/{name}/items/{item_id}")].json()["id"] == "paris"
    assert by_op[("post", "/collections/{name}/train")].json()["index"]["kind"] == "ivf"
    # The delete-by-filter example (lang de) removes berlin, the last item left.
    assert by_op[("post", "/collections/{name}/items/delete")].json()["deleted_count"] == 1
    every = sum(len(body_examples(spec, op) or []) for m, p, op in operations(spec) if (m, p) not in NOT_SENT)
    assert sum(1 for *_, body, _ in sent if body is not None) == every >= 9


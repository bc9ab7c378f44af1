"""The client's retry policy and error type, against scripted answers (no server needed).
The client against the real server is in test_server.py."""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
import numpy as np
import pytest

from service.client import AsyncMonolithClient, MonolithClient, MonolithError


def scripted(answers: list[httpx.Response], seen: list[httpx.Request]):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return handler


def codes_answer(n: int) -> httpx.Response:
    return httpx.Response(200, json={"codes": [[1, 2, 3, 4]] * n, "model": {}})


def busy(retry_after: str | None = "0") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(503, json={"detail": "server is overloaded"}, headers=headers)


def test_503_is_retried_then_succeeds() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(scripted([busy(), busy(), codes_answer(2)], seen))
    with MonolithClient("http://monolith", api_key="k", transport=transport) as client:
        codes = client.encode(np.zeros((2, 384), np.float32))
    assert codes.dtype == np.uint8 and codes.shape == (2, 4)
    assert len(seen) == 3
    assert seen[0].headers["authorization"] == "Bearer k"


def test_retries_are_bounded_and_raise_monolith_error() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(scripted([busy()], seen))
    with MonolithClient("http://monolith", transport=transport, retries=3) as client:
        with pytest.raises(MonolithError) as err:
            client.decode([[1, 2, 3, 4]])
    assert err.value.status == 503 and "overloaded" in str(err.value)
    assert len(seen) == 4  # the first try and 3 retries


def test_retry_after_is_honoured_but_capped() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(scripted([busy("0.3"), codes_answer(1)], seen))
    with MonolithClient("http://monolith", transport=transport, max_retry_wait=5) as client:
        start = time.monotonic()
        client.encode(np.zeros(384, np.float32))
        assert time.monotonic() - start >= 0.3
    transport = httpx.MockTransport(scripted([busy("3600"), codes_answer(1)], []))
    with MonolithClient("http://monolith", transport=transport, max_retry_wait=0.05) as client:
        start = time.monotonic()
        client.encode(np.zeros(384, np.float32))
        assert time.monotonic() - start < 2


def test_other_errors_are_not_retried() -> None:
    seen: list[httpx.Request] = []
    detail = [{"type": "value_error", "loc": ["body"], "msg": "send exactly one of 'texts' or 'embeddings'"}]
    transport = httpx.MockTransport(scripted([httpx.Response(422, json={"detail": detail})], seen))
    with MonolithClient("http://monolith", transport=transport) as client:
        with pytest.raises(MonolithError) as err:
            client.encode_text(["x"])
    assert len(seen) == 1
    assert err.value.status == 422 and err.value.detail == detail
    assert "exactly one" in str(err.value)


def test_async_client_retries_and_splits_bulk_by_server_limits() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/model":
            return httpx.Response(200, json={"limits": {"max_batch": 100, "max_body_bytes": 1 << 20,
                                                        "max_text_chars": 50}})
        if len(seen) == 2:
            return busy()
        rows = np.load(io.BytesIO(request.content))
        buf = io.BytesIO()
        np.save(buf, np.zeros((len(rows), 4), np.uint8))
        return httpx.Response(200, content=buf.getvalue(), headers={"Content-Type": "application/x-npy"})

    async def main() -> np.ndarray:
        async with AsyncMonolithClient("http://monolith", transport=httpx.MockTransport(handler),
                                       npy_threshold=10) as client:
            return await client.encode(np.zeros((250, 384), np.float32))

    codes = asyncio.run(main())
    assert codes.shape == (250, 4)
    posts = [r for r in seen if r.method == "POST"]
    assert [r.headers["content-type"] for r in posts] == ["application/x-npy"] * 4  # 1 refused + 3 chunks
    assert all(r.headers["content-length"] and int(r.headers["content-length"]) < 100 * 384 * 4 + 200
               for r in posts)


def test_unreachable_server_is_a_monolith_error() -> None:
    with MonolithClient("http://127.0.0.1:9", retries=1, backoff=0.01) as client:
        with pytest.raises(MonolithError) as err:
            client.model()
    assert err.value.status is None and "cannot reach" in str(err.value)


def test_error_detail_text_for_validation_lists() -> None:
    err = MonolithError(422, [{"loc": ["body", "codes", 0], "msg": "too short"}], "POST", "/decode")
    assert str(err) == "422 on POST /decode: body.codes.0: too short"
    assert json.loads(json.dumps(err.detail)) == err.detail


INFO = {"name": "c", "status": "ok", "count": 0, "index": {"kind": "ivf", "lists": 8, "trained": True},
        "vectors": "int8", "bytes_per_item": {"codes": 4, "vectors": 384}, "a_future_field": 1}


def recording(seen: list[httpx.Request]) -> httpx.MockTransport:
    """Answers a collection for collection routes, one hit for searches, deletes whatever is asked;
    keeps the requests."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/search"):
            return httpx.Response(200, json={"results": [[{"id": "a", "score": 1.0}]], "metric": "cosine",
                                             "candidates": 100})
        if request.url.path.endswith("/items/delete"):
            return httpx.Response(200, json={"deleted": json.loads(request.content)["ids"], "missing": []})
        return httpx.Response(200, json=INFO)

    return httpx.MockTransport(handler)


def body(request: httpx.Request) -> object:
    return json.loads(request.content) if request.content else None


def test_optional_fields_are_sent_only_when_given() -> None:
    """Today's server forbids unknown fields: a request that does not use a new option must not
    carry it, so the client works against servers with and without it."""
    seen: list[httpx.Request] = []
    with MonolithClient("http://monolith", transport=recording(seen)) as client:
        client.create_collection("c")
        info = client.create_collection("c", "d", index={"kind": "ivf", "lists": 1024}, vectors="float16")
        client.search("c", texts=["q"])
        client.search("c", texts=["q"], probe=3, rescore=False, candidates=0)
        client.train("c")
        client.train("c", lists=8)
        migrated = client.migrate("c")
    assert [(r.method, r.url.path) for r in seen] == [
        ("PUT", "/collections/c"), ("PUT", "/collections/c"), ("POST", "/collections/c/search"),
        ("POST", "/collections/c/search"), ("POST", "/collections/c/train"), ("POST", "/collections/c/train"),
        ("POST", "/collections/c/migrate")]
    assert [body(r) for r in seen] == [
        None, {"description": "d", "index": {"kind": "ivf", "lists": 1024}, "vectors": "float16"},
        {"texts": ["q"], "k": 10}, {"texts": ["q"], "k": 10, "candidates": 0, "probe": 3, "rescore": False},
        None, {"lists": 8}, None]
    for got in (info, migrated):  # the index and storage the server describes are kept
        assert got.index == INFO["index"] and got.vectors == "int8" and got.bytes_per_item == INFO["bytes_per_item"]


def test_async_client_sends_the_same_requests() -> None:
    sync_seen: list[httpx.Request] = []
    async_seen: list[httpx.Request] = []

    def calls(client: MonolithClient | AsyncMonolithClient) -> list:
        return [client.create_collection("c", index={"kind": "flat"}), client.train("c", lists=2),
                client.migrate("c"), client.search("c", embeddings=np.zeros(384, np.float32), probe=2, rescore=True),
                client.delete_item("c", "a")]

    with MonolithClient("http://monolith", transport=recording(sync_seen)) as client:
        sync_results = calls(client)

    async def main() -> list:
        async with AsyncMonolithClient("http://monolith", transport=recording(async_seen)) as client:
            return [await c for c in calls(client)]

    async_results = asyncio.run(main())
    assert [(r.method, r.url.path, r.content) for r in sync_seen] == [
        (r.method, r.url.path, r.content) for r in async_seen]
    assert sync_results == async_results and sync_results[-1] is True

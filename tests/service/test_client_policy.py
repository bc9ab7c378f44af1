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

"""Issue 12, "no request can break the service": each reproduction, each limit, and the server's own
connection limits. Every test here failed on the code before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.collections import files
from service.limits import BodyLimitMiddleware
from service.settings import Settings
from tests.conftest import TINY
from tests.service.collections.test_routes import FakeEmbedder
from tests.service.conftest import AppFactory, free_port, unit_rows, wait_ready
from vqvae import MonolithWiki, save_checkpoint
from vqvae.api import Monolith

ROW = unit_rows(1)[0].tolist()
JSON = {"Content-Type": "application/json"}


def deep(levels: int) -> dict[str, Any]:
    """``{"a": {"a": ...}}``, ``levels`` objects deep."""
    out: dict[str, Any] = {}
    node = out
    for _ in range(levels - 1):
        node["a"] = {}
        node = node["a"]
    return out


def depth_of(value: Any) -> int:
    """Levels of objects and arrays (a scalar is 0)."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level + 1)
            todo.extend((c, level + 1) for c in (node.values() if isinstance(node, dict) else node))
    return deepest


@pytest.fixture
def coll(client: TestClient) -> TestClient:
    assert client.put("/collections/docs").status_code == 201
    return client


def upsert(client: TestClient, items: list[dict], name: str = "docs") -> httpx.Response:
    return client.post(f"/collections/{name}/items", json={"items": items})


# -- 1. one upsert poisons a collection ----------------------------------------------------------


@pytest.mark.parametrize("levels", [33, 300, 900])
def test_metadata_nested_too_deep_is_422_naming_the_limit(coll: TestClient, levels: int) -> None:
    resp = upsert(coll, [{"id": "x", "embedding": ROW, "metadata": deep(levels)}])
    assert resp.status_code == 422, resp.text
    assert "MONOLITH_MAX_METADATA_DEPTH" in resp.json()["detail"] and "items[0].metadata" in resp.json()["detail"]
    assert coll.get("/collections/docs/items/x").status_code == 404  # nothing stored


def test_metadata_at_the_depth_limit_is_stored_and_served(coll: TestClient) -> None:
    assert upsert(coll, [{"id": "x", "embedding": ROW, "metadata": deep(32)}]).status_code == 200
    got = coll.get("/collections/docs/items/x").json()
    assert depth_of(got["metadata"]) == 32


def test_metadata_stored_deeper_than_serialisable_still_reads_and_searches(coll: TestClient,
                                                                           monolith: Monolith) -> None:
    """An item stored before the limit existed (900 levels) must not fail its reads or searches."""
    col = coll.app.state.service.store.get("docs")
    x = unit_rows(3, seed=4)
    codes = monolith.encode(x)
    col.upsert(["deep", "b", "c"], codes, [deep(900), {"k": 1}, None])
    resp = coll.get("/collections/docs/items/deep")
    assert resp.status_code == 200, resp.text
    meta = resp.json()["metadata"]
    assert depth_of(meta) < files.MAX_READ_DEPTH
    node = meta
    for _ in range(files.MAX_READ_DEPTH - 2):
        node = node["a"]
    # the object MAX_READ_DEPTH levels deep is its JSON text: the rest of the stored metadata
    assert depth_of(json.loads(node["a"])) == 900 - files.MAX_READ_DEPTH + 1
    resp = coll.post("/collections/docs/search", json={"embeddings": x.tolist(), "k": 3})
    assert resp.status_code == 200, resp.text
    assert all(len(hits) == 3 for hits in resp.json()["results"])


@pytest.mark.parametrize("field", ["id", "metadata", "text"])
def test_lone_surrogates_are_422_not_500(make_client: AppFactory, field: str) -> None:
    client = make_client(embedder=FakeEmbedder())
    assert client.put("/collections/docs").status_code == 201
    item = {"id": "ok", "embedding": ROW}
    if field == "id":
        item["id"] = "bad\ud800"
    elif field == "metadata":
        item["metadata"] = {"k": "bad\ud800"}
    else:
        item = {"id": "ok", "text": "bad\ud800"}
    body = json.dumps({"items": [item]})  # ensure_ascii: the surrogate travels as \ud800
    resp = client.post("/collections/docs/items", content=body, headers=JSON)
    assert resp.status_code == 422, resp.text
    assert "surrogate" in resp.text or "unicode" in resp.text
    resp = client.post("/encode", content=json.dumps({"texts": ["bad\ud800"]}), headers=JSON)
    assert resp.status_code == 422  # the JSON parser of /encode refuses them itself


# -- 2. disk full ----------------------------------------------------------------------------------


def test_disk_full_during_upsert_is_507_and_nothing_changes(coll: TestClient) -> None:
    """SQLITE_FULL, made here by capping the database's pages (the real disk is tested below)."""
    x = unit_rows(5, seed=1)
    assert upsert(coll, [{"id": f"a{i}", "embedding": r.tolist()} for i, r in enumerate(x)]).status_code == 200
    col = coll.app.state.service.store.get("docs")
    pages = col.conn.execute("PRAGMA page_count").fetchone()[0]
    col.conn.execute(f"PRAGMA max_page_count = {pages}")
    big = [{"id": f"b{i}", "embedding": ROW, "metadata": {"pad": "x" * 8000}} for i in range(20)]
    resp = upsert(coll, big)
    assert resp.status_code == 507, resp.text
    detail = resp.json()["detail"]
    assert "full" in detail and "nothing stored changed" in detail and "MONOLITH_DATA_DIR" in detail
    assert coll.get("/collections/docs").json()["count"] == 5
    assert coll.get("/collections/docs/items/b0").status_code == 404
    col.conn.execute("PRAGMA max_page_count = 1073741823")
    assert upsert(coll, big).status_code == 200  # space again: writes work
    assert coll.get("/collections/docs").json()["count"] == 25


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_full_disk_answers_507_for_upsert_delete_and_create(make_client: AppFactory, tmp_path: Path) -> None:
    """The reproduction: the data folder on a 2 MiB tmpfs."""
    with small_tmpfs(tmp_path / "full") as data:
        client = make_client(data_dir=data)
        assert client.put("/collections/docs").status_code == 201
        acked: list[str] = []
        for b in range(40):
            batch = [{"id": f"b{b}-{i}", "embedding": ROW, "metadata": {"pad": "x" * 8000}} for i in range(20)]
            resp = upsert(client, batch)
            if resp.status_code != 200:
                break
            acked += [item["id"] for item in batch]
        assert resp.status_code == 507, resp.text
        assert "is full" in resp.json()["detail"]
        assert acked, "the disk filled before the first write"
        statuses = {client.delete(f"/collections/docs/items/{acked[0]}").status_code}
        statuses.add(client.put("/collections/another").status_code)
        assert statuses <= {200, 201, 507}, statuses
        assert 507 in statuses  # at least one of delete / create met the full disk
        for status in statuses:
            assert status < 500 or status == 507
        # nothing lost or unreadable: every acknowledged item is there (but the one deleted, if it was)
        count = client.get("/collections/docs").json()["count"]
        assert count in (len(acked), len(acked) - 1)
        assert client.get(f"/collections/docs/items/{acked[-1]}").status_code == 200
        resp = client.post("/collections/docs/search", json={"embeddings": [ROW], "k": 5})
        assert resp.status_code == 200 and len(resp.json()["results"][0]) == 5
        with sqlite3.connect(f"file:{data}/collections/docs.sqlite3?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        client.app.state.service.store.close()


# -- 3. corrupted weights ------------------------------------------------------------------------


def _nan_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = MonolithWiki(TINY)
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[0] = float("nan")
    return save_checkpoint(model, path)


def _wait_failed(client: TestClient, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while "failed" not in (resp := client.get("/readyz")).text and time.monotonic() < deadline:
        time.sleep(0.02)
    return resp


def test_nan_weights_keep_the_server_unready_with_the_reason(make_client: AppFactory, tmp_path: Path) -> None:
    client = make_client(inject_model=False, wait=False, checkpoint=_nan_checkpoint(tmp_path / "nan.safetensors"))
    resp = _wait_failed(client)
    assert resp.status_code == 503 and "NaN or Inf" in resp.json()["detail"]
    assert client.post("/decode", json={"codes": [[0, 1, 2, 3]]}).status_code == 503


def test_nan_weights_fall_back_to_the_fallback_checkpoint(make_client: AppFactory, tmp_path: Path) -> None:
    torch.manual_seed(1)
    good = save_checkpoint(MonolithWiki(TINY), tmp_path / "good.safetensors")
    client = make_client(inject_model=False, checkpoint=_nan_checkpoint(tmp_path / "nan.safetensors"),
                         fallback_checkpoint=good)
    from vqvae.checkpoint import file_sha256

    assert client.get("/model").json()["sha256"] == file_sha256(good)  # the fallback, not the NaN one
    resp = client.post("/decode", json={"codes": [[0, 1, 2, 3]]})
    assert resp.status_code == 200 and None not in resp.json()["embeddings"][0]


# -- 4. contract gaps ----------------------------------------------------------------------------

UNPARSEABLE = {
    "not UTF-8": (b'{"items": [{"id": "\xff\xfe", "embedding": []}]}', "UTF-8"),
    "nested 5000 deep": (b'{"items": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nests too deeply"),
    "5000-digit integer": (b'{"items": [{"id": "a", "embedding": [1' + b"0" * 5000 + b"]}]}", "digits"),
}


@pytest.mark.parametrize("route", ["PUT /collections/docs", "POST /collections/docs/items",
                                   "POST /collections/docs/search"])
@pytest.mark.parametrize("body,hint", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
def test_unparseable_collection_bodies_are_422_like_encode(coll: TestClient, route: str, body: bytes,
                                                           hint: str) -> None:
    method, path = route.split()
    resp = coll.request(method, path, content=body, headers=JSON)
    assert resp.status_code == 422, resp.text
    assert hint in resp.text
    assert coll.post("/encode", content=body, headers=JSON).status_code == 422  # as /encode always did


def test_every_route_documents_every_status_it_can_answer(make_client: AppFactory) -> None:
    client = make_client(api_key="k")
    schema = client.get("/openapi.json", headers={"Authorization": "Bearer k"}).json()
    assert "401" in schema["paths"]["/metrics"]["get"]["responses"]  # the reproduction
    from service.openapi import api_routes, route_statuses

    upsert_doc = schema["paths"]["/collections/{name}/items"]["post"]["responses"]
    assert {"401", "408", "413", "422", "503", "507"} <= set(upsert_doc)
    routes = list(api_routes(client.app))
    assert len(routes) >= 15
    for route in routes:
        for method in route.methods:
            documented = set(schema["paths"][route.path_format][method.lower()]["responses"])
            missing = {str(s) for s in route_statuses(route)} - documented
            assert not missing, (method, route.path_format, missing)


# -- 5. silent empty search ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e20, 1e30, 1e-30])
def test_queries_of_any_finite_norm_find_their_hits(coll: TestClient, value: float) -> None:
    x = unit_rows(20, seed=2)
    assert upsert(coll, [{"id": f"d{i}", "embedding": r.tolist()} for i, r in enumerate(x)]).status_code == 200
    unit = coll.post("/collections/docs/search", json={"embeddings": [[0.05] * 384], "k": 5}).json()
    resp = coll.post("/collections/docs/search", json={"embeddings": [[value] * 384], "k": 5})
    assert resp.status_code == 200, resp.text
    hits = resp.json()["results"][0]
    assert [h["id"] for h in hits] == [h["id"] for h in unit["results"][0]]
    np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in unit["results"][0]], atol=1e-5)


def test_zero_query_is_422(coll: TestClient) -> None:
    resp = coll.post("/collections/docs/search", json={"embeddings": [ROW, [0.0] * 384]})
    assert resp.status_code == 422 and "embeddings[1] is all zeros" in resp.json()["detail"]


def test_zero_embedding_is_422_on_encode_json_and_npy(client: TestClient) -> None:
    """A zero vector has no direction: /encode used to answer 200 with codes for it."""
    resp = client.post("/encode", json={"embeddings": [ROW, ROW, [0.0] * 384]})
    assert resp.status_code == 422, resp.text
    assert "embeddings[2] is all zeros" in resp.json()["detail"]
    x = unit_rows(4, seed=5)
    x[1] = 0.0
    buf = io.BytesIO()
    np.save(buf, x)
    resp = client.post("/encode", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert resp.status_code == 422, resp.text
    assert "row 1 of the .npy array is all zeros" in resp.json()["detail"]
    assert client.post("/encode", json={"embeddings": [ROW]}).status_code == 200  # a real row still encodes


def test_zero_embedding_is_422_on_upsert_and_nothing_is_stored(coll: TestClient) -> None:
    resp = upsert(coll, [{"id": "a", "embedding": ROW}, {"id": "b", "embedding": [0.0] * 384}])
    assert resp.status_code == 422, resp.text
    assert "items[1].embedding is all zeros" in resp.json()["detail"]
    assert coll.get("/collections/docs").json()["count"] == 0


# -- 6. shutdown under load ----------------------------------------------------------------------


@contextlib.contextmanager
def uvicorn_thread(app: Any, **options: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    """A real uvicorn (h11, the server's protocol class) on a loopback port, in a thread."""
    from service.server import H11Protocol

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=H11Protocol, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)


def test_requests_cut_off_by_shutdown_answer_503_with_retry_after(monolith: Monolith, tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data", load_text_model=False), monolith=monolith)
    release = threading.Event()
    answer: dict[str, Any] = {}
    try:
        with uvicorn_thread(app, timeout_graceful_shutdown=0.5) as (url, server):
            assert wait_ready(httpx.Client(base_url=url)).status_code == 200
            batcher = app.state.service.batcher
            batcher.executor.submit(release.wait)  # the model is busy: the request cannot finish

            def post() -> None:
                try:
                    answer["resp"] = httpx.post(f"{url}/encode", json={"embeddings": [ROW]}, timeout=30)
                except httpx.HTTPError as exc:
                    answer["error"] = exc

            thread = threading.Thread(target=post)
            thread.start()
            deadline = time.monotonic() + 10
            while batcher.pending < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            server.should_exit = True  # what SIGTERM does
            thread.join(30)
    finally:
        release.set()
    assert "resp" in answer, answer
    resp = answer["resp"]
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    assert "shutting down" in resp.json()["detail"]


# -- 7. the client and a NaN row -------------------------------------------------------------------


def test_client_encode_of_nan_raises_its_own_error_with_the_servers_message(client: TestClient) -> None:
    from service.client import MonolithClient, MonolithError

    x = unit_rows(3)
    x[1, 7] = np.nan
    server = client.post("/encode", content='{"embeddings": [[NaN' + ", 0.1" * 383 + "]]}", headers=JSON)
    assert server.status_code == 422
    with MonolithClient("http://testserver", transport=client._transport) as mc, \
            pytest.raises(MonolithError) as caught:
        mc.encode(x)
    assert caught.value.status == 422 and caught.value.detail == server.json()["detail"]


# -- resource limits: auth before the body, body memory, body deadline, text per request -----------


async def _call(mw: Any, scope: dict, chunks: list[bytes] | None = None, stall: bool = False) -> tuple[int, dict,
                                                                                                   dict]:
    """Run an ASGI middleware on one request; returns (status, headers, json body)."""
    sent: list[dict] = []
    todo = list(chunks or [])

    async def receive() -> dict:
        if todo:
            return {"type": "http.request", "body": todo.pop(0), "more_body": bool(todo) or stall}
        if stall:
            await asyncio.sleep(3600)
        raise AssertionError("the body was read")

    async def send(message: dict) -> None:
        sent.append(message)

    await mw(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


def _scope(length: int | None, auth: str | None = None, ctype: str = "application/json") -> dict:
    headers = [(b"content-type", ctype.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    if auth is not None:
        headers.append((b"authorization", auth.encode()))
    return {"type": "http", "method": "POST", "path": "/encode", "headers": headers}


async def _never(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the app was called")


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic k"])
def test_a_wrong_key_is_refused_before_the_body_is_read(auth: str | None) -> None:
    from service.limits import MemoryBudget

    mw = BodyLimitMiddleware(_never, 64 * 1024 * 1024, api_key="k", budget=MemoryBudget(2**30))
    status, headers, body = asyncio.run(_call(mw, _scope(60_000_000, auth)))
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert "MONOLITH_API_KEY" in body["detail"]


def test_a_wrong_key_is_refused_before_the_body_is_sent_on_a_real_socket(monolith: Monolith,
                                                                         tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data", load_text_model=False, api_key="k"), monolith=monolith)
    with uvicorn_thread(app) as (url, _), socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
        s.settimeout(10)
        s.sendall(b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 60000000\r\n\r\n")  # the body never comes
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 401"), head


def test_memory_budget_is_first_come_first_served_and_times_out() -> None:
    from service.limits import MemoryBudget

    async def scenario() -> list[Any]:
        budget = MemoryBudget(100)
        assert await budget.acquire(60, 1)
        big = asyncio.create_task(budget.acquire(50, 1))  # waits: 60 + 50 > 100
        await asyncio.sleep(0.01)
        small = asyncio.create_task(budget.acquire(10, 1))  # would fit, but queues behind big
        await asyncio.sleep(0.01)
        order = [big.done(), small.done()]
        budget.release(60)
        got = [await big, await small]
        late = await budget.acquire(50, 0.05)  # 60 of 100 in use: does not fit in time
        used = budget.used
        budget.release(60)
        huge = await budget.acquire(10**9, 0.05)  # more than the whole budget: runs alone
        return [order, got, late, used, huge, budget.used]

    order, got, late, used, huge, used_by_huge = asyncio.run(scenario())
    assert order == [False, False] and got == [True, True] and late is False
    assert used == 60 and huge is True and used_by_huge == 100


def test_bodies_past_the_memory_budget_wait_then_get_503() -> None:
    from service.limits import MemoryBudget

    async def scenario() -> tuple[int, dict, dict]:
        inside = asyncio.Event()
        let_go = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            inside.set()
            await let_go.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        mw = BodyLimitMiddleware(app, 10_000_000, budget=MemoryBudget(10_000_000), budget_wait_s=0.2)
        first = asyncio.create_task(_call(mw, _scope(1_000_000), [b"x" * 1_000_000]))  # 8 MB estimated
        await inside.wait()
        second = await _call(mw, _scope(1_000_000), [b"y" * 1_000_000])  # does not fit beside it
        let_go.set()
        assert (await first)[0] == 200
        third = await _call(mw, _scope(1000), [b"z" * 1000])  # fits once the first is answered
        assert third[0] == 200 and mw.budget.used == 0
        return second

    status, headers, body = asyncio.run(scenario())
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert "MONOLITH_BODY_MEMORY_BYTES" in body["detail"]


def test_a_body_that_trickles_is_408() -> None:
    from service.limits import MemoryBudget

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app was called")

    mw = BodyLimitMiddleware(ok, 10_000_000, budget=MemoryBudget(10**9), body_timeout_s=0.2)
    status, _, body = asyncio.run(_call(mw, _scope(1000), [b"x" * 10], stall=True))
    assert status == 408 and "MONOLITH_BODY_TIMEOUT_S" in body["detail"]


def test_text_per_request_is_bounded_with_413_naming_the_setting(make_client: AppFactory) -> None:
    client = make_client(embedder=FakeEmbedder(), max_request_chars=50)
    assert client.post("/encode", json={"texts": ["x" * 20, "y" * 20]}).status_code == 200
    resp = client.post("/encode", json={"texts": ["x" * 20, "y" * 20, "z" * 20]})
    assert resp.status_code == 413 and "MONOLITH_MAX_REQUEST_CHARS" in resp.json()["detail"]
    assert client.put("/collections/docs").status_code == 201
    resp = upsert(client, [{"id": str(i), "text": "w" * 20} for i in range(3)])
    assert resp.status_code == 413 and "MONOLITH_MAX_REQUEST_CHARS" in resp.json()["detail"]
    resp = client.post("/collections/docs/search", json={"texts": ["q" * 30, "r" * 30]})
    assert resp.status_code == 413 and "MONOLITH_MAX_REQUEST_CHARS" in resp.json()["detail"]


# -- the HTTP server's connection limits -----------------------------------------------------------


def _tiny_app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ok": "yes"}

    return app


def _closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        while data := s.recv(4096):
            if data.startswith(b"HTTP/1.1 4"):
                return True
        return True
    except TimeoutError:
        return False


def test_connections_without_a_request_head_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.server import H11Protocol

    monkeypatch.setattr(H11Protocol, "header_timeout_s", 0.5)
    with uvicorn_thread(_tiny_app()) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as silent, \
                socket.create_connection(("127.0.0.1", port)) as dribbling, \
                socket.create_connection(("127.0.0.1", port)) as served:
            dribbling.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # never ends its head
            served.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in served.recv(4096)
            assert _closed_within(silent, 5) and _closed_within(dribbling, 5)
        assert httpx.get(f"{url}/ping").status_code == 200


def test_past_the_concurrency_limit_the_answer_is_the_apis_json_503() -> None:
    with uvicorn_thread(_tiny_app(), limit_concurrency=1) as (url, _):
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))):  # holds the one slot
            time.sleep(0.2)
            resp = httpx.get(f"{url}/ping")
    assert resp.status_code == 503 and resp.headers["content-type"] == "application/json"
    assert "MONOLITH_LIMIT_CONCURRENCY" in resp.json()["detail"] and resp.headers["retry-after"]


def test_uvicorn_gets_every_limit_from_the_settings() -> None:
    from service.server import H11Protocol, uvicorn_options

    settings = Settings(keep_alive_s=7, limit_concurrency=99, max_header_bytes=4096, graceful_shutdown_s=3,
                        header_timeout_s=2.5)
    opts = uvicorn_options(settings)
    assert opts["http"] == "service.server:H11Protocol" and H11Protocol.header_timeout_s == 2.5
    assert (opts["timeout_keep_alive"], opts["limit_concurrency"], opts["h11_max_incomplete_event_size"],
            opts["timeout_graceful_shutdown"]) == (7, 99, 4096, 3)
    uvicorn_options(Settings())  # back to the defaults for the other tests


def test_readyz_keeps_the_failure_reason_behind_the_key(make_client: AppFactory, tmp_path: Path) -> None:
    secret = tmp_path / "secret-folder" / "model.safetensors"
    client = make_client(inject_model=False, wait=False, checkpoint=secret, api_key="k")
    resp = _wait_failed(client)
    assert resp.status_code == 503 and "failed to load" in resp.json()["detail"]
    assert "secret-folder" not in resp.text and "API key" in resp.json()["detail"]
    with_key = client.get("/readyz", headers={"Authorization": "Bearer k"})
    assert with_key.status_code == 503 and "secret-folder" in with_key.text

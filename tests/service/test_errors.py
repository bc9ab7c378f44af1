"""Every refusal: the status the HTTP contract promises (docs/service.md), a {"detail": ...} saying what to fix."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import AppFactory, unit_rows, wait_ready
from vqvae.api import Monolith
from vqvae.checkpoint import save_checkpoint

NPY = {"Content-Type": "application/x-npy"}
ROW = [0.05] * 384


def npy(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, **kw)
    return buf.getvalue()


def detail_text(resp) -> str:
    detail = resp.json()["detail"]
    return detail if isinstance(detail, str) else " ".join(f"{d['loc']} {d['msg']}" for d in detail)


# -- 422 ---------------------------------------------------------------------------------------

JSON_422 = {
    "wrong dimension": ("/encode", {"embeddings": [[0.1] * 383]}, "384"),
    "ragged rows": ("/encode", {"embeddings": [ROW, ROW[:-1]]}, "embeddings[1] has 383"),
    "empty embeddings": ("/encode", {"embeddings": []}, "at least 1"),
    "empty texts": ("/encode", {"texts": []}, "at least 1"),
    "both": ("/encode", {"texts": ["a"], "embeddings": [ROW]}, "exactly one"),
    "neither": ("/encode", {}, "exactly one"),
    "only flag": ("/encode", {"return_reconstructions": True}, "exactly one"),
    "misspelt key": ("/encode", {"embedding": [ROW]}, "embedding"),
    "non-numeric": ("/encode", {"embeddings": [["x"] * 384]}, "number"),
    "nested too deep": ("/encode", {"embeddings": [[ROW]]}, "number"),
    "flat row": ("/encode", {"embeddings": ROW}, "more errors not shown"),
    "code too large": ("/decode", {"codes": [[0, 1, 2, 256]]}, "less than or equal to 255"),
    "negative code": ("/decode", {"codes": [[0, -1, 2, 3]]}, "greater than or equal to 0"),
    "too few codes": ("/decode", {"codes": [[0, 1, 2]]}, "codes[0] has 3"),
    "too many codes": ("/decode", {"codes": [[0, 1, 2, 3, 4]]}, "codes[0] has 5"),
    "ragged codes": ("/decode", {"codes": [[0, 1, 2, 3], [1, 2]]}, "codes[1] has 2"),
    "no codes": ("/decode", {"codes": []}, "at least 1"),
    "fractional code": ("/decode", {"codes": [[0, 1, 2, 3.5]]}, "integer"),
    "huge code": ("/decode", {"codes": [[0, 1, 2, 10**30]]}, "less than or equal to 255"),
}


@pytest.mark.parametrize("path,body,hint", JSON_422.values(), ids=JSON_422.keys())
def test_invalid_json_is_422_with_a_hint(client: TestClient, path: str, body: dict, hint: str) -> None:
    resp = client.post(path, json=body)
    assert resp.status_code == 422, resp.text
    assert hint in detail_text(resp)


RAW_422 = {
    "NaN": ('{"embeddings": [[NaN' + ", 0.1" * 383 + "]]}", "NaN or Inf"),
    "Infinity": ('{"embeddings": [[Infinity' + ", 0.1" * 383 + "]]}", "NaN or Inf"),
    "overflow": ('{"embeddings": [[1e999' + ", 0.1" * 383 + "]]}", "NaN or Inf"),
    "not JSON": ("{embeddings: nope", "JSON"),
    "empty body": ("", "JSON"),
    "JSON array": ("[1, 2, 3]", "object"),
}


@pytest.mark.parametrize("raw,hint", RAW_422.values(), ids=RAW_422.keys())
def test_malformed_bodies_are_422(client: TestClient, raw: str, hint: str) -> None:
    resp = client.post("/encode", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert hint in detail_text(resp)


def test_validation_errors_do_not_echo_the_input(client: TestClient) -> None:
    resp = client.post("/encode", json={"texts": ["secret sentence"], "embeddings": [ROW]})
    assert resp.status_code == 422
    assert "secret sentence" not in resp.text


def _object_npy() -> bytes:
    return npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _lying_header(rows: int) -> bytes:
    """A valid header claiming ``rows`` rows, followed by one row of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (rows, 384)})
    return buf.getvalue() + np.zeros(384, np.float32).tobytes()


NPY_422 = {
    "float64": ("/encode", npy(unit_rows(2).astype(np.float64)), "float32"),
    "integers": ("/encode", npy(np.ones((2, 384), np.int32)), "float32"),
    "wrong width": ("/encode", npy(unit_rows(2, dim=100)), "384"),
    "1-D": ("/encode", npy(unit_rows(1)[0]), "2-D"),
    "3-D": ("/encode", npy(unit_rows(2).reshape(1, 2, 384)), "2-D"),
    "no rows": ("/encode", npy(np.zeros((0, 384), np.float32)), "no rows"),
    "NaN": ("/encode", npy(np.full((1, 384), np.nan, np.float32)), "NaN"),
    "truncated": ("/encode", npy(unit_rows(4))[:-100], "truncated"),
    "trailing bytes": ("/encode", npy(unit_rows(4)) + b"\0" * 8, "longer"),
    "header lies (huge)": ("/encode", _lying_header(10**9), "truncated"),
    "header lies (small)": ("/encode", _lying_header(50), "truncated"),
    "object array": ("/encode", _object_npy(), "not allowed"),
    "structured": ("/encode", npy(np.zeros(3, dtype=[("a", "f4"), ("b", "f4")])), "not allowed"),
    "garbage": ("/encode", b"definitely not numpy", ".npy"),
    "empty": ("/encode", b"", "empty"),
    "magic only": ("/encode", b"\x93NUMPY\x01\x00", "header"),
    "codes float": ("/decode", npy(np.zeros((1, 4), np.float32)), "integer"),
    "codes out of range": ("/decode", npy(np.array([[0, 1, 2, 300]], np.int16)), "0..255"),
    "codes negative": ("/decode", npy(np.array([[0, 1, 2, -1]], np.int8)), "0..255"),
    "codes wrong width": ("/decode", npy(np.zeros((1, 3), np.uint8)), "[N, 4]"),
    "codes no rows": ("/decode", npy(np.zeros((0, 4), np.uint8)), "at least one"),
}


@pytest.mark.parametrize("path,body,hint", NPY_422.values(), ids=NPY_422.keys())
def test_malformed_npy_is_422(client: TestClient, path: str, body: bytes, hint: str) -> None:
    resp = client.post(path, content=body, headers=NPY)
    assert resp.status_code == 422, resp.text
    assert hint in detail_text(resp)


def test_texts_without_text_model_are_refused_clearly(client: TestClient) -> None:
    resp = client.post("/encode", json={"texts": ["hello"]})
    assert resp.status_code == 422
    assert "MONOLITH_LOAD_TEXT_MODEL" in resp.json()["detail"]
    assert client.get("/readyz").json()["text_model"] is False


@pytest.mark.parametrize(
    "texts,hint",
    [([""], "texts[0] is empty"), (["ok", "   "], "texts[1] is empty"), (["x" * 11], "MONOLITH_MAX_TEXT_CHARS")],
    ids=["empty", "blank", "too long"],
)
def test_bad_texts_are_422(make_client: AppFactory, embedder, texts: list[str], hint: str) -> None:
    client = make_client(embedder=embedder, max_text_chars=10)
    resp = client.post("/encode", json={"texts": texts})
    assert resp.status_code == 422
    assert hint in resp.json()["detail"]


def test_unknown_route_and_source_are_json_errors(client: TestClient) -> None:
    assert client.get("/nope").json() == {"detail": "Not Found"}
    resp = client.get("/codebook/health", params={"source": "yesterday"})
    assert resp.status_code == 422
    assert "traffic" in detail_text(resp)


# -- 413 ---------------------------------------------------------------------------------------


def test_body_over_limit_by_content_length_is_413(make_client: AppFactory) -> None:
    client = make_client(max_body_bytes=4096)
    resp = client.post("/encode", content=npy(unit_rows(4)), headers=NPY)
    assert resp.status_code == 413
    assert "MONOLITH_MAX_BODY_BYTES" in resp.json()["detail"]


def test_streamed_body_over_limit_is_413(make_client: AppFactory) -> None:
    client = make_client(max_body_bytes=4096)

    def chunks() -> Iterator[bytes]:  # no Content-Length: only the streamed size can tell
        for _ in range(10):
            yield b"[" * 1000

    resp = client.post("/encode", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert "MONOLITH_MAX_BODY_BYTES" in resp.json()["detail"]
    assert client.post("/encode", json={"embeddings": [ROW]}).status_code == 200  # still serving


@pytest.mark.parametrize(
    "path,kwargs",
    [
        ("/encode", {"json": {"embeddings": [ROW] * 6}}),
        ("/encode", {"json": {"texts": ["a"] * 6}}),
        ("/encode", {"content": npy(unit_rows(6)), "headers": NPY}),
        ("/decode", {"json": {"codes": [[0, 0, 0, 0]] * 6}}),
        ("/decode", {"content": npy(np.zeros((6, 4), np.uint8)), "headers": NPY}),
    ],
    ids=["embeddings", "texts", "npy", "codes", "codes npy"],
)
def test_batch_over_limit_is_413(make_client: AppFactory, path: str, kwargs: dict) -> None:
    client = make_client(max_batch=5)
    resp = client.post(path, **kwargs)
    assert resp.status_code == 413, resp.text
    assert "MONOLITH_MAX_BATCH" in resp.json()["detail"]


# -- 401 ---------------------------------------------------------------------------------------

KEY = "s3cret-key"


@pytest.fixture
def locked(make_client: AppFactory) -> TestClient:
    return make_client(api_key=KEY)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY},
     {"Authorization": "Bearer ünïcode".encode("latin-1")}],
    ids=["missing", "wrong", "basic", "no scheme", "non-ascii"],
)
def test_missing_or_wrong_key_is_401(locked: TestClient, headers: dict[str, str | bytes]) -> None:
    for method, path in [("POST", "/encode"), ("POST", "/decode"), ("GET", "/model"), ("GET", "/metrics"),
                         ("GET", "/codebook/health"), ("GET", "/codebook/health.svg"), ("GET", "/openapi.json")]:
        resp = locked.request(method, path, json={"embeddings": [ROW]}, headers=headers)
        assert resp.status_code == 401, (path, resp.text)
        assert "MONOLITH_API_KEY" in resp.json()["detail"]
        assert resp.headers["www-authenticate"] == "Bearer"


def test_right_key_passes_and_probes_stay_open(locked: TestClient) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    assert locked.post("/encode", json={"embeddings": [ROW]}, headers=auth).status_code == 200
    assert locked.get("/metrics", headers=auth).status_code == 200
    assert locked.get("/openapi.json", headers=auth).status_code == 200
    assert "swagger" in locked.get("/docs", headers=auth).text.lower()
    assert locked.get("/healthz").status_code == 200
    assert locked.get("/readyz").status_code == 200


# -- 503 ---------------------------------------------------------------------------------------


def test_broken_checkpoint_keeps_readyz_503(make_client: AppFactory, tmp_path: Path) -> None:
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    client = make_client(inject_model=False, checkpoint=bad, wait=False)
    deadline = time.monotonic() + 10
    while "failed" not in (resp := client.get("/readyz")).text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert resp.status_code == 503
    assert "failed to load" in resp.json()["detail"]
    assert client.get("/healthz").status_code == 200
    resp = client.post("/encode", json={"embeddings": [ROW]})
    assert resp.status_code == 503
    assert "failed to load" in resp.json()["detail"]


def test_503_while_loading_then_ready(monolith: Monolith, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up opens the collections before readiness; until it finishes, model routes answer 503."""
    import service.app as app_module

    release = threading.Event()
    calls: list[object] = []
    open_store = app_module.open_store

    def slow_open_store(settings: Settings, model: Monolith):
        calls.append(model)
        release.wait(30)
        return open_store(settings, model)

    monkeypatch.setattr(app_module, "open_store", slow_open_store)
    app = create_app(Settings(data_dir=tmp_path, load_text_model=False), monolith=monolith)
    with TestClient(app) as client:
        try:
            resp = client.get("/readyz")
            assert resp.status_code == 503
            assert "loading" in resp.json()["detail"]
            assert resp.headers["retry-after"]
            resp = client.post("/encode", json={"embeddings": [ROW]})
            assert resp.status_code == 503
            assert resp.headers["retry-after"]
        finally:
            release.set()
        assert wait_ready(client).status_code == 200
        assert calls == [monolith]
        assert client.post("/encode", json={"embeddings": [ROW]}).status_code == 200


def test_full_queue_is_503_with_retry_after(make_client: AppFactory) -> None:
    client = make_client(queue_limit=1)
    batcher = client.app.state.service.batcher
    release = threading.Event()
    blocker = batcher.executor.submit(release.wait)  # the model worker is busy
    first: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: first.setdefault("status", client.post("/encode", json={"embeddings": [ROW]}).status_code)
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while batcher.pending < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        resp = client.post("/encode", json={"embeddings": [ROW]})
        assert resp.status_code == 503
        assert int(resp.headers["retry-after"]) >= 1
        assert "MONOLITH_QUEUE_LIMIT" in resp.json()["detail"]
    finally:
        release.set()
        thread.join(10)
        blocker.result(10)
    assert first["status"] == 200
    assert client.post("/encode", json={"embeddings": [ROW]}).status_code == 200
    assert 'monolith_rejected_total 1.0' in client.get("/metrics").text


# -- 404 ---------------------------------------------------------------------------------------


def test_reference_health_without_counts_is_404(make_client: AppFactory, monolith: Monolith, tmp_path: Path) -> None:
    path = save_checkpoint(monolith.model, tmp_path / "no-ref.safetensors")
    client = make_client(inject_model=False, checkpoint=path)
    resp = client.get("/codebook/health", params={"source": "reference"})
    assert resp.status_code == 404
    assert "source=traffic" in resp.json()["detail"]
    assert client.get("/model").json()["has_reference_counts"] is False
    assert client.get("/codebook/health", params={"source": "traffic"}).status_code == 200


def test_limits_follow_the_loaded_checkpoint(make_client: AppFactory, tmp_path: Path) -> None:
    """Nothing assumes 256 codes: a 16-code checkpoint refuses code 16 and plots 16 ranks."""
    from vqvae import ModelConfig, MonolithWiki

    config = ModelConfig(hidden_dim=64, latent_dim=32, num_heads=4, codebook_size=16, dropout=0.0)
    path = save_checkpoint(MonolithWiki(config), tmp_path / "k16.safetensors",
                           reference_counts=np.arange(64).reshape(4, 16).tolist())
    client = make_client(inject_model=False, checkpoint=path)
    resp = client.post("/decode", json={"codes": [[0, 1, 2, 16]]})
    assert resp.status_code == 422 and "0..15" in resp.json()["detail"]
    assert client.post("/decode", json={"codes": [[0, 1, 2, 15]]}).status_code == 200
    health = client.get("/codebook/health", params={"source": "reference"}).json()
    assert [h["used"] + h["dead"] for h in health["heads"]] == [16] * 4
    assert client.get("/codebook/health.svg", params={"source": "reference"}).status_code == 200


# -- the table ---------------------------------------------------------------------------------


def test_statuses_come_from_one_table() -> None:
    """A subclass answers as its nearest listed base; anything unlisted is a 500."""
    from service.collections.errors import CheckpointMismatch, CollectionCorrupt, ItemNotFound
    from service.errors import STATUS, InvalidInput, TooManyRows, status_of
    from service.npy import NpyError

    assert status_of(NpyError("bad .npy")) == STATUS[InvalidInput] == 422
    assert status_of(TooManyRows(6, 5)) == 413
    assert status_of(ItemNotFound("docs", "a")) == 404
    assert status_of(CheckpointMismatch("other checkpoint")) == 409
    assert status_of(CollectionCorrupt("unreadable")) == 500
    assert status_of(KeyError("a bug")) == 500

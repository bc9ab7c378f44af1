"""Collection routes through the real app (create_app): every status code, and the
upsert → get → search → delete → search cycle against the library's own answers."""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.collections.binding import StoreModel
from service.collections.store import Store
from tests.service.conftest import AppFactory, unit_rows
from vqvae.api import Monolith


class FakeEmbedder:
    """Deterministic unit vectors per text: exercises the text paths without the text model."""

    model_dir = None
    dim = 384

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts]
        x = np.asarray(rows, dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def items(x: np.ndarray, prefix: str = "doc", **extra) -> list[dict]:
    return [{"id": f"{prefix}{i}", "embedding": row.tolist(), **extra} for i, row in enumerate(x)]


@pytest.fixture
def coll(client: TestClient) -> TestClient:
    assert client.put("/collections/docs").status_code == 201
    return client


def test_create_list_get_delete_collection(client: TestClient, monolith: Monolith) -> None:
    resp = client.put("/collections/docs", json={"description": "my docs"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["name"] == "docs" and body["count"] == 0 and body["checkpoint_sha256"] == monolith.sha256
    assert body["description"] == "my docs" and body["created"]
    assert client.put("/collections/docs").status_code == 200
    [listed] = client.get("/collections").json()["collections"]
    assert listed["name"] == "docs" and listed["vectors"] == "int8"  # what the dashboard's table shows
    assert set(listed["bytes_per_item"]) == {"ram", "disk", "vector"} and listed["bytes_per_item"]["vector"] == 388
    assert client.get("/collections/docs").json()["status"] == "ok"
    assert client.delete("/collections/docs").json() == {"deleted": "docs"}
    assert client.get("/collections/docs").status_code == 404
    assert client.delete("/collections/docs").status_code == 404
    assert client.get("/collections").json() == {"collections": []}


@pytest.mark.parametrize("name", ["..x", "-a", "a" * 65, "a b", "a%00b"])
def test_invalid_collection_names_are_422(client: TestClient, name: str) -> None:
    resp = client.put(f"/collections/{name}")
    assert resp.status_code == 422
    assert "invalid collection name" in resp.json()["detail"]


def test_unknown_collection_is_404_everywhere(client: TestClient) -> None:
    x = unit_rows(1)
    for method, path, body in [
        ("get", "/collections/nope", None),
        ("delete", "/collections/nope", None),
        ("post", "/collections/nope/items", {"items": items(x)}),
        ("get", "/collections/nope/items/a", None),
        ("delete", "/collections/nope/items/a", None),
        ("post", "/collections/nope/search", {"embeddings": x.tolist()}),
    ]:
        resp = client.request(method, path, json=body)
        assert resp.status_code == 404, (method, path, resp.text)
        assert "nope" in resp.json()["detail"]


def test_upsert_get_search_delete_search(coll: TestClient, monolith: Monolith) -> None:
    x = unit_rows(50, seed=1)
    meta = [{"n": i, "tag": "é"} for i in range(50)]
    body = {"items": [{**it, "metadata": m} for it, m in zip(items(x), meta, strict=True)]}
    resp = coll.post("/collections/docs/items", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"collection": "docs", "upserted": 50, "inserted": 50, "updated": 0, "count": 50}

    codes = monolith.encode(x)
    got = coll.get("/collections/docs/items/doc7").json()
    assert got == {"id": "doc7", "codes": codes[7].tolist(), "metadata": meta[7], "text": None}

    # ADC search equals the library: encoder latent vs every stored code, best first.
    z = monolith.search_latent(x[:3])
    cb = monolith.model.quantizer.codebooks.detach().numpy()
    zq = np.concatenate([cb[h][codes[:, h]] for h in range(codes.shape[1])], axis=1)
    dist = ((z[:, None] - zq[None]) ** 2).sum(-1)
    resp = coll.post("/collections/docs/search", json={"embeddings": x[:3].tolist(), "k": 5, "candidates": 0})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["metric"] in {"latent_cosine", "neg_sq_l2"} and out["candidates"] == 0
    assert len(out["results"]) == 3
    for q, hits in enumerate(out["results"]):
        assert len(hits) == 5
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        hit_rows = [int(h["id"].removeprefix("doc")) for h in hits]
        np.testing.assert_allclose(dist[q, hit_rows], np.sort(dist[q])[:5], rtol=1e-4, atol=1e-4)
        assert hits[0]["metadata"] == meta[hit_rows[0]]

    # Re-ranked search: scores are cosines of the query with decoded codes.
    resp = coll.post("/collections/docs/search",
                     json={"embeddings": x[:1].tolist(), "k": 4, "candidates": 20, "rescore": False})
    out = resp.json()
    assert out["metric"] == "cosine" and out["candidates"] == 20 and out["rescored"] is False
    recon = monolith.decode(codes)
    for h in out["results"][0]:
        assert h["score"] == pytest.approx(float(recon[int(h["id"][3:])] @ x[0]), abs=1e-4)

    # Delete, then the item is gone from get and search; count follows.
    assert coll.delete("/collections/docs/items/doc7").json() == {"deleted": "doc7"}
    assert coll.get("/collections/docs/items/doc7").status_code == 404
    assert coll.delete("/collections/docs/items/doc7").status_code == 404
    resp = coll.post("/collections/docs/search", json={"embeddings": x.tolist(), "k": 50})
    for hits in resp.json()["results"]:
        assert len(hits) == 49 and "doc7" not in {h["id"] for h in hits}
    assert coll.get("/collections/docs").json()["count"] == 49


def test_upsert_same_id_replaces(coll: TestClient, monolith: Monolith) -> None:
    x = unit_rows(2, seed=2)
    first = {"id": "a", "embedding": x[0].tolist(), "metadata": {"v": 1}}
    assert coll.post("/collections/docs/items", json={"items": [first]}).json()["inserted"] == 1
    resp = coll.post("/collections/docs/items", json={"items": [{"id": "a", "embedding": x[1].tolist()}]})
    assert resp.json()["updated"] == 1 and resp.json()["count"] == 1
    got = coll.get("/collections/docs/items/a").json()
    assert got["codes"] == monolith.encode(x[1:])[0].tolist() and got["metadata"] is None


def test_ids_with_slashes_and_unicode(coll: TestClient) -> None:
    x = unit_rows(1, seed=3)
    for item_id in ["a/b/c", "ünï cödé", "q?x"]:
        resp = coll.post("/collections/docs/items", json={"items": [{"id": item_id, "embedding": x[0].tolist()}]})
        assert resp.status_code == 200
    from urllib.parse import quote

    for item_id in ["a/b/c", "ünï cödé", "q?x"]:
        resp = coll.get(f"/collections/docs/items/{quote(item_id, safe='/')}")
        assert resp.status_code == 200 and resp.json()["id"] == item_id


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"items": []}, "at least 1"),
        ({}, "Field required"),
        ({"items": [{"id": "a"}]}, "a 'text', an 'embedding', or both"),
        ({"items": [{"id": "", "embedding": [0.0] * 384}]}, "at least 1"),
        ({"items": [{"id": "a", "embedding": [0.1] * 383}]}, "383 values"),
        ({"items": [{"id": "a", "embedding": [0.1] * 384, "metadata": [1]}]}, "dictionary"),
        ({"items": [{"id": "a", "embedding": [0.1] * 384, "extra": 1}]}, "Extra inputs"),
    ],
)
def test_invalid_items_are_422(coll: TestClient, body: dict, fragment: str) -> None:
    resp = coll.post("/collections/docs/items", json=body)
    assert resp.status_code == 422, resp.text
    assert fragment in str(resp.json()["detail"])
    assert coll.get("/collections/docs").json()["count"] == 0


def test_duplicate_ids_nan_and_oversize_metadata_are_422(make_client: AppFactory) -> None:
    client = make_client(max_metadata_bytes=100, max_id_chars=8)
    client.put("/collections/docs")
    x = unit_rows(2, seed=4)
    resp = client.post("/collections/docs/items", json={"items": items(x, prefix="same")[:1] * 2})
    assert resp.status_code == 422 and "duplicate id 'same0'" in resp.json()["detail"]
    row = ",".join(["NaN"] + ["0.1"] * 383)
    resp = client.post("/collections/docs/items", content=f'{{"items": [{{"id": "a", "embedding": [{row}]}}]}}',
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and "NaN" in str(resp.json()["detail"])
    big = {"items": [{"id": "a", "embedding": x[0].tolist(), "metadata": {"s": "x" * 200}}]}
    resp = client.post("/collections/docs/items", json=big)
    assert resp.status_code == 422 and "MONOLITH_MAX_METADATA_BYTES" in resp.json()["detail"]
    resp = client.post("/collections/docs/items", json={"items": [{"id": "x" * 9, "embedding": x[0].tolist()}]})
    assert resp.status_code == 422 and "MONOLITH_MAX_ID_CHARS" in resp.json()["detail"]
    assert client.get("/collections/docs").json()["count"] == 0


def test_too_many_items_or_queries_is_413(make_client: AppFactory) -> None:
    client = make_client(max_batch=3)
    client.put("/collections/docs")
    x = unit_rows(4, seed=5)
    resp = client.post("/collections/docs/items", json={"items": items(x)})
    assert resp.status_code == 413 and "MONOLITH_MAX_BATCH" in resp.json()["detail"]
    resp = client.post("/collections/docs/search", json={"embeddings": x.tolist()})
    assert resp.status_code == 413


def test_oversized_search_answers_are_413(coll: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.collections.checks as checks

    monkeypatch.setattr(checks, "MAX_HITS", 100)
    monkeypatch.setattr(checks, "MAX_RERANK_ROWS", 1000)
    x = unit_rows(3, seed=8).tolist()
    assert coll.post("/collections/docs/search", json={"embeddings": x, "k": 34, "rescore": False}).status_code == 413
    assert coll.post("/collections/docs/search", json={"embeddings": x, "k": 33, "rescore": False}).status_code == 200
    resp = coll.post("/collections/docs/search", json={"embeddings": x, "k": 10})  # 3 × 3000 rescored rows
    assert resp.status_code == 413 and "re-rank" in resp.json()["detail"]
    resp = coll.post("/collections/docs/search", json={"embeddings": x, "k": 10, "candidates": 334})
    assert resp.status_code == 413 and "re-rank" in resp.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"embeddings": [[0.1] * 384], "k": 0},
        {"embeddings": [[0.1] * 384], "k": 1001},
        {"embeddings": [[0.1] * 384], "candidates": -1},
        {"embeddings": [[0.1] * 384], "candidates": 20_000},
        {"embeddings": [[0.1] * 383]},
        {"embeddings": []},
        {"embeddings": [[0.1] * 384], "texts": ["a"]},
        {},
    ],
)
def test_invalid_searches_are_422(coll: TestClient, body: dict) -> None:
    assert coll.post("/collections/docs/search", json=body).status_code == 422


def test_texts_need_the_text_model(coll: TestClient) -> None:
    resp = coll.post("/collections/docs/items", json={"items": [{"id": "a", "text": "hello"}]})
    assert resp.status_code == 422 and "MONOLITH_LOAD_TEXT_MODEL" in resp.json()["detail"]
    assert coll.post("/collections/docs/search", json={"texts": ["hello"]}).status_code == 422


def test_text_items_and_text_search(make_client: AppFactory, monolith: Monolith) -> None:
    fake = FakeEmbedder()
    client = make_client(embedder=fake)
    client.put("/collections/docs")
    texts = ["the cat sat", "a dog ran", "stocks fell"]
    body = {"items": [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)]
             + [{"id": "e0", "embedding": unit_rows(1, seed=6)[0].tolist()}]}
    resp = client.post("/collections/docs/items", json=body)
    assert resp.status_code == 200, resp.text
    got = client.get("/collections/docs/items/t1").json()
    assert got["text"] == "a dog ran" and got["codes"] == monolith.encode(fake.embed(["a dog ran"]))[0].tolist()
    resp = client.post("/collections/docs/search", json={"texts": ["stocks fell"], "k": 4})
    assert resp.status_code == 200 and len(resp.json()["results"][0]) == 4
    resp = client.post("/collections/docs/items", json={"items": [{"id": "t9", "text": "   "}]})
    assert resp.status_code == 422 and "items[0].text" in resp.json()["detail"]


def test_other_checkpoint_is_409_and_left_alone(make_client: AppFactory, monolith: Monolith, tmp_path: Path) -> None:
    other = dataclasses.replace(StoreModel.from_monolith(monolith), sha256="f" * 64, weights_sha256="e" * 64)
    store = Store(tmp_path / "data", other)
    col, _ = store.create("old")
    col.upsert(["a"], np.array([[1, 2, 3, 4]], np.uint8))
    store.close()
    client = make_client()
    x = unit_rows(1)
    for method, path, body in [
        ("get", "/collections/old", None),
        ("put", "/collections/old", None),
        ("post", "/collections/old/items", {"items": items(x)}),
        ("get", "/collections/old/items/a", None),
        ("delete", "/collections/old/items/a", None),
        ("post", "/collections/old/search", {"embeddings": x.tolist()}),
    ]:
        resp = client.request(method, path, json=body)
        assert resp.status_code == 409, (method, path, resp.text)
        assert "f" * 64 in resp.json()["detail"] and monolith.sha256 in resp.json()["detail"]
    listed = client.get("/collections").json()["collections"]
    assert listed[0]["status"] == "checkpoint_mismatch"
    assert Store(tmp_path / "data", other).get("old").get("a").codes == [1, 2, 3, 4]


def test_api_key_is_required_when_set(make_client: AppFactory) -> None:
    client = make_client(api_key="s3cret")
    assert client.put("/collections/docs").status_code == 401
    assert client.get("/collections").status_code == 401
    assert client.post("/collections/docs/search", json={"embeddings": [[0.1] * 384]}).status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert client.put("/collections/docs", headers=auth).status_code == 201
    assert client.get("/collections", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_not_ready_is_503(make_client: AppFactory) -> None:
    client = make_client(inject_model=False, wait=False, checkpoint=Path("/nonexistent.safetensors"))
    resp = client.get("/collections")
    assert resp.status_code == 503

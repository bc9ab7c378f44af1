"""Kept vectors: stored with the codes, rescored exactly, carried by export/import, reported in
the collection's info; older files and exports still open."""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.collections import vectors
from service.collections.binding import StoreModel
from service.collections.store import Store
from tests.service.collections.test_routes import FakeEmbedder, items
from tests.service.conftest import AppFactory, unit_rows
from vqvae.api import Monolith

REAL = Path(__file__).resolve().parents[2] / "data" / "real_sample.npy"


def real_rows(n: int) -> np.ndarray:
    x = np.load(REAL).astype(np.float32)[:n]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind, floor", [("int8", 0.9999), ("float16", 0.99999)])
def test_kept_vectors_round_trip_within_their_precision(kind: str, floor: float) -> None:
    x = real_rows(500)
    back = vectors.unpack(kind, vectors.pack(kind, x), x.shape[1])
    cos = (back * x).sum(1) / np.linalg.norm(back, axis=1)
    assert cos.min() > floor
    assert all(len(b) == vectors.row_bytes(kind, 384) for b in vectors.pack(kind, x))
    zero = vectors.unpack(kind, vectors.pack(kind, np.zeros((1, 384), np.float32)), 384)
    assert np.array_equal(zero, np.zeros((1, 384), np.float32))  # no division by a zero scale


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> list[list[int]]:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k].tolist()


def test_search_rescores_exactly_with_kept_vectors(client: TestClient) -> None:
    x = real_rows(400)
    assert client.put("/collections/docs", json={"vectors": "float16"}).json()["vectors"] == "float16"
    assert client.post("/collections/docs/items", json={"items": items(x)}).status_code == 200
    q = x[:5]
    out = client.post("/collections/docs/search", json={"embeddings": q.tolist(), "k": 10}).json()
    assert out["rescored"] is True and out["metric"] == "cosine" and out["candidates"] == 3000
    for qi, hits in enumerate(out["results"]):
        ids = [int(h["id"][3:]) for h in hits]
        assert ids == exact_top(x, q[qi : qi + 1], 10)[0]  # every row is a candidate: the exact answer
        for h in hits:
            assert h["score"] == pytest.approx(float(x[int(h["id"][3:])] @ q[qi]), abs=2e-3)
    # the decoded re-ranking (rescore off) is not exact, and says so
    off = client.post("/collections/docs/search", json={"embeddings": q.tolist(), "k": 10, "rescore": False}).json()
    assert off["rescored"] is False
    assert [[h["id"] for h in r] for r in off["results"]] != [[h["id"] for h in r] for r in out["results"]]


def test_rescoring_works_with_filters_and_ivf(client: TestClient) -> None:
    x = real_rows(600)
    spec = {"kind": "ivf", "lists": 4, "train_at": 256}
    assert client.put("/collections/part", json={"index": spec}).status_code == 201
    body = items(x, metadata={"half": 0})
    for i in range(0, len(body), 2):
        body[i]["metadata"] = {"half": 1}
    assert client.post("/collections/part/items", json={"items": body}).status_code == 200
    info = client.get("/collections/part").json()
    assert info["index"]["trained"] is True and info["vectors"] == "int8"
    q = x[1:4]
    out = client.post("/collections/part/search", json={"embeddings": q.tolist(), "k": 5, "probe": 4,
                                                         "filter": {"half": 1}}).json()
    even = x[::2]
    for qi, hits in enumerate(out["results"]):
        assert [int(h["id"][3:]) for h in hits] == [2 * i for i in exact_top(even, q[qi : qi + 1], 5)[0]]


def test_rescore_without_kept_vectors_is_422_and_vectors_kind_is_checked(client: TestClient) -> None:
    assert client.put("/collections/bare", json={"vectors": "none"}).status_code == 201
    x = unit_rows(20, seed=3)
    assert client.post("/collections/bare/items", json={"items": items(x)}).status_code == 200
    resp = client.post("/collections/bare/search", json={"embeddings": x[:1].tolist(), "rescore": True})
    assert resp.status_code == 422 and "keeps no vectors" in resp.json()["detail"]
    default = client.post("/collections/bare/search", json={"embeddings": x[:1].tolist()}).json()
    assert default["rescored"] is False and default["candidates"] == 100  # decoded re-ranking, as before
    resp = client.put("/collections/odd", json={"vectors": "int4"})
    assert resp.status_code == 422 and "'int8', 'float16' or 'none'" in resp.text
    resp = client.put("/collections/bare", json={"vectors": "int8"})
    assert resp.status_code == 409 and "cannot change in place" in resp.json()["detail"]


def test_items_may_carry_text_and_embedding(make_client: AppFactory) -> None:
    client = make_client(embedder=FakeEmbedder())
    client.put("/collections/docs")
    x = unit_rows(3, seed=5)
    body = [{"id": "both", "text": "the text", "embedding": x[0].tolist()}, {"id": "text", "text": "only text"}]
    assert client.post("/collections/docs/items", json={"items": body}).status_code == 200
    col = client.app.state.service.store.get("docs")
    kept = col.kept_vectors(np.array([0, 1]))
    assert np.allclose(kept[0], x[0], atol=3e-3)  # the embedding is what is kept, not the text's
    assert np.allclose(kept[1], FakeEmbedder().embed(["only text"])[0], atol=3e-3)
    hit = client.post("/collections/docs/search", json={"embeddings": x[:1].tolist(), "k": 1}).json()
    assert hit["results"][0][0] == {"id": "both", "score": pytest.approx(1.0, abs=1e-3), "metadata": None,
                                    "text": "the text"}


def test_info_reports_bytes_per_item(client: TestClient) -> None:
    client.put("/collections/docs")
    client.post("/collections/docs/items", json={"items": items(unit_rows(200, seed=1))})
    info = client.get("/collections/docs").json()
    per = info["bytes_per_item"]
    col = client.app.state.service.store.get("docs")
    assert per["vector"] == 388 and per["disk"] > 388 and per["ram"] == round(col.index.nbytes / 200, 2) >= 4


def old_file(path: Path, model: StoreModel, x: np.ndarray, codes: np.ndarray) -> None:
    """A collection file as schema version 1 wrote it (no vector column)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    conn.execute("CREATE TABLE items (slot INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, codes BLOB NOT NULL "
                 "CHECK (length(codes) = 4), metadata TEXT, text TEXT)")
    conn.executemany("INSERT INTO meta VALUES (?, ?)", {**model.file_meta(), "schema_version": "1"}.items())
    conn.executemany("INSERT INTO items VALUES (?, ?, ?, NULL, ?)",
                     [(i, f"d{i}", codes[i].tobytes(), f"text {i}") for i in range(len(x))])
    conn.commit()
    conn.close()


def test_version_1_files_open_upgraded_and_search_by_decoded_codes(tmp_path: Path, monolith: Monolith) -> None:
    model = StoreModel.from_monolith(monolith)
    x = unit_rows(30, seed=2)
    (tmp_path / "collections").mkdir()
    old_file(tmp_path / "collections" / "old.sqlite3", model, x, monolith.encode(x))
    col = Store(tmp_path, model).get("old")
    assert col.meta["schema_version"] == "2" and col.vector_kind == "none" and len(col) == 30
    hits, metric = col.search(monolith.search_latent(x[:1]), x[:1], 3, 10)
    assert metric == "cosine" and len(hits[0]) == 3
    col.upsert(["new"], monolith.encode(x[:1]), inputs=x[:1])  # the new column takes writes
    assert col.get("new") is not None


def test_export_carries_kept_vectors_and_version_1_exports_import(client: TestClient) -> None:
    x = real_rows(50)
    client.put("/collections/docs")
    client.post("/collections/docs/items", json={"items": items(x)})
    blob = client.get("/collections/docs/export").content
    rows = [json.loads(line) for line in gzip.decompress(blob).splitlines()]
    assert rows[0]["vectors"] == "int8" and all(isinstance(r["vector"], str) for r in rows[1:-1])
    assert client.post("/collections/copy/import", content=blob).status_code == 201
    copy = client.app.state.service.store.get("copy")
    assert copy.vector_kind == "int8"
    assert np.allclose(copy.kept_vectors(np.arange(50)), x, atol=3e-3)
    # a version 1 export: no "vectors", no "vector"; it imports and keeps none
    old = [dict(rows[0], format_version=1), *[{k: v for k, v in r.items() if k != "vector"} for r in rows[1:-1]]]
    old[0].pop("vectors")
    body = "".join(json.dumps(r) + "\n" for r in old)
    trailer = {"end": True, "count": 50, "sha256": hashlib.sha256(body.encode()).hexdigest()}
    resp = client.post("/collections/v1/import", content=gzip.compress((body + json.dumps(trailer) + "\n").encode()))
    assert resp.status_code == 201, resp.text
    assert resp.json()["collection"]["vectors"] == "none"
    # a vector of the wrong size is refused, naming the line
    bad = [dict(rows[0]), dict(rows[1], vector="AAAA"), *rows[2:-1]]
    body = "".join(json.dumps(r) + "\n" for r in bad)
    trailer = {"end": True, "count": 50, "sha256": hashlib.sha256(body.encode()).hexdigest()}
    resp = client.post("/collections/bad/import", content=gzip.compress((body + json.dumps(trailer) + "\n").encode()))
    assert resp.status_code == 422 and "line 2" in resp.json()["detail"] and "388 bytes" in resp.json()["detail"]

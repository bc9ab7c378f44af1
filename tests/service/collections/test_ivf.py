"""Partitioned (IVF) collections: created, trained, searched, edited and reopened like flat ones.

Built from real embeddings (tests/data/real_sample.npy and noisy copies of it) through the
Store and through the HTTP routes: the top-10 overlap with a flat collection holding the same
items at the default probe, deletes and updates are reflected exactly, the trained lists survive
a reopen (and another process's training), and the HTTP contract (``index``, ``probe``,
``/train``) answers as DESIGN.md says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.collections import partitions
from service.collections.binding import StoreModel
from service.collections.partitions import IndexSpec
from service.collections.store import Store
from tests.conftest import real_embeddings
from vqvae.api import Monolith
from vqvae.ivf import IVFCodeIndex

SPEC = IndexSpec(kind="ivf", lists=16)  # trains at 512 items


@pytest.fixture(scope="module")
def fast() -> Monolith:
    return Monolith.load(candidates=0)  # nearest codes: the test needs many codes, not the best ones


@pytest.fixture(scope="module")
def model(fast: Monolith) -> StoreModel:
    return StoreModel.from_monolith(fast)


@pytest.fixture(scope="module")
def data(fast: Monolith) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """4 096 items (real vectors and noisy copies) with their codes; 40 held-out real queries."""
    x = real_embeddings()
    rng = np.random.default_rng(0)
    items = np.concatenate([x[:1000], *[x[:1000] + 0.02 * rng.standard_normal((1000, 384)).astype(np.float32)
                                         for _ in range(3)], x[1000:1024].repeat(4, 0)])[:4096]
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    q = x[:40] + 0.03 * rng.standard_normal((40, 384)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return items, fast.encode(items), q, fast.search_latent(q)


def overlap(a: list, b: list) -> float:
    """Tie-aware top-k overlap: a hit of ``a`` counts when it is in ``b`` or scores at least b's last."""
    total = hits = 0
    for ra, rb in zip(a, b, strict=True):
        ids, floor = {h.id for h in rb}, rb[-1].score - 1e-5
        hits += sum(1 for h in ra if h.id in ids or h.score >= floor)
        total += len(rb)
    return hits / total


def fill(store: Store, name: str, codes: np.ndarray, spec: IndexSpec | None) -> None:
    col, created = store.create(name, index=spec)
    assert created
    for s in range(0, len(codes), 1000):
        col.upsert([f"i{j}" for j in range(s, min(s + 1000, len(codes)))], codes[s : s + 1000],
                   [{"n": j % 7} for j in range(s, min(s + 1000, len(codes)))])


def test_ivf_collection_trains_and_agrees_with_flat(tmp_path: Path, model: StoreModel, data, fast: Monolith) -> None:
    _, codes, q, z = data
    store = Store(tmp_path, model)
    fill(store, "flat", codes, None)
    fill(store, "ivf", codes, SPEC)
    flat, ivf = store.get("flat"), store.get("ivf")
    info = ivf.info().index
    assert info["kind"] == "ivf" and info["trained"] and info["lists"] == 16
    assert isinstance(ivf.index, IVFCodeIndex) and ivf.meta[partitions.META_CENTROIDS]
    assert flat.info().index == {"kind": "flat"}
    for cand in (0, 100):
        a, _ = ivf.search(z, q, 10, cand)
        b, _ = flat.search(z, q, 10, cand)
        assert overlap(a, b) >= 0.95  # default probe
        few, _ = ivf.search(z, q, 10, cand, probe=4)
        assert overlap(few, b) >= 0.6
    # a filter: only matching items, intersected with the probed lists
    from service.collections.filters import parse_filter

    flt = parse_filter({"n": 3})
    ivf.prepare_filter(flt)
    got, _ = ivf.search(z, q, 10, 0, flt, probe=4)
    assert all(h.metadata == {"n": 3} for row in got for h in row) and all(len(r) == 10 for r in got)
    store.close()


def test_edits_and_reopen_keep_ivf_equal_to_flat(tmp_path: Path, model: StoreModel, data) -> None:
    _, codes, q, z = data
    store = Store(tmp_path, model)
    fill(store, "flat", codes[:2000], None)
    fill(store, "ivf", codes[:2000], SPEC)
    rng = np.random.default_rng(5)
    for name in ("flat", "ivf"):
        col = store.get(name)
        col.delete([f"i{j}" for j in rng.permutation(2000)[:300].tolist()])
        upd = [f"i{j}" for j in range(0, 2000, 7)]
        col.upsert(upd, codes[2000 : 2000 + len(upd)])
        col.upsert(["new1", "new2"], codes[3000:3002])
        rng = np.random.default_rng(5)

    def same(ivf_store: Store) -> None:
        flat, ivf = store.get("flat"), ivf_store.get("ivf")
        assert len(flat) == len(ivf)
        a, _ = ivf.search(z, q, 10, 0, probe=16)  # every list: exactly the flat answer
        b, _ = flat.search(z, q, 10, 0)
        assert np.allclose([[h.score for h in r] for r in a], [[h.score for h in r] for r in b], atol=1e-6)
        assert sorted(ivf.get_many([f"i{j}" for j in range(2000)])) == sorted(flat.get_many(
            [f"i{j}" for j in range(2000)]))

    same(store)
    centroids = store.get("ivf").index.centroids
    other = Store(tmp_path, model)  # another process: reopens from the file, same lists
    same(other)
    assert (other.get("ivf").index.centroids == centroids).all()
    other.get("ivf").train(lists=8)  # it re-trains: the first store picks that up
    assert store.get("ivf").index.lists == 8
    same(store)
    other.close()
    store.close()


def test_converting_flat_to_ivf_and_back_keeps_the_codes(tmp_path: Path, model: StoreModel, data) -> None:
    _, codes, q, z = data
    store = Store(tmp_path, model)
    fill(store, "c", codes[:1000], None)
    before, _ = store.get("c").search(z, q, 10, 0)
    col, created = store.create("c", index=IndexSpec(kind="ivf", lists=4))
    assert not created and col.info().index["trained"] and col.info().index["lists"] == 4
    col, _ = store.create("c", index=IndexSpec(kind="flat"))
    after, _ = col.search(z, q, 10, 0)
    assert [[h.id for h in r] for r in before] == [[h.id for h in r] for r in after]
    store.close()


def test_http_contract(make_client, data) -> None:
    items, _, q, _ = data
    client: TestClient = make_client()
    resp = client.put("/collections/p", json={"index": {"kind": "ivf", "lists": 8, "train_at": 256}})
    assert resp.status_code == 201, resp.text
    assert resp.json()["index"] == {"kind": "ivf", "lists": 1, "coarse": "kmeans", "train_at": 256, "trained": False,
                                    "default_probe": 1, "bytes": resp.json()["index"]["bytes"]}
    body = {"items": [{"id": f"d{i}", "embedding": r.tolist()} for i, r in enumerate(items[:300])]}
    assert client.post("/collections/p/items", json=body).status_code == 200
    info = client.get("/collections/p").json()["index"]
    assert info["trained"] and info["lists"] == 8 and info["default_probe"] == 8
    for probe in (1, 8, 100):
        resp = client.post("/collections/p/search", json={"embeddings": q[:3].tolist(), "k": 5, "probe": probe})
        assert resp.status_code == 200 and all(len(r) == 5 for r in resp.json()["results"]), resp.text
    assert client.post("/collections/p/search", json={"embeddings": q[:1].tolist(), "probe": 0}).status_code == 422
    resp = client.post("/collections/p/train", json={"lists": 4})
    assert resp.status_code == 200 and resp.json()["index"]["lists"] == 4
    assert client.put("/collections/p", json={"index": {"kind": "ivf", "lists": 1}}).status_code == 422
    assert client.put("/collections/p", json={"index": {"kind": "hnsw"}}).status_code == 422
    assert client.put("/collections/m", json={"index": {"kind": "ivf", "coarse": "imi", "lists": 8}}).status_code == 422
    resp = client.put("/collections/m", json={"index": {"kind": "ivf", "coarse": "imi"}})
    assert resp.status_code == 201 and resp.json()["index"]["trained"] and resp.json()["index"]["lists"] == 65_536
    assert client.post("/collections/m/items", json=body).status_code == 200
    hits = client.post("/collections/m/search", json={"embeddings": q[:2].tolist(), "k": 5}).json()["results"]
    assert all(len(r) == 5 for r in hits)
    assert client.put("/collections/f").status_code == 201
    assert client.post("/collections/f/train").status_code == 422
    assert client.post("/collections/nope/train").status_code == 404
    flat_ok = client.post("/collections/f/search", json={"embeddings": q[:1].tolist(), "probe": 3})
    assert flat_ok.status_code == 200  # flat collections scan everything, whatever the probe

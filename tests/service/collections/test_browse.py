"""Filtered search over HTTP, listing every item page by page (also while others write),
and bulk reads and deletes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.collections.filters import OPERATORS
from tests.service.collections.test_routes import FakeEmbedder
from tests.service.conftest import AppFactory, unit_rows

LANGS = ["en", "de", "fr"]


def meta(i: int) -> dict:
    return {"lang": LANGS[i % 3], "year": 2000 + i % 30, "tag": f"t{i % 10}", "tags": ["all", f"m{i % 4}"]}


@pytest.fixture
def filled(make_client: AppFactory) -> TestClient:
    client = make_client(embedder=FakeEmbedder())
    assert client.put("/collections/docs").status_code == 201
    body = {"items": [{"id": f"doc{i:03d}", "text": f"text number {i}", "metadata": meta(i)} for i in range(300)]}
    assert client.post("/collections/docs/items", json=body).status_code == 200
    return client


def search(client: TestClient, **body) -> list[list[dict]]:
    resp = client.post("/collections/docs/search", json={"texts": ["text number 7", "another query"], **body})
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def test_filters_return_exactly_the_best_matching_items(filled: TestClient) -> None:
    everything = search(filled, k=300, candidates=0)
    cases = {
        "tag": ({"tag": "t3"}, lambda m: m["tag"] == "t3"),
        "and": ({"lang": "de", "year": {"gte": 2020}}, lambda m: m["lang"] == "de" and m["year"] >= 2020),
        "in": ({"tag": {"in": ["t1", "t2"]}}, lambda m: m["tag"] in ("t1", "t2")),
        "ne": ({"lang": {"ne": "en"}}, lambda m: m["lang"] != "en"),
        "list": ({"tags": "m2"}, lambda m: "m2" in m["tags"]),
        "range": ({"year": {"gt": 2010, "lte": 2012}}, lambda m: 2010 < m["year"] <= 2012),
    }
    for name, (flt, pred) in cases.items():
        got = search(filled, k=10, candidates=0, filter=flt)
        for q in range(2):
            expected = [h for h in everything[q] if pred(h["metadata"])][:10]
            assert [h["id"] for h in got[q]] == [h["id"] for h in expected], name
            assert len(got[q]) == 10  # selective or not: k hits, since k items match
            assert all(h["text"] == f"text number {int(h['id'][3:])}" for h in got[q])
    # re-ranked, too: every hit matches and scores come best first
    for row in search(filled, k=8, candidates=50, filter={"tag": "t3"}):
        assert len(row) == 8 and all(h["metadata"]["tag"] == "t3" for h in row)
        assert [h["score"] for h in row] == sorted((h["score"] for h in row), reverse=True)


def test_filter_on_a_missing_key_is_422_and_on_a_missing_value_matches_nothing(filled: TestClient) -> None:
    resp = filled.post("/collections/docs/search", json={"texts": ["x"], "filter": {"nope": 1}})
    assert resp.status_code == 422 and "no item of this collection has metadata key 'nope'" in resp.json()["detail"]
    assert search(filled, filter={"lang": "xx"}) == [[], []]
    assert len(search(filled, filter={"nope": {"ne": 1}}, k=5)[0]) == 5  # ne also holds where the key is absent


def test_unknown_operator_is_422_listing_the_valid_ones(filled: TestClient) -> None:
    resp = filled.post("/collections/docs/search", json={"texts": ["x"], "filter": {"year": {"between": [1, 2]}}})
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert "unknown filter operator 'between'" in detail and all(op in detail for op in OPERATORS)
    for bad in [{"tag": {"in": "t1"}}, {"year": {"gte": [2020]}}, {"year": {}}, ["tag"]]:
        resp = filled.post("/collections/docs/search", json={"texts": ["x"], "filter": bad})
        assert resp.status_code == 422, bad


def test_score_threshold(filled: TestClient) -> None:
    full = search(filled, k=50, candidates=0)
    cut = full[0][9]["score"]
    got = search(filled, k=50, candidates=0, score_threshold=cut)
    assert [h["id"] for h in got[0]] == [h["id"] for h in full[0] if h["score"] >= cut]
    resp = filled.post("/collections/docs/search", json={"texts": ["x"], "score_threshold": "high"})
    assert resp.status_code == 422


def test_hits_carry_text_only_where_stored(make_client: AppFactory) -> None:
    client = make_client()
    client.put("/collections/v")
    x = unit_rows(3, seed=1)
    client.post("/collections/v/items", json={"items": [{"id": f"e{i}", "embedding": r.tolist()}
                                                        for i, r in enumerate(x)]})
    hits = client.post("/collections/v/search", json={"embeddings": x[:1].tolist(), "k": 3}).json()["results"][0]
    assert len(hits) == 3 and all(h["text"] is None for h in hits)


# ---- listing ------------------------------------------------------------------------------------


def list_all(client: TestClient, limit: int) -> list[dict]:
    out, cursor = [], None
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        resp = client.get("/collections/docs/items", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert len(page["items"]) <= limit
        out += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def test_listing_visits_every_item_once_in_id_order(filled: TestClient) -> None:
    items = list_all(filled, limit=7)
    assert [i["id"] for i in items] == [f"doc{i:03d}" for i in range(300)]
    first = items[5]
    assert first == filled.get("/collections/docs/items/doc005").json()
    assert set(first) == {"id", "text", "metadata", "codes"} and len(first["codes"]) == 4
    # an exact multiple of the page size ends with next_cursor null, not an empty page
    page = filled.get("/collections/docs/items", params={"limit": 300}).json()
    assert len(page["items"]) == 300 and page["next_cursor"] is None


def test_listing_is_stable_under_concurrent_writes(filled: TestClient) -> None:
    """Items that stay in the collection are each seen exactly once, whatever is written
    (and deleted) meanwhile; the writer works on other ids only."""
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            ids = [f"new{n}-{j}" for j in range(20)]
            r = filled.post("/collections/docs/items", json={"items": [{"id": i, "text": i} for i in ids]})
            if r.status_code != 200:
                errors.append(r.text)
            filled.post("/collections/docs/items/delete", json={"ids": ids[:10]})
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        items = list_all(filled, limit=9)
    finally:
        stop.set()
        thread.join()
    assert not errors
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids))  # nothing twice
    assert [i for i in ids if i.startswith("doc")] == [f"doc{i:03d}" for i in range(300)]  # every stable item
    assert ids == sorted(ids)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"cursor": "!!!"}, {"limit": "x"}])
def test_bad_listing_parameters_are_422(filled: TestClient, params: dict) -> None:
    resp = filled.get("/collections/docs/items", params=params)
    assert resp.status_code == 422, resp.text


def test_listing_an_unknown_collection_is_404(filled: TestClient) -> None:
    assert filled.get("/collections/nope/items").status_code == 404
    assert filled.post("/collections/nope/items/get", json={"ids": ["a"]}).status_code == 404


# ---- bulk reads and deletes ---------------------------------------------------------------------


def test_get_many_in_request_order_with_missing(filled: TestClient) -> None:
    resp = filled.post("/collections/docs/items/get", json={"ids": ["doc010", "zzz", "doc002", "doc010"]})
    assert resp.status_code == 200
    body = resp.json()
    assert [i["id"] for i in body["items"]] == ["doc010", "doc002"] and body["missing"] == ["zzz"]
    assert body["items"][0] == filled.get("/collections/docs/items/doc010").json()


def test_delete_many(filled: TestClient) -> None:
    resp = filled.post("/collections/docs/items/delete", json={"ids": ["doc001", "doc002", "nope"]})
    assert resp.json() == {"deleted": ["doc001", "doc002"], "missing": ["nope"], "deleted_count": 2}
    assert filled.get("/collections/docs").json()["count"] == 298
    hits = search(filled, k=300, candidates=0)
    assert not {"doc001", "doc002"} & {h["id"] for h in hits[0]}
    # filters know about the deletes (and replacements) too
    assert all(h["id"] not in ("doc001",) for h in search(filled, k=300, filter={"tag": "t1"})[0])
    filled.post("/collections/docs/items", json={"items": [{"id": "doc011", "text": "x", "metadata": {"tag": "t5"}}]})
    assert "doc011" in {h["id"] for h in search(filled, k=300, filter={"tag": "t5"})[0]}
    assert "doc011" not in {h["id"] for h in search(filled, k=300, filter={"tag": "t1"})[0]}


@pytest.mark.parametrize("body", [{"ids": []}, {}, {"ids": "a"}, {"ids": ["a"], "x": 1}])
def test_bad_bulk_bodies_are_422(filled: TestClient, body: dict) -> None:
    for path in ("/collections/docs/items/get", "/collections/docs/items/delete"):
        assert filled.post(path, json=body).status_code == 422


def test_bulk_requests_over_the_batch_limit_are_413(make_client: AppFactory) -> None:
    client = make_client(max_batch=3)
    client.put("/collections/docs")
    for path in ("/collections/docs/items/get", "/collections/docs/items/delete"):
        assert client.post(path, json={"ids": list("abcd")}).status_code == 413


def test_filter_columns_survive_many_writes(filled: TestClient) -> None:
    """Grow the collection past the columns' first capacity and delete from its middle."""
    search(filled, filter={"year": {"gte": 2025}})  # columns built now, then maintained
    rng = np.random.default_rng(0)
    body = {"items": [{"id": f"x{i}", "text": "t", "metadata": {"year": int(rng.integers(1990, 2030))}}
                      for i in range(1500)]}
    assert filled.post("/collections/docs/items", json=body).status_code == 200
    filled.post("/collections/docs/items/delete", json={"ids": [f"doc{i:03d}" for i in range(0, 300, 2)]})
    hits = search(filled, k=1000, candidates=0, filter={"year": {"gte": 2025}})[0]
    expected = sum(1 for it in body["items"] if it["metadata"]["year"] >= 2025)
    expected += sum(1 for i in range(1, 300, 2) if meta(i)["year"] >= 2025)
    assert len(hits) == expected and all(h["metadata"]["year"] >= 2025 for h in hits)

"""Filters beyond search (issue 25.3): a filtered listing, count and delete, in the collection
(both routes of a filtered page, flat and IVF deletes, reopened from the file) and over HTTP
(``GET .../items?filter=``, ``GET .../count``, ``POST .../items/delete`` with ``filter``)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.collections.collection import Collection
from service.collections.filters import parse_filter
from service.collections.partitions import IndexSpec
from service.collections.store import Store
from tests.service.collections.test_filters import random_filter, random_meta, reference
from tests.service.collections.test_routes import FakeEmbedder
from tests.service.collections.test_store import fake_model, latent_of, unique_codes
from tests.service.conftest import AppFactory, unit_rows

# ---- in the collection ---------------------------------------------------------------------------


def filled(tmp_path: Path, n: int, metas: list[dict | None], index: IndexSpec | None = None) -> tuple[Store, Any]:
    store = Store(tmp_path, fake_model())
    col, _ = store.create("c", index=index)
    ids = [f"i{i:04d}" for i in range(n)]
    order = random.Random(5).sample(range(n), n)  # slots in another order than ids
    col.upsert([ids[i] for i in order], unique_codes(n, seed=1)[order], [metas[i] for i in order])
    return store, col


def listed(col: Any, limit: int, raw: dict | None) -> list[str]:
    """Every page of a (filtered) listing, walked through its cursors; each page's size checked."""
    flt = parse_filter(raw) if raw is not None else None
    out: list[str] = []
    after = None
    while True:
        items, after = col.page(limit, after, flt)
        assert len(items) <= limit and (after is None or len(items) == limit)
        out += [it.id for it in items]
        if after is None:
            return out


def expected(metas: list[dict | None], raw: dict) -> list[str]:
    return sorted(f"i{i:04d}" for i in reference(metas, raw))


def test_filtered_pages_and_counts_match_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(0)
    n = 300
    metas = [random_meta(rng) for _ in range(n)]
    store, col = filled(tmp_path, n, metas)
    calls = {"page": 0, "walk": 0}
    page, walk = Collection._filtered_page, Collection._walk_ids

    def spy(name: str, fn: Any) -> Any:
        return lambda self, *a: calls.__setitem__(name, calls[name] + 1) or fn(self, *a)

    monkeypatch.setattr(Collection, "_filtered_page", spy("page", page))
    monkeypatch.setattr(Collection, "_walk_ids", spy("walk", walk))
    for _ in range(60):
        raw = random_filter(rng)
        want = expected(metas, raw)
        for limit in (1, 7, 1000):
            assert listed(col, limit, raw) == want, (raw, limit)
        assert col.count(parse_filter(raw)) == len(want), raw
    # both routes of a filtered page (walking the ids, sorting the matches) were taken
    assert 0 < calls["walk"] < calls["page"]
    assert col.count() == n and col.count(None) == n
    assert listed(col, 50, None) == sorted(f"i{i:04d}" for i in range(n))
    assert col.page(10, None, parse_filter({"lang": "no such value"})) == ([], None)
    store.close()


def test_a_filtered_page_continues_after_its_cursor(tmp_path: Path) -> None:
    metas: list[dict | None] = [{"odd": i % 2 == 1, "n": i} for i in range(40)]
    store, col = filled(tmp_path, 40, metas)
    for raw in ({"odd": True}, {"n": {"in": [3, 5, 7, 9, 11]}}):  # many matches (walk) and few (sorted)
        flt = parse_filter(raw)
        first, after = col.page(2, None, flt)
        assert after == first[-1].id
        rest, _ = col.page(100, after, flt)
        assert [it.id for it in first + rest] == expected(metas, raw)
        assert all(it.id > after for it in rest)
        item = first[0]
        assert item.metadata == metas[int(item.id[1:])] and len(item.codes) == 4
    store.close()


@pytest.mark.parametrize("index", [None, IndexSpec(kind="ivf", lists=4, train_at=256)], ids=["flat", "ivf"])
def test_delete_matching_leaves_the_rest_and_everything_agrees(tmp_path: Path, index: IndexSpec | None) -> None:
    rng = random.Random(3)
    n = 400
    metas = [{"lang": rng.choice(["en", "de", "fr"]), "year": rng.randrange(2000, 2025)} for _ in range(n)]
    store, col = filled(tmp_path, n, metas, index)
    if index is not None:
        assert col.info().index["trained"]
    codes = {it.id: np.asarray(it.codes, np.uint8) for it in col.page(1000)[0]}
    by_year = parse_filter({"year": {"gte": 2020}})
    col.prepare_filter(by_year)  # a column built before the delete must follow it
    raw = {"lang": "de", "year": {"lt": 2012}}
    gone = set(expected(metas, raw))
    assert gone and col.delete_matching(parse_filter(raw)) == len(gone)
    assert col.delete_matching(parse_filter(raw)) == 0  # nothing matches any more
    left = sorted(set(codes) - gone)

    def agrees(c: Any) -> None:
        assert len(c) == len(left) and c.count() == len(left)
        assert listed(c, 64, None) == left
        assert c.count(parse_filter(raw)) == 0 and listed(c, 10, raw) == []
        assert listed(c, 9, {"year": {"gte": 2020}}) == [i for i in left if metas[int(i[1:])]["year"] >= 2020]
        for item_id in [*sorted(gone)[:5], *left[:5]]:
            z = latent_of(c.model, codes[item_id][None])
            (hits,), _ = c.search(z, None, 3, 0, probe=4)
            assert (hits[0].id == item_id) == (item_id not in gone)  # a deleted item is never found
            assert all(h.id not in gone for h in hits)
        assert not {it.id for it in c.get_many(sorted(gone)).values()}

    agrees(col)
    store.close()
    again = Store(tmp_path, fake_model())  # durable: a fresh process rebuilds the same from the file
    agrees(again.get("c"))
    again.close()


def test_delete_matching_judges_the_filter_again_after_another_process_wrote(tmp_path: Path) -> None:
    """Another connection writes between the mask and the delete's transaction: the slots the mask
    named are stale, so the filter is judged again on the reloaded collection."""
    metas: list[dict | None] = [{"k": i % 3} for i in range(30)]
    store, col = filled(tmp_path, 30, metas)
    other = Store(tmp_path, fake_model())  # another process's connection
    mask = col.columns.mask
    masks = []

    def mask_then_other_writes(flt: Any, conn: Any) -> np.ndarray:
        out = mask(flt, conn)
        if not masks:
            other.get("c").upsert(["x1", "x2", "x3"], unique_codes(3, seed=9), [{"k": 0}, {"k": 1}, {"k": 0}])
            other.get("c").delete(["i0003", "i0001"])  # moves the last slots into theirs
        masks.append(out)
        return out

    col.columns.mask = mask_then_other_writes
    assert col.delete_matching(parse_filter({"k": 0})) == 10 - 1 + 2
    assert len(masks) == 2
    assert listed(col, 100, None) == sorted([f"i{i:04d}" for i in range(30) if i % 3 != 0 and i != 1] + ["x2"])
    other.close()
    store.close()


# ---- over HTTP -------------------------------------------------------------------------------------


@pytest.fixture
def docs(make_client: AppFactory) -> TestClient:
    """A collection of 60 items: lang en/de/fr by i % 3, year 2000 + i % 25, a tag list."""
    client = make_client(embedder=FakeEmbedder())
    assert client.put("/collections/docs").status_code == 201
    x = unit_rows(60, seed=4)
    items = [{"id": f"d{i:02d}", "embedding": x[i].tolist(),
              "metadata": {"lang": ["en", "de", "fr"][i % 3], "year": 2000 + i % 25, "tags": ["a", f"t{i % 4}"]}}
             for i in range(60)]
    assert client.post("/collections/docs/items", json={"items": items}).status_code == 200
    return client


def ids_where(pred: Any) -> list[str]:
    return [f"d{i:02d}" for i in range(60) if pred(i)]


def walk(client: TestClient, raw: dict | None, limit: int) -> list[str]:
    out, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if raw is not None:
            params["filter"] = json.dumps(raw)
        if cursor:
            params["cursor"] = cursor
        resp = client.get("/collections/docs/items", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        out += [it["id"] for it in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            return out


def test_listing_and_count_with_a_filter(docs: TestClient) -> None:
    en = ids_where(lambda i: i % 3 == 0)
    assert walk(docs, {"lang": "en"}, 4) == en
    assert walk(docs, {"lang": "en", "year": {"gte": 2020}}, 100) == ids_where(lambda i: i % 3 == 0 and i % 25 >= 20)
    assert walk(docs, {"tags": "t1"}, 3) == ids_where(lambda i: i % 4 == 1)
    assert walk(docs, None, 7) == ids_where(lambda i: True)
    first = docs.get("/collections/docs/items", params={"limit": 2, "filter": '{"lang": "de"}'}).json()
    assert [it["id"] for it in first["items"]] == ["d01", "d04"]
    assert first["items"][0]["metadata"]["lang"] == "de" and len(first["items"][0]["codes"]) == 4

    assert docs.get("/collections/docs/count").json() == {"collection": "docs", "count": 60}
    got = docs.get("/collections/docs/count", params={"filter": json.dumps({"lang": {"in": ["en", "fr"]}})})
    assert got.json() == {"collection": "docs", "count": 40}
    assert docs.get("/collections/docs/count", params={"filter": '{"lang": "xx"}'}).json()["count"] == 0
    assert docs.get("/collections/docs/count", params={"filter": "{}"}).json()["count"] == 60
    assert docs.get("/collections/nope/count").status_code == 404


@pytest.mark.parametrize("path", ["/collections/docs/items", "/collections/docs/count"])
@pytest.mark.parametrize(("raw", "message"), [
    ("{lang: en}", "filter is not valid JSON"),
    ('{"lang": "en"', "filter is not valid JSON"),
    ('["lang"]', "filter must be a JSON object"),
    ('"en"', "filter must be a JSON object"),
    ('{"lang": {"like": "e%"}}', "unknown filter operator 'like'"),
])
def test_a_bad_filter_query_is_a_422_that_says_why(docs: TestClient, path: str, raw: str, message: str) -> None:
    resp = docs.get(path, params={"filter": raw})
    assert resp.status_code == 422, resp.text
    assert message in str(resp.json()["detail"])


def test_delete_by_filter_then_listing_count_and_search_agree(docs: TestClient) -> None:
    raw = {"lang": "de", "year": {"lt": 2010}}
    gone = ids_where(lambda i: i % 3 == 1 and i % 25 < 10)
    x = unit_rows(60, seed=4)
    hits = docs.post("/collections/docs/search", json={"embeddings": x[:1].tolist(), "k": 60, "filter": {"lang": "de"},
                                                        "candidates": 0}).json()["results"][0]
    assert len(hits) == 20  # the lang column exists before the delete, and must follow it
    resp = docs.post("/collections/docs/items/delete", json={"filter": raw})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"deleted": None, "missing": None, "deleted_count": len(gone)}
    left = [i for i in ids_where(lambda i: True) if i not in gone]
    assert walk(docs, None, 11) == left
    assert docs.get("/collections/docs/count").json()["count"] == 60 - len(gone)
    assert docs.get("/collections/docs").json()["count"] == 60 - len(gone)
    assert walk(docs, raw, 5) == [] and docs.get("/collections/docs/count", params={"filter": json.dumps(raw)}
                                                 ).json()["count"] == 0
    assert walk(docs, {"lang": "de"}, 5) == [i for i in left if int(i[1:]) % 3 == 1]
    for i in (int(gone[0][1:]), 0):
        resp = docs.post("/collections/docs/search", json={"embeddings": x[i : i + 1].tolist(), "k": 60,
                                                            "candidates": 0})
        found = [h["id"] for h in resp.json()["results"][0]]
        assert not set(found) & set(gone) and len(found) == len(left)
    hits = docs.post("/collections/docs/search", json={"embeddings": x[:1].tolist(), "k": 60, "filter": {"lang": "de"},
                                                        "candidates": 0}).json()["results"][0]
    assert sorted(h["id"] for h in hits) == [i for i in left if int(i[1:]) % 3 == 1]
    assert docs.get(f"/collections/docs/items/{gone[0]}").status_code == 404
    again = docs.post("/collections/docs/items/delete", json={"filter": raw})
    assert again.json()["deleted_count"] == 0


def test_delete_by_ids_keeps_its_answer_and_adds_the_count(docs: TestClient) -> None:
    resp = docs.post("/collections/docs/items/delete", json={"ids": ["d01", "nope", "d02"]})
    assert resp.json() == {"deleted": ["d01", "d02"], "missing": ["nope"], "deleted_count": 2}


@pytest.mark.parametrize(("body", "message"), [
    ({"ids": ["d01"], "filter": {"lang": "en"}}, "exactly one of 'ids' or 'filter'"),
    ({}, "exactly one of 'ids' or 'filter'"),
    ({"filter": None}, "exactly one of 'ids' or 'filter'"),
    ({"filter": {}}, "matches every item"),
    ({"filter": {"lang": {"like": "e"}}}, "unknown filter operator"),
    ({"filter": ["lang"]}, "valid dictionary"),
    ({"ids": []}, "at least 1 item"),
])
def test_bad_delete_bodies_are_422_and_delete_nothing(docs: TestClient, body: dict, message: str) -> None:
    resp = docs.post("/collections/docs/items/delete", json=body)
    assert resp.status_code == 422, resp.text
    assert message in json.dumps(resp.json()["detail"])
    assert docs.get("/collections/docs/count").json()["count"] == 60


# ---- $and / $or / $not and the refused mistakes, the same on every route (issue 25.3) --------------

LOGICAL = [
    ({"$or": [{"lang": "en"}, {"year": {"gte": 2020}}]}, lambda i: i % 3 == 0 or i % 25 >= 20),
    ({"$not": {"lang": "en"}}, lambda i: i % 3 != 0),
    ({"$and": [{"tags": "t1"}, {"$not": {"year": {"lt": 2010}}}]}, lambda i: i % 4 == 1 and i % 25 >= 10),
    ({"lang": "de", "$or": [{"$not": {"tags": {"in": ["t0", "t1"]}}}, {"year": 2001}]},
     lambda i: i % 3 == 1 and (i % 4 >= 2 or i % 25 == 1)),
    ({"$not": {"archived": True}}, lambda i: True),  # a key no item holds yet, in a condition meaning every item
]


@pytest.mark.parametrize(("raw", "pred"), LOGICAL)
def test_logical_filters_list_count_search_and_delete_alike(docs: TestClient, raw: dict, pred: Any) -> None:
    want = ids_where(pred)
    assert walk(docs, raw, 7) == want
    assert docs.get("/collections/docs/count", params={"filter": json.dumps(raw)}).json()["count"] == len(want)
    x = unit_rows(60, seed=4)
    resp = docs.post("/collections/docs/search", json={"embeddings": x[:1].tolist(), "k": 60, "filter": raw,
                                                        "candidates": 0})
    assert resp.status_code == 200, resp.text
    assert sorted(h["id"] for h in resp.json()["results"][0]) == want
    resp = docs.post("/collections/docs/items/delete", json={"filter": raw})
    assert resp.status_code == 200 and resp.json()["deleted_count"] == len(want)
    assert walk(docs, None, 100) == [i for i in ids_where(lambda i: True) if i not in want]


@pytest.mark.parametrize(("raw", "message"), [
    ({"lang": "en", "$nor": [{"lang": "de"}]}, "unknown filter operator '$nor' in filter; the operators "
                                               "combining filters are $and, $or, $not"),
    ({"$where": "this.lang == 'en'"}, "unknown filter operator '$where'"),
    ({"$and": [{"$or": [{"$and": [{"$or": [{"$and": [{"$or": [{"$and": [{"$or": [{"$not": {"lang": "en"}}]}]}]}]}]}]}]}]
      }, "more than 8 deep (at filter.$and[0].$or[0].$and[0].$or[0].$and[0].$or[0].$and[0].$or[0].$not)"),
    ({"year": {"gte": "2020"}}, "'year' holds numbers, no strings; 'gte' got the string \"2020\""),
    ({"$or": [{"lang": "en"}, {"lang": {"gt": 3}}]}, "'lang' holds strings, no numbers; 'gt' got the number 3"),
    ({"yaer": {"gte": 2020}}, "no item of this collection has metadata key 'yaer', so filter['yaer'] can match "
                              "nothing; did you mean 'year'?; keys the items hold: 'lang', 'tags', 'year'"),
])
def test_a_refused_filter_is_the_same_422_on_every_route(docs: TestClient, raw: dict, message: str) -> None:
    x = unit_rows(60, seed=4)
    answers = [
        docs.get("/collections/docs/items", params={"filter": json.dumps(raw)}),
        docs.get("/collections/docs/count", params={"filter": json.dumps(raw)}),
        docs.post("/collections/docs/search", json={"embeddings": x[:1].tolist(), "k": 5, "filter": raw}),
        docs.post("/collections/docs/search", json={"texts": ["hello"], "k": 5, "filter": raw}),
        docs.post("/collections/docs/items/delete", json={"filter": raw}),
    ]
    for resp in answers:
        assert resp.status_code == 422, resp.text
        assert message in str(resp.json()["detail"]), resp.json()
    assert docs.get("/collections/docs/count").json()["count"] == 60  # the delete deleted nothing


def test_an_empty_collection_matches_nothing_without_an_error(make_client: AppFactory) -> None:
    client = make_client(embedder=FakeEmbedder())
    assert client.put("/collections/empty").status_code == 201
    raw = json.dumps({"yaer": {"gte": "2020"}})
    assert client.get("/collections/empty/count", params={"filter": raw}).json()["count"] == 0
    assert client.get("/collections/empty/items", params={"filter": raw}).json()["items"] == []

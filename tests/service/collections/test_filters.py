"""Metadata filters: the parser's errors, the in-memory columns against a plain-Python reference
(through upserts, replacements, deletes and reloads), and filtered search returning exactly the
best k matching items, in score order."""

from __future__ import annotations

import json
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.collections.binding import StoreModel
from service.collections.errors import InvalidFilter
from service.collections.filters import OPERATORS, MetadataColumns, parse_filter
from service.collections.store import Store
from tests.service.collections.test_store import fake_model, latent_of, unique_codes

# ---- the reference: filter semantics spelled out in plain Python ------------------------------


def json_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) or isinstance(b, int | float):
        return isinstance(a, int | float) and isinstance(b, int | float) and a == b
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(json_eq, a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(json_eq(a[k], b[k]) for k in a))
    return type(a) is type(b) and a == b


def holds(meta: dict | None, key: str, op: str, value: Any) -> bool:
    if op == "ne":
        return not holds(meta, key, "eq", value)
    if meta is None or key not in meta:
        return False
    stored = meta[key]
    cands = [stored, *stored] if isinstance(stored, list) else [stored]
    if op == "eq":
        return any(json_eq(c, value) for c in cands)
    if op == "in":
        return any(json_eq(c, v) for c in cands for v in value)

    def comparable(c: Any) -> bool:
        if isinstance(value, str):
            return isinstance(c, str)
        return isinstance(c, int | float) and not isinstance(c, bool)

    cmp = {"gt": lambda a: a > value, "gte": lambda a: a >= value,
           "lt": lambda a: a < value, "lte": lambda a: a <= value}[op]
    return any(comparable(c) and cmp(c) for c in cands)


def reference(metas: list[dict | None], raw: dict) -> set[int]:
    conds = []
    for key, spec in raw.items():
        if isinstance(spec, dict):
            conds += [(key, op, v) for op, v in spec.items()]
        else:
            conds.append((key, "eq", spec))
    return {i for i, m in enumerate(metas) if all(holds(m, *c) for c in conds)}


VALUES = ["en", "de", "fr", "", "É", 0, 1, 1.0, 2, -3, 2.5, 2020, 2021, True, False, None,
          ["a", "b"], ["b"], [1, 2], [], {"x": 1}, {"x": [1]}, "2020-01-01", "2021-06-30"]
KEYS = ["lang", "year", "tags", "a.b", 'q"uote', "x"]


def random_meta(rng: random.Random) -> dict | None:
    if rng.random() < 0.1:
        return None
    return {k: rng.choice(VALUES) for k in KEYS if rng.random() < 0.6}


def random_filter(rng: random.Random) -> dict:
    out: dict[str, Any] = {}
    for key in rng.sample(KEYS, rng.randint(1, 2)):
        op = rng.choice(OPERATORS)
        if op == "in":
            out[key] = {"in": rng.sample(VALUES, rng.randint(0, 4))}
        elif op in ("gt", "gte", "lt", "lte"):
            out[key] = {op: rng.choice([0, 1, 2, 2020, 2.5, -1, "b", "de", "2020-06-01", ""])}
        elif op == "eq" and rng.random() < 0.5:
            value = rng.choice(VALUES)
            out[key] = {"eq": value} if isinstance(value, dict) else value
        else:
            out[key] = {op: rng.choice(VALUES)}
    return out


# ---- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "message"), [
    ({"lang": {"like": "e%"}}, "unknown filter operator 'like' for key 'lang'; valid operators: eq, ne, in, gt"),
    ({"tag": {"in": "a"}}, "filter['tag'].in needs a list"),
    ({"year": {"gte": True}}, "needs a number or a string"),
    ({"year": {"lt": [1]}}, "needs a number or a string"),
    ({"year": {"gt": None}}, "needs a number or a string"),
    ({"year": {}}, "empty object"),
    ([1, 2], "filter must be a JSON object"),
    ({"year": {"gte": math.nan}}, "finite"),
])
def test_bad_filters_say_what_to_fix(raw: Any, message: str) -> None:
    with pytest.raises(InvalidFilter, match=None) as err:
        parse_filter(raw)
    assert message in str(err.value)


def test_empty_filters_match_everything() -> None:
    assert parse_filter(None) is None and parse_filter({}) is None
    flt = parse_filter({"lang": "en", "year": {"gte": 2020, "lt": 2024}})
    assert flt is not None and [(c.key, c.op) for c in flt.conditions] == [("lang", "eq"), ("year", "gte"),
                                                                            ("year", "lt")]


# ---- columns against the reference --------------------------------------------------------------


def columns_for(metas: list[dict | None]) -> tuple[MetadataColumns, sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE items (slot INTEGER PRIMARY KEY, metadata TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)",
                     [(i, None if m is None else json.dumps(m)) for i, m in enumerate(metas)])
    cols = MetadataColumns()
    cols.reset(len(metas))
    return cols, conn


def test_columns_match_the_reference_on_random_metadata_and_filters() -> None:
    rng = random.Random(0)
    metas = [random_meta(rng) for _ in range(400)]
    cols, conn = columns_for(metas)
    for _ in range(400):
        raw = random_filter(rng)
        flt = parse_filter(raw)
        assert flt is not None
        got = set(cols.rows(flt, conn).tolist())
        assert got == reference(metas, raw), raw


def test_many_distinct_values_take_the_vectorised_routes() -> None:
    """Above a few matching values the mask is gathered (and numbers compared per row):
    the results must not change with the route."""
    rng = random.Random(1)
    metas: list[dict | None] = [{"ts": i, "w": f"w{i % 50}", "v": rng.choice([i, f"s{i}", [i, i + 1]])}
                                for i in range(3000)]
    cols, conn = columns_for(metas)
    for raw in [{"ts": {"gte": 100, "lt": 2500}}, {"w": {"in": [f"w{i}" for i in range(30)]}},
                {"w": {"ne": "w3"}}, {"w": {"gte": "w2"}}, {"v": {"gt": 1500}}, {"v": {"lte": "s2"}},
                {"ts": {"ne": 7}}, {"v": {"in": list(range(0, 3000, 7))}}]:
        flt = parse_filter(raw)
        assert flt is not None
        assert set(cols.rows(flt, conn).tolist()) == reference(metas, raw), raw


def test_columns_follow_upserts_deletes_and_reloads(tmp_path: Path) -> None:
    """Columns built before writes must agree with ones built from the file afterwards."""
    rng = random.Random(2)
    model = fake_model()
    store = Store(tmp_path, model)
    col, _ = store.create("c")
    truth: dict[str, dict | None] = {}
    n = 0
    filters = [random_filter(rng) for _ in range(40)]

    def check() -> None:
        slots = dict(col.conn.execute("SELECT id, slot FROM items"))
        by_slot = [None] * len(slots)
        for item_id, slot in slots.items():
            by_slot[slot] = truth[item_id]
        for raw in filters:
            flt = parse_filter(raw)
            assert flt is not None
            with col._lock:
                got = set(col.columns.rows(flt, col.conn).tolist())
            assert got == reference(by_slot, raw), raw

    for step in range(12):
        ids = [f"i{rng.randrange(400)}" for _ in range(60)]
        ids = list(dict.fromkeys(ids))
        metas = [random_meta(rng) for _ in ids]
        col.upsert(ids, unique_codes(len(ids), seed=step), metas)
        truth.update(zip(ids, metas, strict=True))
        n += 1
        gone = col.delete(rng.sample(sorted(truth), 15))
        for item_id in gone:
            del truth[item_id]
        check()  # the columns built at the first check were kept up to date since
    col._reload()  # a reload drops them: they are built again from the file
    check()
    store.close()


# ---- filtered search ----------------------------------------------------------------------------


def test_filtered_search_returns_the_best_k_matching_items_in_order(tmp_path: Path) -> None:
    """A selective filter still yields k hits (it runs before the scan), and they are exactly
    the top k of an unfiltered search restricted to the matching items."""
    model: StoreModel = fake_model()
    store = Store(tmp_path, model)
    col, _ = store.create("c")
    n = 5000
    codes = unique_codes(n, seed=3)
    metas = [{"lang": ["en", "de", "fr", "es", "it"][i % 5], "year": 1990 + i % 40, "tag": f"t{i % 250}"}
             for i in range(n)]
    col.upsert([f"d{i}" for i in range(n)], codes, metas, texts=[f"text {i}" for i in range(n)])
    z = latent_of(model, codes[:3]) + 0.1
    full, metric = col.search(z, None, k=n, candidates=0)
    for raw in [{"tag": "t7"}, {"lang": "de", "year": {"gte": 2020}}, {"tag": {"in": ["t1", "t2"]}},
                {"lang": {"ne": "en"}}]:
        flt = parse_filter(raw)
        keep = reference(metas, raw)
        hits, _ = col.search(z, None, k=10, candidates=0, flt=flt)
        for q in range(3):
            expected = [h for h in full[q] if int(h.id[1:]) in keep][:10]
            assert len(hits[q]) == min(10, len(keep))
            assert [h.id for h in hits[q]] == [h.id for h in expected]
            assert all(h.text == f"text {h.id[1:]}" for h in hits[q])
    # no match: no hits; re-ranking keeps the filter too
    hits, _ = col.search(z, None, k=10, candidates=0, flt=parse_filter({"tag": "none"}))
    assert hits == [[], [], []]
    q = np.random.default_rng(0).standard_normal((1, 12)).astype(np.float32)
    hits, metric = col.search(z[:1], q, k=5, candidates=50, flt=parse_filter({"tag": "t9"}))
    assert metric == "cosine" and len(hits[0]) == 5 and all(h.metadata["tag"] == "t9" for h in hits[0])
    store.close()


def test_score_threshold_leaves_out_low_scores(tmp_path: Path) -> None:
    model = fake_model()
    store = Store(tmp_path, model)
    col, _ = store.create("c")
    codes = unique_codes(300, seed=4)
    col.upsert([f"d{i}" for i in range(300)], codes)
    z = latent_of(model, codes[:1])
    full, _ = col.search(z, None, k=50, candidates=0)
    cut = full[0][20].score
    hits, _ = col.search(z, None, k=50, candidates=0, score_threshold=cut)
    assert [h.id for h in hits[0]] == [h.id for h in full[0] if h.score >= cut]
    assert 20 <= len(hits[0]) < 50
    store.close()


def test_vocabulary_growth_of_mixed_types_and_huge_numbers() -> None:
    """Many strings before the first number, integers beyond float range, and values added
    by upserts after the column was built."""
    metas: list[dict | None] = [{"v": f"s{i}"} for i in range(300)] + [{"v": 7}, {"v": 10**400}, {"v": -(10**400)}]
    cols, conn = columns_for(metas)
    for raw in [{"v": {"gt": 5}}, {"v": {"lt": 0}}, {"v": 10**400}, {"v": {"gte": "s5"}}, {"v": {"ne": 7}}]:
        flt = parse_filter(raw)
        assert flt is not None
        assert set(cols.rows(flt, conn).tolist()) == reference(metas, raw), raw
    added = [{"v": 3.5}, {"v": [1, 100]}, None, {"v": True}]
    cols.add([json.dumps(m) if m is not None else None for m in added])
    metas += added
    for raw in [{"v": {"gt": 5}}, {"v": {"lte": 3.5}}, {"v": True}, {"v": 1}, {"v": {"ne": 100}}]:
        flt = parse_filter(raw)
        assert flt is not None
        assert set(cols.rows(flt, conn).tolist()) == reference(metas, raw), raw

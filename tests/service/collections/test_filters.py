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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.collections.binding import StoreModel
from service.collections.errors import InvalidFilter
from service.collections.filters import MAX_CONDITIONS, MAX_DEPTH, OPERATORS, MetadataColumns, parse_filter
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


def matches(meta: dict | None, raw: dict) -> bool:
    """Does ``raw`` (with ``$and`` / ``$or`` / ``$not``, nested) match an item's metadata?"""
    for key, spec in raw.items():
        if key == "$and":
            ok = all(matches(meta, sub) for sub in spec)
        elif key == "$or":
            ok = any(matches(meta, sub) for sub in spec)
        elif key == "$not":
            ok = not matches(meta, spec)
        elif isinstance(spec, dict):
            ok = all(holds(meta, key, op, v) for op, v in spec.items())
        else:
            ok = holds(meta, key, "eq", spec)
        if not ok:
            return False
    return True


def reference(metas: list[dict | None], raw: dict) -> set[int]:
    return {i for i, m in enumerate(metas) if matches(m, raw)}


def leaves(raw: dict, negated: bool = False) -> list[tuple[str, str, Any, bool]]:
    """Every (key, op, value, under an odd number of $not) of a filter."""
    out = []
    for key, spec in raw.items():
        if key in ("$and", "$or"):
            out += [leaf for sub in spec for leaf in leaves(sub, negated)]
        elif key == "$not":
            out += leaves(spec, not negated)
        elif isinstance(spec, dict):
            out += [(key, op, v, negated) for op, v in spec.items()]
        else:
            out.append((key, "eq", spec, negated))
    return out


def depth(raw: Any) -> int:
    """How deep $and / $or / $not nest in a filter."""
    if not isinstance(raw, dict):
        return 0
    subs = [s for k, v in raw.items() if k in ("$and", "$or") for s in v] + ([raw["$not"]] if "$not" in raw else [])
    return max((1 + depth(s) for s in subs), default=0)


def refused(metas: list[dict | None], raw: dict) -> bool:
    """Whether the filter is a 422 on these items (docs/collections.md, Filters): a condition only
    items with its key can meet, on a key no item holds; a range bound of a type the key lacks."""
    if not metas:  # an empty collection matches nothing, without an error
        return False
    values: dict[str, list[Any]] = {}
    for m in metas:
        for k, v in (m or {}).items():
            values.setdefault(k, []).extend([v, *v] if isinstance(v, list) else [v])
    for key, op, value, negated in leaves(raw):
        if (op == "ne") == negated and key not in values:
            return True
        if op in ("gt", "gte", "lt", "lte") and values.get(key):
            want = str if isinstance(value, str) else (int, float)
            if not any(isinstance(v, want) and not isinstance(v, bool) for v in values[key]):
                return True
    return False


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


# ---- $and / $or / $not, and the mistakes refused (issue 25.3) ------------------------------------

RANGE_BOUNDS = [0, 1, 2, 2020, 2.5, -1, "b", "de", "2020-06-01", ""]


@st.composite
def conditions(draw: st.DrawFn) -> dict:
    key = draw(st.sampled_from(KEYS))
    op = draw(st.sampled_from(OPERATORS))
    if op == "in":
        return {key: {"in": draw(st.lists(st.sampled_from(VALUES), max_size=3))}}
    if op in ("gt", "gte", "lt", "lte"):
        return {key: {op: draw(st.sampled_from(RANGE_BOUNDS))}}
    value = draw(st.sampled_from(VALUES))
    return {key: {op: value}} if op == "ne" or isinstance(value, dict) or draw(st.booleans()) else {key: value}


def _merged(parts: list[dict]) -> dict:
    out: dict = {}
    for part in parts:  # one filter object holding several entries (an implicit $and)
        for key, spec in part.items():
            out.setdefault(key, spec)
    return out


FILTERS = st.recursive(
    conditions(),
    lambda sub: st.one_of(
        st.lists(sub, min_size=1, max_size=3).map(lambda fs: {"$and": fs}),
        st.lists(sub, min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
        sub.map(lambda f: {"$not": f}),
        st.lists(sub, min_size=2, max_size=3).map(_merged),
    ),
    max_leaves=12,
)
METAS = st.lists(st.one_of(st.none(), st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=4)),
                 max_size=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metas=METAS, raw=FILTERS)
def test_logical_filters_match_a_brute_force_evaluation(metas: list[dict | None], raw: dict) -> None:
    """Nested $and / $or / $not over random metadata: the same rows as plain Python, or a 422
    exactly where the rules say (a key no item holds, a range bound of a type the key lacks,
    nesting deeper than MAX_DEPTH)."""
    if depth(raw) > MAX_DEPTH:
        with pytest.raises(InvalidFilter, match="deep"):
            parse_filter(raw)
        return
    flt = parse_filter(raw)
    assert flt is not None
    cols, conn = columns_for(metas)
    if refused(metas, raw):
        with pytest.raises(InvalidFilter):
            cols.mask(flt, conn)
    else:
        assert set(cols.rows(flt, conn).tolist()) == reference(metas, raw), raw


def test_logical_filters_on_many_rows_take_every_route() -> None:
    """Enough rows and distinct values that the conditions' masks take their gathered and numeric
    routes before being combined."""
    rng = random.Random(7)
    metas: list[dict | None] = [{"ts": i, "w": f"w{i % 50}", "lang": ["en", "de", "fr"][i % 3],
                                 "v": rng.choice([i, f"s{i}", [i, i + 1]])} for i in range(3000)]
    cols, conn = columns_for(metas)
    for raw in [{"$or": [{"ts": {"lt": 100}}, {"w": {"in": [f"w{i}" for i in range(30)]}}]},
                {"$not": {"ts": {"gte": 100, "lt": 2500}}},
                {"lang": "en", "$not": {"$or": [{"v": {"gt": 1500}}, {"w": "w3"}]}},
                {"$and": [{"$or": [{"lang": "de"}, {"v": {"lte": "s2"}}]}, {"$not": {"ts": {"ne": 7}}}]},
                {"$not": {"$not": {"w": {"gte": "w2"}}}}]:
        flt = parse_filter(raw)
        assert flt is not None
        assert set(cols.rows(flt, conn).tolist()) == reference(metas, raw), raw


def nested(levels: int) -> dict:
    raw: dict = {"lang": "en"}
    for i in range(levels):
        raw = {"$not": raw} if i % 3 == 0 else {"$and": [raw]} if i % 3 == 1 else {"$or": [raw, {"x": 1}]}
    return raw


def test_nesting_and_size_are_bounded() -> None:
    assert parse_filter(nested(MAX_DEPTH)) is not None
    with pytest.raises(InvalidFilter, match=f"more than {MAX_DEPTH} deep"):
        parse_filter(nested(MAX_DEPTH + 1))
    many = {"$or": [{f"k{i}": i} for i in range(MAX_CONDITIONS)]}
    assert parse_filter(many) is not None
    with pytest.raises(InvalidFilter, match=f"more than {MAX_CONDITIONS} conditions"):
        parse_filter({"$or": [many, {"$not": {"a": 1}}]})
    with pytest.raises(InvalidFilter, match=f"more than {MAX_CONDITIONS} conditions"):
        parse_filter({"$and": [{"a": {"gte": 1, "lt": 2}}] * 40})


@pytest.mark.parametrize(("raw", "message"), [
    ({"$nor": [{"a": 1}]}, "unknown filter operator '$nor' in filter; the operators combining filters are "
                           "$and, $or, $not"),
    ({"$AND": [{"a": 1}]}, "unknown filter operator '$AND'"),
    ({"$where": "1"}, "unknown filter operator '$where'"),
    ({"$or": [{"$in": 1}]}, "unknown filter operator '$in' in filter.$or[0]"),
    ({"$and": {"a": 1}}, "filter.$and needs a non-empty list of filter objects"),
    ({"$or": []}, "filter.$or needs a non-empty list of filter objects, e.g."),
    ({"$or": [{"a": 1}, {}]}, "filter.$or[1] must be a filter object with at least one condition"),
    ({"$and": ["a"]}, "filter.$and[0] must be a filter object"),
    ({"$not": [{"a": 1}]}, "filter.$not needs one non-empty filter object"),
    ({"$not": {}}, "filter.$not needs one non-empty filter object"),
    ({"$not": {"a": {"like": 1}}}, "unknown filter operator 'like' for key 'a'"),
])
def test_bad_logical_filters_say_what_to_fix(raw: Any, message: str) -> None:
    with pytest.raises(InvalidFilter) as err:
        parse_filter(raw)
    assert message in str(err.value)


def test_parsed_logical_filters() -> None:
    flt = parse_filter({"lang": "en", "$or": [{"year": {"lt": 2000}}, {"$not": {"tag": {"ne": "x"}}}]})
    assert flt is not None and flt.op == "and"
    assert [(c.key, c.op) for c in flt.conditions] == [("lang", "eq"), ("year", "lt"), ("tag", "ne")]
    assert flt.keys == ["lang", "year", "tag"] and flt.required_keys == ["lang", "year", "tag"]
    loose = parse_filter({"archived": {"ne": True}, "$not": {"gone": True, "$not": {"old": 1}}})
    assert loose is not None and loose.required_keys == ["old"]


YEARS: list[dict | None] = [{"year": 2019 + i % 4, "lang": ["en", "de"][i % 2], "flag": i % 2 == 0,
                             "mixed": [i, f"s{i}"][i % 2]} for i in range(40)] + [None]


@pytest.mark.parametrize(("raw", "message"), [
    ({"year": {"gte": "2020"}}, "filter['year'].gte: 'year' holds numbers, no strings; 'gte' got the string "
                                '"2020" (ranges compare numbers with numbers and strings with strings); send the '
                                'number: {"gte": 2020}'),
    ({"lang": {"lt": 5}}, "'lang' holds strings, no numbers; 'lt' got the number 5"),
    ({"$or": [{"lang": "en"}, {"$not": {"lang": {"gt": 5}}}]}, "'lang' holds strings, no numbers"),
    ({"flag": {"gt": 0}}, "'flag' holds booleans, no numbers"),
])
def test_a_range_of_the_wrong_type_is_refused(raw: dict, message: str) -> None:
    cols, conn = columns_for(YEARS)
    flt = parse_filter(raw)
    assert flt is not None
    with pytest.raises(InvalidFilter) as err:
        cols.mask(flt, conn)
    assert message in str(err.value)


def test_a_key_holding_numbers_and_strings_compares_like_with_like() -> None:
    cols, conn = columns_for(YEARS)
    for raw in [{"mixed": {"gte": 10}}, {"mixed": {"lt": "s2"}}, {"year": {"gte": 2020.5}}, {"lang": {"gte": "e"}}]:
        flt = parse_filter(raw)
        assert flt is not None
        assert set(cols.rows(flt, conn).tolist()) == reference(YEARS, raw), raw


def test_a_key_no_item_holds_is_refused_unless_its_condition_means_every_item() -> None:
    cols, conn = columns_for(YEARS)
    for raw in [{"yaer": {"gte": 2020}}, {"yaer": 2020}, {"$or": [{"lang": "en"}, {"yaer": {"in": [1]}}]},
                {"$not": {"yaer": {"ne": 1}}}]:
        flt = parse_filter(raw)
        assert flt is not None
        with pytest.raises(InvalidFilter) as err:
            cols.mask(flt, conn)
        assert str(err.value).startswith("no item of this collection has metadata key 'yaer', so filter['yaer'] "
                                         "can match nothing; did you mean 'year'?; keys the items hold: 'flag', "
                                         "'lang', 'mixed', 'year'"), str(err.value)
    assert "yaer" not in cols.keys  # a typo does not keep a column
    everything = set(range(len(YEARS)))
    for raw in [{"archived": {"ne": True}}, {"$not": {"archived": True}}, {"$not": {"archived": {"gt": 1}}}]:
        flt = parse_filter(raw)
        assert flt is not None
        assert set(cols.rows(flt, conn).tolist()) == everything, raw
    empty, conn0 = columns_for([])
    flt = parse_filter({"yaer": {"gte": "x"}, "$or": [{"year": {"gte": "2020"}}]})
    assert flt is not None and empty.rows(flt, conn0).tolist() == []


def test_many_keys_are_listed_ten_at_most() -> None:
    cols, conn = columns_for([{f"key{i:02d}": i for i in range(25)}])
    flt = parse_filter({"zzz": 1})
    assert flt is not None
    with pytest.raises(InvalidFilter) as err:
        cols.mask(flt, conn)
    assert str(err.value).endswith("keys the items hold: " + ", ".join(f"'key{i:02d}'" for i in range(10))
                                   + " and 15 more")
    cols, conn = columns_for([None, None])
    with pytest.raises(InvalidFilter, match="no item has metadata"):
        cols.mask(flt, conn)


def test_a_key_whose_last_holder_was_deleted_is_refused(tmp_path: Path) -> None:
    """Whether some item holds a key follows upserts and deletes (the column outlives its values)."""
    store = Store(tmp_path, fake_model())
    col, _ = store.create("c")
    col.upsert(["a", "b"], unique_codes(2, seed=5), [{"lang": "en"}, {"lang": "de", "draft": True}])
    flt = parse_filter({"draft": True})
    assert flt is not None and col.count(flt) == 1
    col.delete(["b"])
    with pytest.raises(InvalidFilter, match="no item of this collection has metadata key 'draft'"):
        col.count(flt)
    assert col.count(parse_filter({"draft": {"ne": True}})) == 1
    col.upsert(["c"], unique_codes(1, seed=6), [{"draft": True}])
    assert col.count(flt) == 1
    col.delete(["a", "c"])
    assert col.count(flt) == 0  # an empty collection: nothing, no error
    store.close()

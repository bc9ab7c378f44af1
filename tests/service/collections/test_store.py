"""The SQLite store: what is committed is what a fresh process rebuilds; names cannot escape
the data dir; another checkpoint cannot open (or alter) a collection."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from service.collections.binding import StoreModel
from service.collections.errors import CheckpointMismatch, CollectionCorrupt, CollectionNotFound, InvalidName
from service.collections.store import Store, validate_name

H, K, D = 4, 256, 8


def fake_model(sha: str = "a" * 64, seed: int = 0) -> StoreModel:
    """Random codebooks and a linear 'decoder': enough to exercise storage and search."""
    rng = np.random.default_rng(seed)
    cb = rng.standard_normal((H, K, D)).astype(np.float32)
    proj = rng.standard_normal((H * D, 12)).astype(np.float32)

    def decode(codes: np.ndarray) -> np.ndarray:
        zq = np.concatenate([cb[h][np.asarray(codes)[:, h]] for h in range(H)], axis=1)
        return zq @ proj

    return StoreModel(sha256=sha, num_heads=H, codebook_size=K, codebooks=cb, latent_unit_heads=False,
                      model_config={"num_heads": H}, decoder=decode)


def latent_of(model: StoreModel, codes: np.ndarray) -> np.ndarray:
    """The exact quantised latent of codes: a query at distance 0 from its own item."""
    return np.concatenate([model.codebooks[h][codes[:, h]] for h in range(H)], axis=1)


def unique_codes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    packed = rng.choice(2**32, size=n, replace=False).astype(np.uint32)
    return packed.view(np.uint8).reshape(n, 4).copy()


@pytest.fixture
def model() -> StoreModel:
    return fake_model()


@pytest.fixture
def store(tmp_path: Path, model: StoreModel) -> Store:
    s = Store(tmp_path, model)
    yield s
    s.close()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "-x", "x" * 65, "a b", "é", "a\x00", "..", "a\\b"])
def test_bad_names_are_refused(store: Store, name: str) -> None:
    with pytest.raises(InvalidName):
        store.create(name)
    with pytest.raises(InvalidName):
        store.get(name)
    assert list((store.root).iterdir()) == []


@pytest.mark.parametrize("name", ["a", "Wiki-2024.v1", "x" * 64, "0_a.b-c"])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


def test_create_is_idempotent_and_records_the_checkpoint(store: Store, model: StoreModel) -> None:
    col, created = store.create("docs", "my docs")
    assert created
    again, created_again = store.create("docs")
    assert again is col and not created_again
    info = col.info()
    assert info.checkpoint_sha256 == model.sha256 and info.count == 0 and info.description == "my docs"
    assert info.created and info.status == "ok"
    assert [i.name for i in store.list()] == ["docs"]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temp files left


def test_upsert_get_replace_delete(store: Store, model: StoreModel) -> None:
    col, _ = store.create("c")
    codes = unique_codes(5)
    stats = col.upsert([f"id{i}" for i in range(5)], codes, [json.dumps({"i": i}) for i in range(5)],
                       ["t0", None, None, None, None])
    assert (stats.inserted, stats.updated, stats.count) == (5, 0, 5)
    item = col.get("id0")
    assert item.codes == codes[0].tolist() and item.metadata == {"i": 0} and item.text == "t0"
    new = unique_codes(1, seed=9)
    stats = col.upsert(["id0", "id9"], np.vstack([new, codes[1]]), None, None)
    assert (stats.inserted, stats.updated, stats.count) == (1, 1, 6)
    item = col.get("id0")
    assert item.codes == new[0].tolist() and item.metadata is None and item.text is None  # replaced whole
    assert col.delete(["id2", "nope"]) == ["id2"]
    assert col.get("id2") is None and len(col) == 5
    assert col.delete(["nope"]) == []


def test_duplicate_ids_in_one_upsert_are_refused(store: Store) -> None:
    col, _ = store.create("c")
    with pytest.raises(ValueError, match="duplicate"):
        col.upsert(["a", "a"], unique_codes(2))
    assert len(col) == 0


def test_search_finds_exact_items_and_skips_deleted(store: Store, model: StoreModel) -> None:
    col, _ = store.create("c")
    codes = unique_codes(200, seed=1)
    ids = [f"doc/{i}" for i in range(200)]
    col.upsert(ids, codes, [json.dumps({"n": i}) for i in range(200)])
    z = latent_of(model, codes[[3, 150]])
    hits, metric = col.search(z, None, 3)
    assert metric == "neg_sq_l2"
    assert hits[0][0].id == "doc/3" and hits[0][0].score == pytest.approx(0, abs=1e-4)
    assert hits[0][0].metadata == {"n": 3}
    assert hits[1][0].id == "doc/150"
    assert [h.score for h in hits[0]] == sorted((h.score for h in hits[0]), reverse=True)
    col.delete(["doc/3"])
    hits, _ = col.search(z, None, 3)
    assert "doc/3" not in {h.id for h in hits[0]} and hits[1][0].id == "doc/150"
    hits, metric = col.search(z, np.ones((2, 12), np.float32), 3, candidates=50)
    assert metric == "cosine" and len(hits[0]) == 3


def test_reopen_rebuilds_exactly_what_was_committed(tmp_path: Path, model: StoreModel) -> None:
    """A random sequence of upserts and deletes, then a fresh Store (as after a restart):
    the rebuilt index, the stored rows and a reference dict agree."""
    rng = np.random.default_rng(2)
    store = Store(tmp_path, model)
    col, _ = store.create("c")
    ref: dict[str, list[int]] = {}
    for step in range(40):
        if rng.random() < 0.6 or not ref:
            ids = [f"k{int(v)}" for v in rng.choice(300, size=rng.integers(1, 30), replace=False)]
            codes = rng.integers(0, K, (len(ids), H)).astype(np.uint8)
            col.upsert(ids, codes)
            ref.update({i: c.tolist() for i, c in zip(ids, codes, strict=True)})
        else:
            victims = list(rng.choice(sorted(ref), size=min(len(ref), rng.integers(1, 20)), replace=False))
            victims.append(f"absent{step}")
            assert sorted(col.delete(victims)) == sorted(v for v in victims if v in ref)
            for v in victims:
                ref.pop(v, None)
        assert len(col) == len(ref)
    in_memory = col.index.codes.copy()
    store.close()

    fresh = Store(tmp_path, model).get("c")
    np.testing.assert_array_equal(fresh.index.codes, in_memory)
    rows = fresh.conn.execute("SELECT slot, id, codes FROM items ORDER BY slot").fetchall()
    assert [r[0] for r in rows] == list(range(len(ref)))  # slots dense
    assert {r[1]: list(r[2]) for r in rows} == ref
    for slot, item_id, _ in rows:
        assert fresh.index.codes[slot].tolist() == ref[item_id]


def test_other_checkpoint_is_refused_and_leaves_the_file_untouched(tmp_path: Path, model: StoreModel) -> None:
    store = Store(tmp_path, model)
    col, _ = store.create("c")
    col.upsert(["a"], unique_codes(1))
    store.close()
    path = tmp_path / "collections" / "c.sqlite3"
    before = file_digest(path)
    other = Store(tmp_path, dataclasses.replace(model, sha256="b" * 64))
    with pytest.raises(CheckpointMismatch, match="a" * 64):
        other.get("c")
    with pytest.raises(CheckpointMismatch):
        other.create("c")
    listed = other.list()
    assert listed[0].status == "checkpoint_mismatch" and listed[0].checkpoint_sha256 == "a" * 64
    assert "b" * 64 in listed[0].error
    assert file_digest(path) == before
    assert Store(tmp_path, model).get("c").get("a") is not None


def test_collections_follow_the_weights_not_the_file(tmp_path: Path, model: StoreModel) -> None:
    """Recording metadata into a checkpoint changes its file sha256, not its weights: collections
    made before (bound to the file sha256 then) and after (bound to the weights) still open."""
    legacy = Store(tmp_path, model)  # no weights checksum: an older server
    legacy.create("old")[0].upsert(["a"], unique_codes(1))
    legacy.close()
    current = dataclasses.replace(model, weights_sha256="w" * 64)
    Store(tmp_path, current).create("new")[0].upsert(["b"], unique_codes(1, seed=1))
    recorded = dataclasses.replace(current, sha256="c" * 64, earlier_sha256=(model.sha256,))
    store = Store(tmp_path, recorded)
    assert store.get("old").get("a") is not None and store.get("new").get("b") is not None
    assert store.get("new").info().weights_sha256 == "w" * 64
    other_weights = Store(tmp_path, dataclasses.replace(recorded, weights_sha256="x" * 64))
    with pytest.raises(CheckpointMismatch, match="weights " + "w" * 64):
        other_weights.get("new")
    forgotten = Store(tmp_path, dataclasses.replace(recorded, earlier_sha256=()))
    with pytest.raises(CheckpointMismatch):
        forgotten.get("old")


def test_changes_by_another_process_are_picked_up(tmp_path: Path, model: StoreModel) -> None:
    server = Store(tmp_path, model)
    col, _ = server.create("c")
    col.upsert(["a"], unique_codes(1))
    cli = Store(tmp_path, model)
    cli.get("c").upsert(["b", "c"], unique_codes(2, seed=3))
    cli.get("c").delete(["a"])
    assert len(col) == 2
    z = latent_of(model, unique_codes(2, seed=3)[:1])
    assert col.search(z, None, 1)[0][0][0].id == "b"
    cli.drop("c")
    with pytest.raises(CollectionNotFound):
        server.get("c")


def test_drop_and_not_found(store: Store) -> None:
    with pytest.raises(CollectionNotFound):
        store.get("nothing")
    with pytest.raises(CollectionNotFound):
        store.drop("nothing")
    col, _ = store.create("c")
    store.drop("c")
    assert store.names() == [] and list(store.root.iterdir()) == []
    with pytest.raises(CollectionNotFound):
        col.upsert(["a"], unique_codes(1))


def test_non_dense_slots_are_repaired_on_open(tmp_path: Path, model: StoreModel) -> None:
    store = Store(tmp_path, model)
    col, _ = store.create("c")
    codes = unique_codes(4)
    col.upsert(["a", "b", "c", "d"], codes)
    store.close()
    conn = sqlite3.connect(tmp_path / "collections" / "c.sqlite3")
    conn.execute("UPDATE items SET slot = slot * 10 + 7")
    conn.commit()
    conn.close()
    fresh = Store(tmp_path, model).get("c")
    slots = [r[0] for r in fresh.conn.execute("SELECT slot FROM items ORDER BY slot")]
    assert slots == [0, 1, 2, 3]
    np.testing.assert_array_equal(fresh.index.codes, codes)


def test_corrupt_files_are_reported(tmp_path: Path, model: StoreModel) -> None:
    store = Store(tmp_path, model)
    (store.root / "junk.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(CollectionCorrupt):
        store.get("junk")
    assert store.list()[0].status == "error"
    col, _ = store.create("c")
    col.upsert(["a"], unique_codes(1))
    store.close()
    conn = sqlite3.connect(tmp_path / "collections" / "c.sqlite3")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(CollectionCorrupt, match="schema version 99"):
        Store(tmp_path, model).get("c")


def test_writes_are_committed_before_returning(tmp_path: Path, model: StoreModel) -> None:
    """Another connection sees an upsert as soon as it returns (nothing waits in a buffer)."""
    store = Store(tmp_path, model)
    col, _ = store.create("c")
    col.upsert(["a", "b"], unique_codes(2))
    other = sqlite3.connect(tmp_path / "collections" / "c.sqlite3")
    assert other.execute("SELECT count(*) FROM items").fetchone()[0] == 2
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert col.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    col.delete(["a"])
    assert other.execute("SELECT id FROM items").fetchall() == [("b",)]
    other.close()


def test_concurrent_writers_and_searchers_stay_consistent(tmp_path: Path, model: StoreModel) -> None:
    """Threads upsert, delete and search one collection at once (as the server's thread pool
    does); afterwards the index, the database and a fresh rebuild all agree."""
    import threading

    store = Store(tmp_path, model)
    col, _ = store.create("c")
    errors: list[BaseException] = []
    expected: dict[str, list[int]] = {}
    lock = threading.Lock()

    def writer(w: int) -> None:
        rng = np.random.default_rng(w)
        try:
            for _ in range(15):
                ids = [f"w{w}-{int(i)}" for i in rng.choice(50, size=8, replace=False)]
                codes = rng.integers(0, K, (8, H)).astype(np.uint8)
                col.upsert(ids, codes)
                with lock:
                    expected.update({i: c.tolist() for i, c in zip(ids, codes, strict=True)})
                victims = [f"w{w}-{int(i)}" for i in rng.choice(50, size=3, replace=False)]
                with lock:  # delete and record together, so the ledger matches the commit order
                    col.delete(victims)
                    for v in victims:
                        expected.pop(v, None)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def searcher() -> None:
        rng = np.random.default_rng(99)
        try:
            for _ in range(30):
                hits, _ = col.search(rng.standard_normal((2, H * D)).astype(np.float32), None, 5)
                assert all(len({h.id for h in row}) == len(row) for row in hits)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)] + [threading.Thread(target=searcher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rows = col.conn.execute("SELECT slot, id, codes FROM items ORDER BY slot").fetchall()
    assert {r[1]: list(r[2]) for r in rows} == expected
    assert [r[0] for r in rows] == list(range(len(rows)))
    np.testing.assert_array_equal(col.index.codes, np.asarray([list(r[2]) for r in rows], np.uint8).reshape(-1, H))
    store.close()
    np.testing.assert_array_equal(Store(tmp_path, model).get("c").index.codes.shape, (len(expected), H))

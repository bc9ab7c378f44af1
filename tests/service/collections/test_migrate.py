"""Migration to the serving checkpoint: from kept vectors or texts, atomic, refused while another
runs, rolled back by a full disk, and whole on one checkpoint after a kill -9 at any moment."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service.collections import files, migrate
from service.collections.binding import StoreModel
from service.collections.store import Store
from tests.service.collections.test_routes import FakeEmbedder
from tests.service.conftest import REPO, AppFactory, served, unit_rows
from vqvae.api import Monolith


def old_model(monolith: Monolith) -> StoreModel:
    """The serving model under other checksums: codes 'made by another checkpoint'."""
    return dataclasses.replace(StoreModel.from_monolith(monolith), sha256="e" * 64, weights_sha256="d" * 64,
                               earlier_sha256=())


def build_old(data: Path, monolith: Monolith, x: np.ndarray, texts: list[str | None] | None = None,
              kept: str = "int8") -> np.ndarray:
    """A collection 'docs' of the old model; returns its stored codes (deliberately not the serving
    model's codes of x, so a migration visibly rewrites them)."""
    store = Store(data, old_model(monolith))
    col, _ = store.create("docs", kept=kept)  # type: ignore[arg-type]
    codes = (monolith.encode(x).astype(np.int64) + 1) % 256
    keep = x if kept != "none" else None
    col.upsert([f"d{i}" for i in range(len(x))], codes.astype(np.uint8), texts=texts, inputs=keep)
    store.close()
    return codes.astype(np.uint8)


def stored_codes(path: Path) -> np.ndarray:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        blob = b"".join(r[0] for r in conn.execute("SELECT codes FROM items ORDER BY slot"))
    return np.frombuffer(blob, np.uint8).reshape(-1, 4)


def test_migrate_re_encodes_from_kept_vectors_and_texts(make_client: AppFactory, tmp_path: Path,
                                                         monolith: Monolith) -> None:
    x = unit_rows(60, seed=4)
    texts = [f"text {i}" for i in range(60)]
    data = tmp_path / "data"
    build_old(data, monolith, x, texts)
    col = Store(data, old_model(monolith)).get("docs")
    col.upsert(["t0", "t1"], np.zeros((2, 4), np.uint8), texts=["only a text", "another"])  # no kept vector
    col.close()
    client = make_client(data_dir=data, embedder=FakeEmbedder())
    resp = client.get("/collections/docs")
    assert resp.status_code == 409 and "/collections/docs/migrate" in resp.json()["detail"]
    resp = client.post("/collections/docs/migrate")
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["migration"]["changed"] is True and out["migration"]["items"] == 62
    assert out["migration"]["from_vectors"] == 60 and out["migration"]["from_texts"] == 2
    assert out["migration"]["previous"]["weights_sha256"] == "d" * 64
    assert out["collection"]["weights_sha256"] == monolith.weights_sha256 and out["collection"]["count"] == 62
    store = client.app.state.service.store
    kept = store.get("docs").kept_vectors(np.arange(62))
    want = served(monolith.encode, kept)
    assert (stored_codes(store.path("docs")) == want).all(axis=1).mean() > 0.95  # int8 copies: near-ties may flip
    assert np.allclose(kept[60:], FakeEmbedder().embed(["only a text", "another"]), atol=3e-3)  # now kept
    hits = client.post("/collections/docs/search", json={"embeddings": x[:1].tolist(), "k": 1}).json()["results"]
    assert hits[0][0]["id"] == "d0" and hits[0][0]["text"] == "text 0"
    again = client.post("/collections/docs/migrate").json()["migration"]
    assert again["changed"] is False and again["items"] == 0


def test_items_with_neither_vector_nor_text_are_named_in_a_409(make_client: AppFactory, tmp_path: Path,
                                                                monolith: Monolith) -> None:
    data = tmp_path / "data"
    before = build_old(data, monolith, unit_rows(12, seed=1), kept="none")
    client = make_client(data_dir=data)
    resp = client.post("/collections/docs/migrate")
    assert resp.status_code == 409
    detail = resp.json()["detail"]
    assert "12 items keep neither a vector nor a text" in detail and "'d0'" in detail
    assert (stored_codes(data / "collections" / "docs.sqlite3") == before).all()


def test_a_second_migration_at_once_is_409(make_client: AppFactory, tmp_path: Path, monolith: Monolith) -> None:
    data = tmp_path / "data"
    build_old(data, monolith, unit_rows(10, seed=2))
    client = make_client(data_dir=data)
    store = client.app.state.service.store
    store.claim("docs", "migration")
    resp = client.post("/collections/docs/migrate")
    assert resp.status_code == 409 and "is running" in resp.json()["detail"]
    store.release("docs")
    assert client.post("/collections/docs/migrate").status_code == 200


def test_disk_full_during_migration_is_507_and_changes_nothing(make_client: AppFactory, tmp_path: Path,
                                                                monolith: Monolith,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    before = build_old(data, monolith, unit_rows(3000, seed=3))
    real_connect = files.connect

    def capped(path: Path, synchronous: str, readonly: bool = False) -> sqlite3.Connection:
        conn = real_connect(path, synchronous, readonly)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 4}")  # room for a little of the stage only
        return conn

    monkeypatch.setattr(migrate.files, "connect", capped)
    client = make_client(data_dir=data)
    resp = client.post("/collections/docs/migrate")
    assert resp.status_code == 507, resp.text
    assert "nothing stored changed" in resp.json()["detail"]
    monkeypatch.setattr(migrate.files, "connect", real_connect)
    path = data / "collections" / "docs.sqlite3"
    assert (stored_codes(path) == before).all()
    assert files.read_meta(path)["weights_sha256"] == "d" * 64
    with sqlite3.connect(path) as conn:
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'migration'").fetchone()
    assert client.get("/collections/docs").status_code == 409  # still the old checkpoint's, whole
    assert client.post("/collections/docs/migrate").status_code == 200  # space again: it migrates


def test_kill_9_during_migration_leaves_the_collection_whole_on_one_checkpoint(tmp_path: Path,
                                                                               monolith: Monolith) -> None:
    data = tmp_path / "data"
    n = 12_000
    before = build_old(data, monolith, unit_rows(n, seed=9))
    path = data / "collections" / "docs.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONOLITH_")}
    cmd = [sys.executable, "-m", "service.collections.cli", "migrate", "docs", "--data-dir", str(data)]
    rng = random.Random(0)
    outcomes = set()
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not _staging(path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # wait for the model load; the kill lands while chunks are staged
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        weights = files.read_meta(path)["weights_sha256"]
        codes = stored_codes(path)
        assert len(codes) == n
        if weights == "d" * 64:
            assert (codes == before).all()  # wholly the old checkpoint's
            outcomes.add("old")
        else:
            assert weights == monolith.weights_sha256 and (codes != before).any(axis=1).mean() > 0.9
            outcomes.add("new")
            break
    assert "old" in outcomes, "every kill came after the switch: the test did not interrupt a migration"
    col = Store(data, StoreModel.from_monolith(monolith))
    _, result = migrate.run(col, "docs", monolith.encode, None)  # finishes whatever state it found
    assert files.read_meta(path)["weights_sha256"] == monolith.weights_sha256
    assert len(col.get("docs")) == n
    col.close()


def _staging(path: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as conn:
            return bool(conn.execute("SELECT count(*) FROM migration").fetchone()[0])
    except sqlite3.Error:
        return False


def test_cli_migrate(tmp_path: Path, monolith: Monolith) -> None:
    data = tmp_path / "data"
    build_old(data, monolith, unit_rows(40, seed=6))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONOLITH_")}
    cmd = [sys.executable, "-m", "service.collections.cli", "migrate", "docs", "--data-dir", str(data)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert "migrated 'docs': 40 items (40 from kept vectors, 0 from texts)" in res.stdout
    res = subprocess.run([*cmd[:4], "nope", *cmd[5:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode != 0 and "not found" in res.stderr


def test_client_migrate_and_rescore(make_client: AppFactory, tmp_path: Path, monolith: Monolith) -> None:
    from service.client import MonolithClient
    from tests.service.test_client_collections import AppTransport

    data = tmp_path / "data"
    x = unit_rows(30, seed=7)
    build_old(data, monolith, x)
    client = make_client(data_dir=data)
    with MonolithClient("http://testserver", transport=AppTransport(client)) as mc:
        info = mc.migrate("docs")
        assert info.name == "docs" and info.vectors == "int8" and info.bytes_per_item["vector"] == 388
        hits = mc.search("docs", embeddings=x[:2], k=3, rescore=True)
        assert [h.id for h in hits[0]][0] == "d0"

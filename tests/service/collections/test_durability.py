"""Acknowledged writes survive kill -9 of the real server.

The real ``python -m service`` runs against a temporary data dir. A client upserts batches
(and deletes some items) as fast as it can while a timer sends SIGKILL at a random moment
after its first acknowledged write.
After each kill the database must pass SQLite's integrity check, and a restarted server must
hold every acknowledged item with the codes and metadata it was given, and none of the
acknowledged deletions; only the one request in flight at the kill may go either way.
Three kills, on the same data dir; bounded by the server start-up time (~5 s each).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.service.conftest import REPO, free_port, served, unit_rows
from vqvae.api import Monolith
from vqvae.search import CodeIndex

ROUNDS = 3
BATCH = 16
COLLECTION = "dur"
START_TIMEOUT = 90.0
IVF_SPEC = {"kind": "ivf", "lists": 4, "train_at": 256}  # trains after 16 batches, within the rounds


def start_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONOLITH_")}
    env["MONOLITH_LOAD_TEXT_MODEL"] = "false"
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server not ready in {START_TIMEOUT} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)


def confident(monolith: Monolith, x: np.ndarray, margin: float = 1e-4) -> np.ndarray:
    """Rows whose code is unambiguous (best code per head beats the runner-up by ``margin``):
    a server in another process may sum in another order, so near-ties are not compared."""
    with torch.inference_mode():
        d = monolith.model.quantizer.distances(torch.from_numpy(monolith.search_latent(x))).numpy()
    two = np.sort(d, axis=-1)[:, :, :2]
    return ((two[:, :, 1] - two[:, :, 0]) > margin).all(axis=1)


class Ledger:
    """What the server acknowledged, and what was in flight when it died."""

    def __init__(self) -> None:
        self.alive: dict[str, tuple[list[int], dict, bool]] = {}  # id → codes, metadata, compare codes?
        self.deleted: set[str] = set()
        self.pending_upsert: dict[str, tuple[list[int], dict, bool]] = {}
        self.pending_delete: str | None = None


def write_until_killed(url: str, proc: subprocess.Popen, ledger: Ledger, monolith: Monolith, rnd: int,
                       kill_after: float) -> int:
    """Write until the server dies: it is killed ``kill_after`` s after the first acknowledged
    write, not after a fixed time from the start (on a busy machine the first write could take
    longer than that, and the round then tested nothing)."""
    timer: threading.Timer | None = None
    acked = 0
    rng = np.random.default_rng(rnd)
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for b in range(100_000):
                x = unit_rows(BATCH, seed=rnd * 100_000 + b)
                ids = [f"r{rnd}-b{b}-i{i}" for i in range(BATCH)]
                metas = [{"r": rnd, "b": b, "i": i} for i in range(BATCH)]
                codes, sure = served(monolith.encode, x), confident(monolith, x)
                ledger.pending_upsert = {
                    item_id: (codes[j].tolist(), metas[j], bool(sure[j])) for j, item_id in enumerate(ids)
                }
                body = {"items": [{"id": i, "embedding": row.tolist(), "metadata": m}
                                  for i, row, m in zip(ids, x, metas, strict=True)]}
                try:
                    resp = client.post(f"/collections/{COLLECTION}/items", json=body)
                except httpx.TransportError:
                    break
                assert resp.status_code == 200, resp.text
                ledger.alive.update(ledger.pending_upsert)
                ledger.pending_upsert = {}
                acked += 1
                if timer is None:
                    timer = threading.Timer(kill_after, lambda: os.kill(proc.pid, signal.SIGKILL))
                    timer.start()
                if b % 3 == 2:  # delete one acknowledged item now and then
                    victim = sorted(ledger.alive)[int(rng.integers(len(ledger.alive)))]
                    ledger.pending_delete = victim
                    try:
                        resp = client.delete(f"/collections/{COLLECTION}/items/{victim}")
                    except httpx.TransportError:
                        break
                    assert resp.status_code == 200, resp.text
                    del ledger.alive[victim]
                    ledger.deleted.add(victim)
                    ledger.pending_delete = None
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return acked


def read_db(db: Path) -> dict[str, tuple[list[int], dict]]:
    """The collection as a restarting server will find it (opening recovers the WAL)."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT slot, id, codes, metadata FROM items ORDER BY slot").fetchall()
    assert [r[0] for r in rows] == list(range(len(rows))), "slots are not dense"
    return {r[1]: (list(r[2]), json.loads(r[3])) for r in rows}


def settle(stored: dict[str, tuple[list[int], dict]], ledger: Ledger, label: str) -> None:
    """Every acknowledged write is on disk, intact; the in-flight request went one way or the other."""
    for item_id, (codes, meta, sure) in {**ledger.alive, **ledger.pending_upsert}.items():
        if item_id in ledger.pending_upsert or item_id == ledger.pending_delete:
            continue
        assert item_id in stored, f"{label}: acknowledged {item_id} lost"
        got_codes, got_meta = stored[item_id]
        assert got_meta == meta, f"{label}: {item_id} metadata"
        assert len(got_codes) == 4, f"{label}: {item_id} corrupt"
        if sure:
            assert got_codes == codes, f"{label}: {item_id} codes"
    assert not ledger.deleted & stored.keys(), f"{label}: acknowledged deletes undone"
    present = ledger.pending_upsert.keys() & stored.keys()
    assert present in (set(), set(ledger.pending_upsert)), f"{label}: half a batch committed"
    for item_id in present:
        ledger.alive[item_id] = ledger.pending_upsert[item_id]
    victim = ledger.pending_delete
    if victim is not None and victim not in stored:
        del ledger.alive[victim]
        ledger.deleted.add(victim)
    ledger.pending_upsert, ledger.pending_delete = {}, None
    assert stored.keys() == ledger.alive.keys(), f"{label}: unexpected items"


def check_server(url: str, ledger: Ledger, label: str, rng: random.Random, stored: dict | None = None,
                 monolith: Monolith | None = None) -> None:
    """The restarted server rebuilt its index from disk: count, items and search agree. With
    ``stored`` (a partitioned collection's rows), a search visiting every list must score exactly
    like an exhaustive scan of the stored codes."""
    with httpx.Client(base_url=url, timeout=30) as client:
        info = client.get(f"/collections/{COLLECTION}").json()
        count = info["count"]
        assert count == len(ledger.alive), label
        if stored is not None and monolith is not None:
            index = info["index"]
            assert index["kind"] == "ivf", label
            q = unit_rows(3, seed=len(ledger.alive))
            resp = client.post(f"/collections/{COLLECTION}/search",
                               json={"embeddings": q.tolist(), "k": 5, "candidates": 0, "probe": 65536})
            assert resp.status_code == 200, resp.text
            flat = CodeIndex.from_model(monolith.model)
            flat.add(np.asarray([c for c, _ in stored.values()], dtype=np.uint8).reshape(-1, 4))
            want = flat.search(monolith.search_latent(q), 5).scores
            got = np.asarray([[h["score"] for h in r] for r in resp.json()["results"]])
            assert got.shape == want.shape and np.allclose(got, want, atol=1e-4), label
        for item_id in rng.sample(sorted(ledger.alive), min(20, len(ledger.alive))):
            got = client.get(f"/collections/{COLLECTION}/items/{item_id}").json()
            codes, meta, sure = ledger.alive[item_id]
            assert got["metadata"] == meta and (not sure or got["codes"] == codes), f"{label}: {item_id}"
        for item_id in rng.sample(sorted(ledger.deleted), min(5, len(ledger.deleted))):
            assert client.get(f"/collections/{COLLECTION}/items/{item_id}").status_code == 404, label
        resp = client.post(f"/collections/{COLLECTION}/search", json={"embeddings": unit_rows(2).tolist(), "k": 5})
        assert resp.status_code == 200 and all(len(r) == min(5, count) for r in resp.json()["results"]), label


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_acknowledged_writes_survive_kill_9(tmp_path: Path, monolith: Monolith, kind: str) -> None:
    """Both kinds of collection: a partitioned one (few lists, trained during the rounds) keeps
    its items, deletes and updates exactly as a flat one, and rebuilds its lists at restart."""
    seed = int.from_bytes(os.urandom(4), "little")
    chooser = random.Random(seed)
    data_dir = tmp_path / "data"
    log_path = tmp_path / "server.log"
    ledger = Ledger()
    proc, url = start_server(data_dir, log_path)
    body = {"index": IVF_SPEC} if kind == "ivf" else None
    assert httpx.put(f"{url}/collections/{COLLECTION}", json=body).status_code == 201
    for rnd in range(ROUNDS):
        label = f"round {rnd} (seed {seed})"
        acked = write_until_killed(url, proc, ledger, monolith, rnd, kill_after=chooser.uniform(0.4, 1.5))
        assert acked > 0, f"{label}: no write was acknowledged before the kill"
        stored = read_db(data_dir / "collections" / f"{COLLECTION}.sqlite3")
        settle(stored, ledger, label)
        proc, url = start_server(data_dir, log_path)
        check_server(url, ledger, label, chooser, stored if kind == "ivf" else None, monolith)
    if kind == "ivf":  # past train_at by now (or after this top-up): the lists are trained, and were searched
        with httpx.Client(base_url=url, timeout=30) as client:
            need = max(1, IVF_SPEC["train_at"] - len(ledger.alive))
            x = unit_rows(need, seed=12345)
            body = {"items": [{"id": f"top{i}", "embedding": r.tolist(), "metadata": {}} for i, r in enumerate(x)]}
            assert client.post(f"/collections/{COLLECTION}/items", json=body).status_code == 200
            assert client.get(f"/collections/{COLLECTION}").json()["index"]["trained"], seed
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)

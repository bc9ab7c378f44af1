"""Fitting a collection: the job's life (202, progress, 409, cancel), applied only when it beats the
current model, writes made during the fit re-encoded by the new model at the switch, the collection
served by its own model after, automatic fits, migration back to the checkpoint, and a kill -9 at
any moment leaving the collection whole on one model with every acknowledged item.

Real fits, kept small: the shipped checkpoint fitted on real MiniLM vectors under a random rotation
(a collection the generic codes serve badly, so a few epochs help), without the faiss baselines."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import service.collections.cli as collections_cli
from service.collections import files, fitted, fitting, vectors
from service.collections.binding import StoreModel
from service.collections.store import Store
from tests.service.conftest import AppFactory, ServerProcess, unit_rows
from vqvae.api import Monolith

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "real_sample.npy"
QUICK = {"epochs": 4, "min_rows": 200, "baselines": False}


def rotated(n: int = 1024, seed: int = 0) -> np.ndarray:
    """Real MiniLM vectors under a random rotation: unit rows, a kind the checkpoint never saw."""
    x = np.load(SAMPLE)[:n].astype(np.float32)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((x.shape[1], x.shape[1])))
    y = x @ q.astype(np.float32)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def fill(client: TestClient, name: str, x: np.ndarray, prefix: str = "d", **create: Any) -> None:
    assert client.put(f"/collections/{name}", json=create).status_code in (200, 201)
    for start in range(0, len(x), 500):
        items = [{"id": f"{prefix}{i}", "embedding": x[i].tolist(), "metadata": {"n": i}}
                 for i in range(start, min(start + 500, len(x)))]
        assert client.post(f"/collections/{name}/items", json={"items": items}).status_code == 200


def wait_fit(client: TestClient, name: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/collections/{name}/fit").json()
        if job["status"] != "running":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def codes_of(path: Path) -> dict[str, bytes]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT id, codes FROM items"))


def kept(path: Path, ids: list[str]) -> np.ndarray:
    """The int8 vectors the collection keeps for ``ids``: what a fit encodes (not the floats sent)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        found = dict(conn.execute("SELECT id, vector FROM items"))
    return vectors.unpack("int8", [found[i] for i in ids], 384)


def agree(stored: dict[str, bytes], ids: list[str], codes: np.ndarray) -> float:
    """Share of ``ids`` stored with exactly ``codes`` (float sums on other thread counts may flip a
    rare code; the old model's codes agree with the new model's almost nowhere)."""
    return float(np.mean([stored[i] == c.tobytes() for i, c in zip(ids, codes, strict=True)]))


def leftovers(path: Path) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'fit_dirty%'")]


def write_ids(tmp: Path, ids: list[str]) -> Path:
    (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    return tmp / "ids.txt"


def test_a_fit_is_applied_and_the_collection_serves_its_own_model(make_client: AppFactory, monolith: Monolith,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    x = rotated()
    fill(client, "rot", x)
    base = client.get("/collections/rot").json()
    assert base["fit"] is None and base["auto_fit"] is True
    resp = client.post("/collections/rot/fit", json=QUICK)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "running" and resp.json()["rows"] == len(x)
    assert client.post("/collections/rot/fit", json=QUICK).status_code == 409  # one at a time
    job = wait_fit(client, "rot")
    assert job["status"] == "applied", job
    report = job["report"]
    assert report["adapted_recall"] > report["generic_recall"]
    assert {m["method"] for m in report["methods"]} == {"generic", "adapted"}
    assert all(m["diff_se_recall_10@10"] is not None for m in report["methods"])
    info = client.get("/collections/rot").json()
    sha = info["fit"]["model"]["weights_sha256"]
    assert info["weights_sha256"] == sha != base["weights_sha256"]
    assert info["fit"]["model"]["fitted_from_weights_sha256"] == monolith.weights_sha256
    assert info["fit"]["report"]["applied"] is True and info["count"] == len(x)
    path = tmp_path / "data" / "collections" / "rot.sqlite3"
    own = Monolith.load(fitted.model_path(path, sha))
    stored = codes_of(path)
    ids = [f"d{i}" for i in range(200)]
    assert agree(stored, ids, own.encode(kept(path, ids))) > 0.97  # the new model's codes
    assert agree(stored, ids, monolith.encode(kept(path, ids))) < 0.2
    assert leftovers(path) == [] and not list(path.parent.glob(".rot.fit-*"))
    # searches and upserts go through the collection's model
    hits = client.post("/collections/rot/search", json={"embeddings": x[:3].tolist(), "k": 1}).json()["results"]
    assert [h[0]["id"] for h in hits] == ["d0", "d1", "d2"]
    new = unit_rows(1, seed=5)[0]
    assert client.post("/collections/rot/items", json={"items": [{"id": "late", "embedding": new.tolist()}]}).is_success
    assert codes_of(path)["late"] == own.encode(new[None])[0].tobytes() != monolith.encode(new[None])[0].tobytes()
    health = client.get("/collections/rot/health").json()
    assert health["source"] == "collection" and len(health["heads"]) == 4
    # the offline CLI writes and searches a fitted collection with its model too
    extra = unit_rows(3, seed=6)
    np.save(tmp_path / "extra.npy", extra)
    monkeypatch.setattr(collections_cli, "_load_model", lambda checkpoint: monolith)
    result = CliRunner().invoke(collections_cli.app, ["build", "rot", "--npy", str(tmp_path / "extra.npy"), "--ids",
                                                      str(write_ids(tmp_path, ["c0", "c1", "c2"])), "--data-dir",
                                                      str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    stored = codes_of(path)
    assert [stored[f"c{i}"] for i in range(3)] == [c.tobytes() for c in own.encode(extra)]


def test_writes_during_the_fit_are_re_encoded_by_the_new_model(make_client: AppFactory, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    x = rotated()
    fill(client, "rot", x[:800])
    real_fit = fitting.FitJobs._fit

    def fit_while_writing(self: fitting.FitJobs, job: fitting.FitJob, *args: Any) -> dict[str, Any]:
        col = self.store.get("rot")  # writes after the snapshot, with the old model's codes
        extra = x[800:900]
        col.upsert([f"w{i}" for i in range(100)], client.app.state.service.batcher.monolith.encode(extra),
                   inputs=extra)
        col.upsert(["d0"], client.app.state.service.batcher.monolith.encode(x[900:901]), inputs=x[900:901])
        col.delete(["d1"])
        return real_fit(self, job, *args)

    monkeypatch.setattr(fitting.FitJobs, "_fit", fit_while_writing)
    assert client.post("/collections/rot/fit", json=QUICK).status_code == 202
    job = wait_fit(client, "rot")
    assert job["status"] == "applied", job
    path = tmp_path / "data" / "collections" / "rot.sqlite3"
    own = Monolith.load(fitted.model_path(path, client.get("/collections/rot").json()["weights_sha256"]))
    stored = codes_of(path)
    assert len(stored) == 800 - 1 + 100 and "d1" not in stored
    ids = [f"w{i}" for i in range(100)] + ["d0"]
    assert agree(stored, ids, own.encode(kept(path, ids))) > 0.97
    assert client.get("/collections/rot").json()["fit"]["report"]["rewritten_after_fit"] == 101


def test_a_fit_that_does_not_beat_the_current_model_is_not_applied(make_client: AppFactory, tmp_path: Path) -> None:
    client = make_client()
    fill(client, "rot", rotated(400))
    before = client.get("/collections/rot").json()
    path = tmp_path / "data" / "collections" / "rot.sqlite3"
    stored = codes_of(path)
    assert client.post("/collections/rot/fit", json={**QUICK, "epochs": 1, "lr": 1e-9}).status_code == 202
    job = wait_fit(client, "rot")
    assert job["status"] == "not_applied" and job["applied"] is False and "keeps its codes" in job["reason"], job
    after = client.get("/collections/rot").json()
    assert after["weights_sha256"] == before["weights_sha256"] and after["fit"]["model"] is None
    assert after["fit"]["report"]["applied"] is False
    assert codes_of(path) == stored and not fitted.models_dir(path).exists()


@pytest.mark.parametrize(("create", "count", "body", "needle"), [
    ({"vectors": "none"}, 300, {"min_rows": 200}, "keeps no vectors"),
    ({}, 300, {}, "at least 1,000"),
    ({}, 300, {"epochs": -1}, "epochs"),
    ({}, 300, {"parts": "encoder"}, "parts"),
])
def test_a_fit_it_cannot_run_is_422(make_client: AppFactory, create: dict[str, Any], count: int,
                                    body: dict[str, Any], needle: str) -> None:
    client = make_client()
    fill(client, "c", unit_rows(count), **create)
    resp = client.post("/collections/c/fit", json=body)
    assert resp.status_code == 422 and needle in resp.text, resp.text
    assert client.get("/collections/c/fit").status_code == 404  # nothing started


def test_unknown_collection_and_no_job_are_404(make_client: AppFactory) -> None:
    client = make_client()
    assert client.post("/collections/nope/fit", json={}).status_code == 404
    fill(client, "c", unit_rows(10))
    assert client.get("/collections/c/fit").status_code == 404
    assert client.delete("/collections/c/fit").status_code == 404


def test_cancel_leaves_the_collection_as_it_was(make_client: AppFactory, tmp_path: Path) -> None:
    client = make_client()
    fill(client, "rot", rotated())
    path = tmp_path / "data" / "collections" / "rot.sqlite3"
    stored = codes_of(path)
    assert client.post("/collections/rot/fit", json={**QUICK, "epochs": 200}).status_code == 202
    deadline = time.monotonic() + 60
    while client.get("/collections/rot/fit").json()["phase"] != "fit":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    resp = client.delete("/collections/rot/fit")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled", resp.text
    assert client.delete("/collections/rot/fit").status_code == 404  # none running now
    assert codes_of(path) == stored and leftovers(path) == [] and not list(path.parent.glob(".rot.fit-*"))
    assert client.post("/collections/rot/fit", json={**QUICK, "epochs": 1}).status_code == 202  # free again
    wait_fit(client, "rot")


def test_a_collection_fits_itself_when_it_reaches_the_threshold(make_client: AppFactory) -> None:
    client = make_client(auto_fit_at=1000)
    fill(client, "off", rotated(1000), auto_fit=False)
    assert client.get("/collections/off/fit").status_code == 404
    assert client.get("/collections/off").json()["auto_fit"] is False
    fill(client, "auto", rotated(999))
    assert client.get("/collections/auto/fit").status_code == 404  # not yet
    x = rotated(1000)
    assert client.post("/collections/auto/items", json={"items": [{"id": "last", "embedding": x[999].tolist()}]})
    job = client.get("/collections/auto/fit").json()
    assert job["trigger"] == "auto" and job["rows"] == 1000
    job = wait_fit(client, "auto", timeout=400)
    assert job["status"] in ("applied", "not_applied"), job
    # not again until it has grown 4-fold
    client.post("/collections/auto/items", json={"items": [{"id": "more", "embedding": x[5].tolist()}]})
    assert client.get("/collections/auto/fit").json()["id"] == job["id"]


def test_migrate_takes_a_fitted_collection_back_to_the_checkpoint(make_client: AppFactory, tmp_path: Path,
                                                                  monolith: Monolith) -> None:
    client = make_client()
    x = rotated()
    fill(client, "rot", x)
    assert client.post("/collections/rot/fit", json=QUICK).status_code == 202
    assert wait_fit(client, "rot")["status"] == "applied"
    resp = client.post("/collections/rot/migrate")
    assert resp.status_code == 200, resp.text
    info = resp.json()["collection"]
    assert info["weights_sha256"] == monolith.weights_sha256 and info["fit"] is None
    path = tmp_path / "data" / "collections" / "rot.sqlite3"
    assert not fitted.models_dir(path).exists()
    ids = [f"d{i}" for i in range(200)]
    assert agree(codes_of(path), ids, monolith.encode(kept(path, ids))) > 0.97


def test_a_fitted_ivf_collection_trains_its_lists_again(make_client: AppFactory) -> None:
    client = make_client()
    x = rotated()
    fill(client, "ivf", x, index={"kind": "ivf", "lists": 8})
    assert client.get("/collections/ivf").json()["index"]["trained"] is True
    assert client.post("/collections/ivf/fit", json=QUICK).status_code == 202
    assert wait_fit(client, "ivf")["status"] == "applied"
    info = client.get("/collections/ivf").json()
    assert info["index"]["trained"] is True
    hits = client.post("/collections/ivf/search", json={"embeddings": x[:5].tolist(), "k": 1, "probe": 8}).json()
    assert [h[0]["id"] for h in hits["results"]] == [f"d{i}" for i in range(5)]


def test_start_up_cleans_what_a_killed_fit_left(tmp_path: Path, monolith: Monolith) -> None:
    data = tmp_path / "data"
    store = Store(data, StoreModel.from_monolith(monolith))
    col, _ = store.create("c")
    x = unit_rows(20)
    col.upsert([f"d{i}" for i in range(20)], monolith.encode(x), inputs=x)
    with col.switching(reload=False) as conn:
        fitting.start_tracking(conn)
    fitted.models_dir(col.path).mkdir()
    (fitted.models_dir(col.path) / f"{'a' * 64}.safetensors").write_bytes(b"orphan")
    (store.root / ".c.fit-0123").mkdir()
    col.upsert(["d0"], monolith.encode(x[:1]), inputs=x[:1])
    fitting.FitJobs(store, monolith.checkpoint.path).clean_up()
    assert leftovers(col.path) == [] and not fitted.models_dir(col.path).exists()
    assert not (store.root / ".c.fit-0123").exists() and len(store.get("c")) == 20
    store.close()


def test_kill_9_during_a_fit_leaves_the_collection_whole_on_one_model(tmp_path: Path, monolith: Monolith) -> None:
    """The server killed at several moments of a fit (snapshot, training, encoding, the switch): after a
    restart every acknowledged item is there, on exactly one model, and nothing of the fit is left."""
    x = rotated()
    path = tmp_path / "data" / "collections" / "rot.sqlite3"
    outcomes: set[str] = set()
    acknowledged: set[str] = set()
    env = {"MONOLITH_AUTO_FIT_AT": "0"}
    for attempt, delay in enumerate((1.0, 3.0, 6.0, 9.0, 12.0)):
        server = ServerProcess(tmp_path, env)
        url = server.wait_ready()
        with httpx.Client(base_url=url, timeout=60) as http:
            if attempt == 0:
                http.put("/collections/rot", json={})
                for start in range(0, len(x), 512):
                    items = [{"id": f"d{i}", "embedding": x[i].tolist()} for i in range(start, start + 512)]
                    assert http.post("/collections/rot/items", json={"items": items}).is_success
                    acknowledged |= {f"d{i}" for i in range(start, start + 512)}
            before = http.get("/collections/rot").json()["weights_sha256"]
            assert http.post("/collections/rot/fit", json={**QUICK, "epochs": 6}).status_code == 202
            t_end = time.monotonic() + delay
            i = 0
            while time.monotonic() < t_end:  # writes during the fit, each acknowledged one remembered
                item = f"a{attempt}-{i}"
                if http.post("/collections/rot/items", json={"items": [
                        {"id": item, "embedding": x[i % len(x)].tolist()}]}).is_success:
                    acknowledged.add(item)
                i += 1
                time.sleep(0.05)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        meta = files.read_meta(path)
        outcomes.add("same" if meta["weights_sha256"] == before else "switched")
        if meta.get(fitted.META_KEY):
            assert meta["weights_sha256"] == meta[fitted.META_KEY]
            assert fitted.model_path(path, meta[fitted.META_KEY]).is_file()
        assert acknowledged <= set(codes_of(path))
    server = ServerProcess(tmp_path, env)
    url = server.wait_ready()
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            info = http.get("/collections/rot").json()
            assert info["status"] == "ok" and info["count"] == len(acknowledged)
            hits = http.post("/collections/rot/search", json={"embeddings": x[:3].tolist(), "k": 1}).json()
            assert [h[0]["id"] for h in hits["results"]][:1] == ["d0"] or hits["results"][0][0]["id"].startswith("a")
        assert leftovers(path) == [] and not list(path.parent.glob(".rot.fit-*"))
        models = list(fitted.models_dir(path).glob("*.safetensors")) if fitted.models_dir(path).exists() else []
        assert len(models) <= 1
    finally:
        server.stop()
    assert "same" in outcomes, "every kill came after a switch: the test interrupted no fit"


def test_a_fit_that_diverges_or_collapses_is_discarded_with_the_reason(make_client: AppFactory,
                                                                       tmp_path: Path) -> None:
    client = make_client()
    fill(client, "rot", rotated(600))
    path = tmp_path / "data" / "collections" / "rot.sqlite3"
    stored = codes_of(path)
    # lr 1 wrecks the weights: either no held-out check beats the start (non-finite checks never
    # do) and nothing is applied, or the kept state fails the checks (not finite, collapsed)
    assert client.post("/collections/rot/fit", json={**QUICK, "lr": 1.0}).status_code == 202
    job = wait_fit(client, "rot")
    assert job["status"] in ("failed", "not_applied") and job["applied"] is not True, job
    failed = ("diverged", "collapsed", "not finite")
    words = failed if job["status"] == "failed" else ("does not beat", "no fitted state")
    assert any(word in job["reason"] for word in words), job["reason"]
    assert codes_of(path) == stored and (client.get("/collections/rot").json()["fit"] or {}).get("model") is None
    assert not fitted.models_dir(path).exists() and leftovers(path) == []


def test_disk_full_during_a_fit_fails_the_job_and_changes_nothing(make_client: AppFactory, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    fill(client, "rot", rotated())
    path = tmp_path / "data" / "collections" / "rot.sqlite3"
    stored = codes_of(path)
    before = client.get("/collections/rot").json()["weights_sha256"]

    def full(*_: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fitted, "install", full)
    assert client.post("/collections/rot/fit", json=QUICK).status_code == 202
    job = wait_fit(client, "rot")
    assert job["status"] == "failed" and "No space left" in job["reason"], job
    assert codes_of(path) == stored and client.get("/collections/rot").json()["weights_sha256"] == before
    assert leftovers(path) == [] and not list(path.parent.glob(".rot.fit-*"))


def test_a_fitted_collection_judges_its_own_writes_for_drift(make_client: AppFactory,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Drift per collection: writes like its rows are ok against its own model's reference; vectors
    of another kind (sparse ones, nothing like the rows it was fitted to) turn it drifted,
    with a warning naming the collection. The server's own traffic is not touched by either."""
    client = make_client()
    x = rotated()
    fill(client, "rot", x)
    assert client.get("/collections/rot/health").json()["drift"] is None  # not fitted yet
    assert client.post("/collections/rot/fit", json=QUICK).status_code == 202
    assert wait_fit(client, "rot")["status"] == "applied"
    same = rotated(1024, seed=0)[:600]
    fill(client, "rot", same, prefix="s")
    drift = client.get("/collections/rot/health").json()["drift"]
    assert drift["status"] == "ok", drift
    server_before = client.get("/codebook/health").json()["drift"]
    other = np.eye(384, dtype=np.float32)[np.arange(3000) % 384] + 0.01 * unit_rows(3000, seed=8)
    with caplog.at_level("WARNING"):  # sparse vectors: nothing like what the model was fitted to
        fill(client, "rot", other / np.linalg.norm(other, axis=1, keepdims=True), prefix="o")
    drift = client.get("/collections/rot/health").json()["drift"]
    assert drift["status"] == "drifted", json.dumps(drift)
    assert any("collection 'rot'" in r.getMessage() and "drifted" in r.getMessage() for r in caplog.records)
    assert client.get("/codebook/health").json()["drift"]["status"] == server_before["status"]


def test_the_server_refuses_below_the_measured_minimum() -> None:
    """The server checks the minimum without importing the trainer; it is the trainer's measured one."""
    from trainer.fit import MIN_ROWS

    assert fitting.MIN_ROWS == MIN_ROWS

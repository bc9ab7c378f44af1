"""Which trained bottlenecks the service accepts: vae/wasserstein checkpoints are refused with a
clear message (no codes to serve); a residual-VQ checkpoint serves encode, decode and search."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import TINY
from tests.service.conftest import AppFactory, unit_rows, wait_ready
from vqvae import Monolith, build_model, save_checkpoint


@pytest.mark.parametrize("bottleneck", ["vae", "wasserstein"])
def test_service_refuses_checkpoints_without_codes(make_client: AppFactory, tmp_path: Path, bottleneck: str) -> None:
    path = save_checkpoint(build_model(TINY.model_copy(update={"bottleneck": bottleneck})), tmp_path / "f.safetensors")
    client = make_client(inject_model=False, checkpoint=path, wait=False)
    deadline = time.monotonic() + 10
    while "failed" not in (resp := client.get("/readyz")).text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert resp.status_code == 503
    detail = resp.json()["detail"]
    assert f"'{bottleneck}' checkpoint" in detail and "produces no codes" in detail
    resp = client.post("/encode", json={"embeddings": [[0.05] * 384]})
    assert resp.status_code == 503 and "produces no codes" in resp.json()["detail"]


def test_service_serves_a_residual_vq_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = save_checkpoint(build_model(TINY.model_copy(update={"bottleneck": "residual_vq"})),
                           tmp_path / "r.safetensors")
    monolith = Monolith.load(path)
    app = create_app(Settings(data_dir=tmp_path / "data", load_text_model=False), monolith=monolith)
    x = unit_rows(20)
    with TestClient(app) as client:
        assert wait_ready(client).status_code == 200
        codes = client.post("/encode", json={"embeddings": x.tolist()}).json()["codes"]
        assert np.array_equal(np.asarray(codes), monolith.encode(x))
        decoded = client.post("/decode", json={"codes": codes}).json()["embeddings"]
        assert np.allclose(decoded, monolith.decode(np.asarray(codes)), atol=1e-5)
        assert client.put("/collections/r").status_code == 201
        items = [{"id": f"d{i}", "embedding": row.tolist()} for i, row in enumerate(x)]
        assert client.post("/collections/r/items", json={"items": items}).status_code == 200
        resp = client.post("/collections/r/search", json={"embeddings": x[:2].tolist(), "k": 3, "candidates": 20,
                                                                   "rescore": False})
        assert resp.status_code == 200, resp.text
        hits = resp.json()["results"]
    # every item re-ranked: the answer is the exact top 3 by cosine to the decoded vectors
    x_hat = monolith.decode(monolith.encode(x))
    scores = x[:2] @ (x_hat / np.linalg.norm(x_hat, axis=1, keepdims=True)).T
    for q, row in enumerate(hits):
        assert [h["id"] for h in row] == [f"d{i}" for i in np.argsort(-scores[q])[:3]]
        assert np.allclose([h["score"] for h in row], np.sort(scores[q])[::-1][:3], atol=1e-4)

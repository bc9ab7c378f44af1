"""Codebook health (both sources), its plots, the probes and the Prometheus metrics."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import AppFactory, unit_rows, wait_ready
from vqvae.api import Monolith
from vqvae.health import codebook_health


def test_probes(client: TestClient, monolith: Monolith) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["model"]["sha256"] == monolith.sha256


def test_reference_health_is_the_checkpoints_counts(client: TestClient, monolith: Monolith) -> None:
    if "reference_counts" not in monolith.metadata:
        pytest.skip("this checkpoint stores no reference counts (the 404 is tested elsewhere)")
    resp = client.get("/codebook/health", params={"source": "reference"})
    assert resp.status_code == 200
    body = resp.json()
    expected = codebook_health(np.asarray(monolith.metadata["reference_counts"])).model_dump()
    assert body == {**expected, "source": "reference", "drift": None}  # drift is traffic's against this


def test_traffic_health_counts_codes_served(client: TestClient, monolith: Monolith) -> None:
    before = client.get("/codebook/health").json()
    assert before["source"] == "traffic"
    assert before["total_assignments"] == 0
    assert before["status"] == "insufficient_data"  # vqvae.health's verdict on no data

    x = unit_rows(40, seed=20)
    client.post("/encode", json={"embeddings": x[:15].tolist()})
    client.post("/encode", content=_npy(x[15:]), headers={"Content-Type": "application/x-npy"})
    client.post("/decode", json={"codes": [[1, 2, 3, 4]]})  # decoding assigns no codes

    codes = monolith.encode(x)
    counts = np.stack([np.bincount(codes[:, h], minlength=monolith.config.codebook_size)
                       for h in range(monolith.config.num_heads)])
    body = client.get("/codebook/health", params={"source": "traffic"}).json()
    drift = body.pop("drift")
    assert body == {**codebook_health(counts).model_dump(), "source": "traffic"}
    assert drift["vectors"] == 40 and drift["status"] == "insufficient_data"  # 40 ≪ 20 per code
    np.testing.assert_array_equal(client.app.state.service.batcher.traffic_counts, counts)


def _npy(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize("source", ["traffic", "reference"])
def test_svg_plot_is_labelled(client: TestClient, source: str) -> None:
    client.post("/encode", json={"embeddings": unit_rows(64, seed=21).tolist()})
    resp = client.get("/codebook/health.svg", params={"source": source})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("image/svg+xml")
    svg = resp.text
    assert "<svg" in svg
    for label in ("rank–frequency", "rank of code", "times assigned", "head 0", "Zipf fit", "α", "R²"):
        assert label in svg, label


def test_png_plot(client: TestClient) -> None:
    resp = client.get("/codebook/health.png", params={"source": "reference"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/png"
    assert resp.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert client.get("/codebook/health.png", params={"source": "reference"}).content == resp.content


def test_plot_with_no_traffic_says_so(client: TestClient) -> None:
    svg = client.get("/codebook/health.svg").text
    assert "no codes assigned yet" in svg


def test_metrics_exposition(client: TestClient, monolith: Monolith) -> None:
    client.post("/encode", json={"embeddings": unit_rows(5, seed=22).tolist()})
    client.post("/decode", json={"codes": [[0, 1, 2, 3], [4, 5, 6, 7]]})
    client.post("/encode", json={"embeddings": []})
    client.get("/codebook/health")
    text = client.get("/metrics").text
    assert 'monolith_http_requests_total{method="POST",route="/encode",status="200"} 1.0' in text
    assert 'monolith_http_requests_total{method="POST",route="/encode",status="422"} 1.0' in text
    assert 'monolith_http_request_duration_seconds_bucket{le="0.5",method="POST",route="/decode"}' in text
    assert "monolith_vectors_encoded_total 5.0" in text
    assert "monolith_vectors_decoded_total 2.0" in text
    assert 'monolith_batch_size_count{op="encode"}' in text
    assert "monolith_ready 1.0" in text
    for h in range(monolith.config.num_heads):
        assert f'monolith_code_usage_ratio{{head="{h}"}}' in text
        assert f'monolith_code_entropy_bits{{head="{h}"}}' in text


def test_unknown_paths_share_one_metrics_label(client: TestClient) -> None:
    for i in range(3):
        client.get(f"/random-{i}")
    text = client.get("/metrics").text
    assert 'route="unmatched",status="404"} 3.0' in text
    assert "random-1" not in text


def test_apps_have_separate_registries(make_client: AppFactory) -> None:
    a, b = make_client(), make_client()
    a.post("/encode", json={"embeddings": unit_rows(3).tolist()})
    assert "monolith_vectors_encoded_total 3.0" in a.get("/metrics").text
    assert "monolith_vectors_encoded_total 0.0" in b.get("/metrics").text


def test_collections_router_is_mounted_behind_auth(monolith: Monolith, tmp_path) -> None:
    app = create_app(Settings(data_dir=tmp_path, load_text_model=False, api_key="k"), monolith=monolith)
    with TestClient(app) as client:
        assert client.get("/collections").status_code == 401
        wait_ready(client)
        assert client.get("/collections", headers={"Authorization": "Bearer k"}).status_code == 200


def test_body_limit_refusals_are_labelled_with_the_route(make_client: AppFactory) -> None:
    client = make_client(max_body_bytes=2048)
    assert client.post("/decode", content=b"x" * 4096).status_code == 413
    assert 'route="/decode",status="413"} 1.0' in client.get("/metrics").text

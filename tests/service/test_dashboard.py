"""The pages and their assets without a browser, the drift in /codebook/health, and the plots.

(tests/service/test_browser.py drives the same pages in headless Chromium where one is installed.)
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.routes import dashboard
from tests.service.conftest import AppFactory, unit_rows
from vqvae.api import Monolith

KEY = "dash-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REAL = Path(__file__).resolve().parents[1] / "data" / "real_sample.npy"


@pytest.fixture
def locked(make_client: AppFactory) -> TestClient:
    return make_client(api_key=KEY)


def test_pages_are_shells_served_without_the_key(locked: TestClient, monolith: Monolith) -> None:
    for path, marker in (("/dashboard", "Monolith dashboard"), ("/docs", "swagger-ui")):
        resp = locked.get(path)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        assert marker in resp.text
        assert monolith.sha256 not in resp.text  # no data in the shell
        csp = resp.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-eval" not in csp
        assert "<script>" not in resp.text  # no inline script: the CSP would refuse it
        for src in re.findall(r'(?:src|href)="([^"]+)"', resp.text):
            assert src.startswith(("/", "data:")), f"{path} loads {src} from elsewhere"
            if src.startswith("/"):
                assert locked.get(src).status_code == 200, src
    # The data behind them still needs the key.
    for path in ("/model", "/codebook/health", "/collections", "/openapi.json", "/codebook/health.svg"):
        assert locked.get(path).status_code == 401, path
        assert locked.get(path, headers=AUTH).status_code == 200, path


def test_static_assets_name_no_other_origin(locked: TestClient) -> None:
    for name in ("dashboard.js", "auth.js", "docs.js", "dashboard.css"):
        text = locked.get(f"/static/{name}").text
        assert not re.search(r"https?://", text), name
    bundle = locked.get("/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text
    assert locked.get("/swagger-ui/swagger-ui.css").status_code == 200
    assert locked.get("/static/../app.py").status_code == 404


def test_docs_say_what_is_missing_without_swagger_files(locked: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashboard, "swagger_ui_dir", lambda: None)
    resp = locked.get("/docs")
    assert resp.status_code == 501 and "fastapi-offline" in resp.text


def test_swagger_files_come_from_an_installed_package() -> None:
    folder = dashboard.swagger_ui_dir()
    assert folder is not None, "fastapi-offline (a dependency) ships Swagger UI's files"
    assert all((folder / name).is_file() for name in dashboard.SWAGGER_FILES)


def _encode_in_passes(client: TestClient, x: np.ndarray, rows: int) -> None:
    for i in range(0, len(x), rows):
        assert client.post("/encode", json={"embeddings": x[i:i + rows].tolist()}).status_code == 200


def test_health_waits_for_enough_counts(client: TestClient) -> None:
    client.post("/encode", json={"embeddings": unit_rows(1).tolist()})
    body = client.get("/codebook/health").json()
    assert body["status"] == "insufficient_data"  # not `collapsed` after one request
    assert body["min_vectors"] == 20 * 256 and "1 vectors counted" in body["reasons"][0]
    assert body["drift"]["status"] == "insufficient_data"
    assert client.get("/codebook/health", params={"source": "reference"}).json()["drift"] is None


def test_drift_says_when_vectors_are_not_the_models(make_client: AppFactory, monolith: Monolith) -> None:
    """Real all-MiniLM-L6-v2 vectors reconstruct as on the reference; the same vectors in a
    rotated basis (what another 384-d model's look like to this checkpoint) do not."""
    real = np.load(REAL)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((real.shape[1], real.shape[1])))
    own = make_client()
    _encode_in_passes(own, real, 128)
    drift = own.get("/codebook/health").json()["drift"]
    assert drift["status"] == "ok", drift
    assert drift["cosine_vectors"] >= 256 and drift["reconstruction_cosine"] > drift["cosine_threshold"]
    assert drift["reference_cosine"] == pytest.approx(monolith.metadata["metrics"]["cosine"])

    foreign = make_client()
    _encode_in_passes(foreign, (real @ rotation).astype(np.float32), 128)
    drift = foreign.get("/codebook/health").json()["drift"]
    assert drift["status"] == "drifted" and drift["reconstruction_cosine"] < 0.4
    assert "likely another embedding model" in drift["reasons"][0]


def _svg(client: TestClient, source: str) -> ET.Element:
    resp = client.get("/codebook/health.svg", params={"source": source})
    assert resp.status_code == 200
    return ET.fromstring(resp.text)


def test_svg_plot_has_fit_uniform_line_and_reference(client: TestClient, monolith: Monolith) -> None:
    client.post("/encode", json={"embeddings": np.load(REAL).tolist()})
    ns = {"s": "http://www.w3.org/2000/svg"}
    traffic = _svg(client, "traffic")
    heads = traffic.findall("s:g[@class='head']", ns)
    assert len(heads) == monolith.config.num_heads
    for head in heads:
        assert head.find("s:line[@class='uniform']", ns) is not None
        assert head.find("s:line[@class='fit']", ns) is not None
        assert head.find("s:polyline[@class='reference']", ns) is not None  # traffic vs reference
        assert len(head.findall("s:circle", ns)) > 100
    text = " ".join(t.text or "" for t in traffic.iter("{http://www.w3.org/2000/svg}text"))
    assert "uniform usage" in text and "Zipf fit: α =" in text
    reference = _svg(client, "reference")
    assert reference.find(".//s:polyline[@class='reference']", ns) is None


def test_png_without_matplotlib_is_501(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    resp = client.get("/codebook/health.png", params={"source": "traffic"})
    assert resp.status_code == 501 and "monolith[plots]" in resp.json()["detail"]
    assert client.get("/codebook/health.svg").status_code == 200  # the SVG needs nothing


def test_asset_requests_are_labelled_by_their_mount(client: TestClient) -> None:
    for path in ("/static/dashboard.js", "/static/missing.js", "/swagger-ui/swagger-ui.css"):
        client.get(path)
    text = client.get("/metrics").text
    assert 'route="/static",status="200"} 1.0' in text and 'route="/static",status="404"} 1.0' in text
    assert 'route="/swagger-ui",status="200"} 1.0' in text
    assert "dashboard.js" not in text

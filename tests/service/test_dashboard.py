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
from tests.service.collections.test_routes import FakeEmbedder
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


# -- what the card and the dashboard show ----------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


class _DirEmbedder(FakeEmbedder):
    """Texts like FakeEmbedder, loaded (as it were) from an absolute folder."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir


def test_card_and_dashboard_show_no_server_paths(make_client: AppFactory, monolith: Monolith,
                                                 tmp_path: Path) -> None:
    text_dir = tmp_path / "models" / "all-MiniLM-L6-v2"
    client = make_client(embedder=_DirEmbedder(text_dir))
    assert client.put("/collections/docs").status_code == 201
    card = client.get("/model").json()
    assert card["checkpoint"] == monolith.checkpoint.path.name == "monolith-wiki.safetensors"
    assert card["sha256"] == monolith.sha256
    assert card["text_model"] == "all-MiniLM-L6-v2"
    answers = {path: client.get(path) for path in ("/model", "/codebook/health", "/codebook/health?source=reference",
                                                   "/collections", "/dashboard", "/static/dashboard.js")}
    for path, resp in answers.items():
        assert resp.status_code == 200, path
        for secret in (str(REPO), str(tmp_path), str(monolith.checkpoint.path)):
            assert secret not in resp.text, (path, secret)
        if resp.headers["content-type"].startswith("application/json"):
            absolute = [s for s in _strings(resp.json()) if s.startswith("/") and len(s) > 1]
            assert absolute == [], (path, absolute)


def test_card_drops_absolute_paths_recorded_in_a_checkpoint() -> None:
    from service.card import _public

    recorded = {"train_files": ["/home/alice/data/wiki.train.npy", "data/emb/debian.train.npy"],
                "out_dir": "/srv/runs/x", "note": "a/b", "n": 3}
    assert _public(recorded) == {"train_files": ["wiki.train.npy", "data/emb/debian.train.npy"],
                                 "out_dir": "x", "note": "a/b", "n": 3}


SHOW_MODEL = r"""
const fs = require("fs"), vm = require("vm");
const node = (tag) => ({tag, children: [], textContent: "", append(...c) { this.children.push(...c); },
                        replaceChildren() { this.children = []; }});
const nodes = {};
const document = {getElementById: (id) => (nodes[id] = nodes[id] || node("div")), createElement: node,
                  addEventListener() {}};
const ctx = vm.createContext({document, MonolithAuth: {}, console});
vm.runInContext(fs.readFileSync(process.argv[2], "utf8") + "\nthis.showModel = showModel;", ctx);
ctx.showModel(JSON.parse(fs.readFileSync(0, "utf8")));
const kids = nodes["model-card"].children;
const rows = [];
for (let i = 0; i < kids.length; i += 2) rows.push([kids[i].textContent, kids[i + 1].textContent, kids[i + 1].id]);
process.stdout.write(JSON.stringify(rows));
"""


def test_dashboard_says_which_split_each_number_is_measured_on(client: TestClient, monolith: Monolith,
                                                              tmp_path: Path) -> None:
    """The card's recall (validation split, 0.495) and README's (test split, 0.470) are labelled."""
    import json
    import shutil
    import subprocess

    card = client.get("/model").json()
    assert card["metrics_split"] == "validation"
    assert "validation split" in client.get("/openapi.json").json()["components"]["schemas"]["ModelCard"][
        "properties"]["metrics"]["description"]
    assert card["metrics"]["recall_10@10"] == pytest.approx(0.4947)
    assert card["test_recall"]["wordnet"] == pytest.approx(0.4698) and card["test_recall"]["debian"] == 0.5
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the dashboard's rows are checked in tests/service/test_browser.py")
    script = tmp_path / "show_model.js"
    script.write_text(SHOW_MODEL)
    out = subprocess.run([node, str(script), str(dashboard.STATIC_DIR / "dashboard.js")], input=json.dumps(card),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {dd_id: (label, value) for label, value, dd_id in json.loads(out.stdout)}
    assert rows["model-recall"] == ("recall 10@10 / 1@10 / 10@100, validation split", "0.495 / 0.822 / 0.935")
    assert rows["model-reconstruction-cosine"][0] == "reconstruction cosine, validation split"
    label, value = rows["model-test-recall"]
    assert "test" in label and "wordnet 0.470" in value and "debian 0.500" in value
    assert rows["model-checkpoint"][1] == "monolith-wiki.safetensors"
    assert rows["model-sha256"][1] == monolith.sha256


def test_zipf_fit_line_stays_inside_its_panel(monolith: Monolith) -> None:
    """A concave usage curve (a flat top, then a steep fall) fits a line that starts far above
    the largest count: drawn unclipped, it crossed the panel's title and the panel above."""
    from service.plots import rank_frequency_plot
    from vqvae.health import codebook_health

    k = 256
    steep = np.r_[np.full(16, 10_000), np.maximum(1, (10_000 * np.logspace(0, -4, k - 16))).astype(np.int64)]
    zipf = np.maximum(1, (5_000 / np.arange(1, k + 1))).astype(np.int64)
    counts = np.stack([steep, zipf, steep[::-1], zipf])
    health = codebook_health(counts)
    assert all(h.zipf_alpha is not None for h in health.heads)
    ns = {"s": "http://www.w3.org/2000/svg"}
    root = ET.fromstring(rank_frequency_plot(counts, health, "svg", "clipping"))
    for head in root.findall("s:g[@class='head']", ns):
        box = head.find("s:rect", ns)  # the plot area's frame, drawn first
        left, top = float(box.get("x")), float(box.get("y"))
        right, bottom = left + float(box.get("width")), top + float(box.get("height"))
        line = head.find("s:line[@class='fit']", ns)
        assert line is not None, head.get("data-head")
        for x, y in ((line.get("x1"), line.get("y1")), (line.get("x2"), line.get("y2"))):
            assert left <= float(x) <= right and top <= float(y) <= bottom, (head.get("data-head"), x, y)


CODES_OF = r"""
const fs = require("fs"), vm = require("vm");
const ctx = vm.createContext({document: {getElementById() { return {}; }, addEventListener() {}}, MonolithAuth: {},
                              console});
vm.runInContext(fs.readFileSync(process.argv[2], "utf8") + "\nthis.codesOf = codesOf;", ctx);
process.stdout.write(JSON.stringify(JSON.parse(fs.readFileSync(0, "utf8")).map((c) => ctx.codesOf(c))));
"""


def test_dashboard_says_whose_codes_a_collection_holds(tmp_path: Path) -> None:
    """The collections table: 'generic' before a fit (or after one not applied), the fitted model's
    weights and its held-out recall against the generic checkpoint's once fitted."""
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the dashboard's rows are checked in tests/service/test_browser.py")
    script = tmp_path / "codes_of.js"
    script.write_text(CODES_OF)
    report = {"adapted_recall": 0.5791, "generic_recall": 0.3192}
    cols = [{"fit": None}, {"fit": {"model": None, "report": {**report, "applied": False}}},
            {"fit": {"model": {"weights_sha256": "e1216272869b" + "0" * 52}, "report": report}}]
    out = subprocess.run([node, str(script), str(dashboard.STATIC_DIR / "dashboard.js")], input=json.dumps(cols),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["generic", "generic", "fitted e1216272 (10@10 0.579 vs generic 0.319)"]

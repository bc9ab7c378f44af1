"""Drift of served traffic, end to end: one bulk request is judged on its own, the status never
says `ok` before the cosine is judged, and turning `drifted` is logged once and exported.

Real all-MiniLM-L6-v2 vectors (tests/data/real_sample.npy, 512 WordNet + 512 Debian) and texts
through the bundled text model; the foreign vectors are the real ones in a random orthonormal
basis, which is what another 384-d model's vectors look like to this checkpoint.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.batcher import FIDELITY_ROWS, fidelity_sample
from tests.service.conftest import AppFactory, unit_rows
from vqvae.drift import COSINE_REASON

REAL = Path(__file__).resolve().parents[1] / "data" / "real_sample.npy"
NPY = {"Content-Type": "application/x-npy"}
ROWS = 5875  # the reported request


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32))
    return buf.getvalue()


def real_like(rows: int, seed: int = 0) -> np.ndarray:
    """``rows`` unit vectors: the real sample, then slightly perturbed copies of it."""
    real = np.load(REAL)
    rng = np.random.default_rng(seed)
    x = real[np.arange(rows) % len(real)].astype(np.float64)
    x[len(real):] += rng.normal(0, 0.01, (rows - len(real), x.shape[1])) if rows > len(real) else 0
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rotation(dim: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name + (f"{{{selector}}}" if selector else "")) + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def drift_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "service.drift" and r.levelno == logging.WARNING]


def test_fidelity_sample_spreads_over_the_whole_pass() -> None:
    assert fidelity_sample(10).tolist() == list(range(10))
    idx = fidelity_sample(ROWS)
    assert len(idx) == FIDELITY_ROWS >= 256 and len(set(idx.tolist())) == len(idx)
    gap = -(-ROWS // FIDELITY_ROWS)  # evenly spread, the last rows sampled too
    assert idx[0] == 0 and np.diff(idx).max() <= gap and idx[-1] >= ROWS - gap


def test_one_rotated_request_drifts_logs_once_and_exports(client: TestClient,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The reported case: 5,875 real vectors under a random rotation in ONE .npy request."""
    x = (real_like(ROWS) @ rotation(384)).astype(np.float32)
    assert metric(client, "monolith_drift_status", status="insufficient_data") == 1.0
    with caplog.at_level(logging.WARNING, logger="service.drift"):
        assert client.post("/encode", content=_npy(x), headers=NPY).status_code == 200
        drift = client.get("/codebook/health").json()["drift"]
        assert drift["status"] == "drifted" and drift["cosine_status"] == "drifted", drift
        assert drift["cosine_vectors"] >= 256 and drift["reconstruction_cosine"] < 0.35
        assert drift["reasons"][0].startswith(COSINE_REASON) and drift["needs"] == {}  # 5,875 ≥ 5,120
        # Usage alone would not have told: another model's codes spread much like the reference's.
        assert drift["usage_status"] == "ok" and drift["js_divergence"] < drift["js_threshold"]
        warnings = drift_warnings(caplog)
        assert len(warnings) == 1 and "drifted" in warnings[0] and "reconstruction cosine" in warnings[0]
        # Still drifted: no second warning.
        assert client.post("/encode", content=_npy(x[:300]), headers=NPY).status_code == 200
        assert client.get("/codebook/health").json()["drift"]["status"] == "drifted"
        assert len(drift_warnings(caplog)) == 1
    assert metric(client, "monolith_drift_status", status="drifted") == 1.0
    assert metric(client, "monolith_drift_status", status="ok") == 0.0
    assert metric(client, "monolith_drift_transitions_total", status="drifted") == 1.0
    assert metric(client, "monolith_drift_reconstruction_cosine") < 0.35


def test_few_vectors_wait_and_say_how_many_more(client: TestClient) -> None:
    assert client.post("/encode", content=_npy(real_like(10)), headers=NPY).status_code == 200
    drift = client.get("/codebook/health").json()["drift"]
    assert drift["status"] == "insufficient_data" and drift["cosine_status"] == "insufficient_data"
    assert drift["needs"] == {"cosine": 256 - 10, "usage": 5120 - 10}
    assert drift["usage_status"] == "insufficient_data" and drift["deciding"] == ["cosine"]
    assert metric(client, "monolith_drift_status", status="insufficient_data") == 1.0


def test_genuine_vectors_in_bulk_are_ok(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """The checkpoint's own kinds of text, enough for both signals, in one request: ok."""
    with caplog.at_level(logging.WARNING, logger="service.drift"):
        assert client.post("/encode", content=_npy(real_like(6000)), headers=NPY).status_code == 200
        drift = client.get("/codebook/health").json()["drift"]
    assert drift["status"] == "ok" and drift["usage_status"] == "ok" and drift["needs"] == {}, drift
    assert drift["reconstruction_cosine"] > 0.65 and not drift_warnings(caplog)
    assert metric(client, "monolith_drift_status", status="ok") == 1.0


def _kinds() -> dict[str, list[str]]:
    subjects = ["The cat", "A developer", "My neighbour", "The committee", "Our team", "A student", "The bakery"]
    verbs = ["quickly fixed", "carefully reviewed", "happily sold", "accidentally deleted", "finally released"]
    objects = ["the broken fence", "a long report", "the database backup", "an old bicycle", "the garden",
               "the train schedule", "a handwritten letter", "the source code"]
    tails = ["yesterday.", "in the rain.", "after a long meeting.", "for the first time."]
    sentences = [" ".join(t) for t in itertools.product(subjects, verbs, objects, tails)]
    questions = [f"How do I {a} {b} in {c}?" for a, b, c in itertools.product(
        ["sort", "parse", "merge", "filter", "compress", "print"], ["a list", "a string", "a JSON file",
         "two dictionaries", "a CSV file", "a date", "a URL"], ["Python", "Java", "Rust", "Go", "bash", "SQL", "R"])]
    reviews = [f"{a} {b}, {c}." for a, b, c in itertools.product(
        ["This blender", "The hotel", "This laptop", "The restaurant", "This movie", "The headphones", "The app"],
        ["was amazing", "broke after a week", "is overpriced", "works as described", "arrived late",
         "is worth every penny"], ["would buy again", "never again", "five stars", "shipping was fast",
                                   "highly recommended", "not bad for the price", "my kids love it"])]
    code = [f"def {a}_{b}(x): return x.{c}()" for a, b, c in itertools.product(
        ["get", "set", "load", "parse", "make", "read", "write", "build"],
        ["user", "config", "data", "item", "path", "value"], ["strip", "lower", "split", "copy", "items", "keys"])]
    french = [f"{a} {b} {c}." for a, b, c in itertools.product(
        ["Le chat", "Mon frère", "La ville", "Notre équipe", "Le médecin", "Une étudiante", "Le gouvernement"],
        ["a mangé", "a visité", "a vendu", "a réparé", "a oublié", "a trouvé"],
        ["le gâteau", "la voiture", "un vieux livre", "la maison", "le rapport", "une lettre", "le jardin"])]
    return {"sentences": sentences, "questions": questions, "reviews": reviews, "code": code, "french": french}


@pytest.mark.parametrize("kind", list(_kinds()))
def test_genuine_text_of_other_kinds_does_not_alarm(make_client: AppFactory, embedder: Any, kind: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Texts through the server's own all-MiniLM-L6-v2, unlike the WordNet/Debian reference: their
    reconstruction stays far above another model's, so the cosine (which decides) says ok."""
    texts = _kinds()[kind]
    assert len(texts) >= 256
    client = make_client(embedder=embedder)
    with caplog.at_level(logging.WARNING, logger="service.drift"):
        assert client.post("/encode", json={"texts": texts}).status_code == 200
        drift = client.get("/codebook/health").json()["drift"]
    assert drift["status"] == "ok" and drift["cosine_status"] == "ok", drift
    assert drift["reconstruction_cosine"] > drift["cosine_threshold"] + 0.04
    assert not drift_warnings(caplog)
    assert metric(client, "monolith_drift_status", status="drifted") == 0.0


def test_drift_is_none_without_anything_to_compare(make_client: AppFactory, monolith: Any, tmp_path: Path) -> None:
    from vqvae.checkpoint import save_checkpoint

    path = save_checkpoint(monolith.model, tmp_path / "bare.safetensors")
    client = make_client(inject_model=False, checkpoint=path)
    client.post("/encode", content=_npy(unit_rows(300)), headers=NPY)
    assert client.get("/codebook/health").json()["drift"] is None
    assert "monolith_drift_status{" not in client.get("/metrics").text

"""In-process tests of /encode, /decode and /model: answers match the library exactly."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient

from tests.service.conftest import AppFactory, served, unit_rows
from vqvae.api import Monolith

NPY = {"Content-Type": "application/x-npy"}


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def load(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


def test_encode_embeddings_matches_library(client: TestClient, monolith: Monolith) -> None:
    x = unit_rows(7)
    resp = client.post("/encode", json={"embeddings": x.tolist()})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    np.testing.assert_array_equal(np.asarray(body["codes"]), monolith.encode(x))
    assert body["model"]["sha256"] == monolith.sha256
    assert "reconstructions" not in body


def test_encode_returns_reconstructions_equal_to_decode(client: TestClient, monolith: Monolith) -> None:
    x = unit_rows(3, seed=1)
    body = client.post("/encode", json={"embeddings": x.tolist(), "return_reconstructions": True}).json()
    recon = np.asarray(body["reconstructions"], dtype=np.float32)
    np.testing.assert_array_equal(recon, served(monolith.decode, monolith.encode(x)))


def test_single_unbatched_row_is_accepted(client: TestClient, monolith: Monolith) -> None:
    x = unit_rows(1, seed=2)
    body = client.post("/encode", json={"embeddings": x.tolist()}).json()
    assert np.asarray(body["codes"]).shape == (1, monolith.config.num_heads)


def test_decode_json_matches_library_exactly(client: TestClient, monolith: Monolith) -> None:
    cfg = monolith.config
    codes = np.random.default_rng(3).integers(0, cfg.codebook_size, (9, cfg.num_heads))
    resp = client.post("/decode", json={"codes": codes.tolist()})
    assert resp.status_code == 200, resp.text
    out = np.asarray(resp.json()["embeddings"], dtype=np.float32)
    np.testing.assert_array_equal(out, served(monolith.decode, codes))


def test_npy_encode_and_decode_round_trip(client: TestClient, monolith: Monolith) -> None:
    x = unit_rows(600, seed=4)
    resp = client.post("/encode", content=npy(x), headers=NPY)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-npy"
    codes = load(resp.content)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, monolith.encode(x))

    resp = client.post("/decode", content=npy(codes), headers=NPY)
    assert resp.status_code == 200, resp.text
    out = load(resp.content)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, served(monolith.decode, codes))


def test_npy_decode_accepts_wider_integer_dtypes(client: TestClient, monolith: Monolith) -> None:
    codes = np.array([[0, 1, 2, monolith.config.codebook_size - 1]], dtype=np.int64)
    resp = client.post("/decode", content=npy(codes), headers=NPY)
    assert resp.status_code == 200, resp.text
    np.testing.assert_array_equal(load(resp.content), served(monolith.decode, codes))


def test_model_card_comes_from_the_checkpoint(client: TestClient, monolith: Monolith) -> None:
    card = client.get("/model").json()
    assert card["sha256"] == monolith.sha256
    assert card["architecture"] == monolith.config.architecture
    assert card["config"] == monolith.config.model_dump()
    assert card["bytes_per_vector"] == monolith.config.num_heads
    assert card["provenance"] == monolith.metadata.get("provenance", {})
    assert card["metrics"] == monolith.metadata.get("metrics", {})
    assert card["has_reference_counts"] == ("reference_counts" in monolith.metadata)
    settings = client.app.state.service.settings
    assert card["limits"]["max_batch"] == settings.max_batch
    assert card["text_model"] is None  # this app runs without the text model


def test_texts_match_library(make_client: AppFactory, embedder, monolith: Monolith) -> None:
    client = make_client(embedder=embedder)
    texts = ["a cat sits on the mat", "quarterly revenue grew by 4%", "Die Katze schläft."]
    resp = client.post("/encode", json={"texts": texts, "return_reconstructions": True})
    assert resp.status_code == 200, resp.text
    expected = monolith.encode(embedder.embed(texts))
    np.testing.assert_array_equal(np.asarray(resp.json()["codes"]), expected)
    assert client.get("/model").json()["text_model"]
    assert client.get("/readyz").json()["text_model"] is True


def test_encode_candidates_setting_selects_the_encoding(make_client: AppFactory, monolith: Monolith) -> None:
    x = unit_rows(64, seed=7)
    nearest = Monolith(monolith.checkpoint, encoding=monolith.encoding.model_copy(update={"candidates": 0}))
    refined = Monolith(monolith.checkpoint, encoding=monolith.encoding.model_copy(update={"candidates": 6}))
    for monolith_like, candidates in ((nearest, 0), (refined, 6)):
        client = make_client(inject_model=False, encode_candidates=candidates)
        assert client.get("/model").json()["encoding"]["candidates"] == candidates
        codes = np.asarray(client.post("/encode", json={"embeddings": x.tolist()}).json()["codes"])
        np.testing.assert_array_equal(codes, served(monolith_like.encode, x))
    assert not np.array_equal(nearest.encode(x), refined.encode(x))

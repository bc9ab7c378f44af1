"""The real server process (``python -m service``) over loopback, and the Python clients."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io

import httpx
import numpy as np
import pytest

from service.client import AsyncMonolithClient, MonolithClient, MonolithError
from tests.service.conftest import served, unit_rows
from vqvae.api import Monolith
from vqvae.health import codebook_health


def test_http_encode_texts_and_embeddings(server: str, monolith: Monolith) -> None:
    with httpx.Client(base_url=server, timeout=30) as http:
        texts = ["the server embeds this sentence", "and this one"]
        resp = http.post("/encode", json={"texts": texts})
        assert resp.status_code == 200, resp.text
        text_codes = np.asarray(resp.json()["codes"])
        assert text_codes.shape == (2, monolith.config.num_heads)
        # the same texts again: the same codes (deterministic, whatever the batch)
        assert np.asarray(http.post("/encode", json={"texts": texts[::-1]}).json()["codes"]).tolist() == (
            text_codes[::-1].tolist()
        )
        x = unit_rows(10, seed=30)
        body = http.post("/encode", json={"embeddings": x.tolist()}).json()
        np.testing.assert_array_equal(np.asarray(body["codes"]), monolith.encode(x))
        assert body["model"]["sha256"] == monolith.sha256
        assert body["model"]["weights_sha256"] == monolith.checkpoint.metadata["tensors_sha256"]


def test_http_decode_matches_library_exactly(server: str, monolith: Monolith) -> None:
    codes = np.random.default_rng(31).integers(0, monolith.config.codebook_size, (20, monolith.config.num_heads))
    with httpx.Client(base_url=server, timeout=30) as http:
        out = http.post("/decode", json={"codes": codes.tolist()}).json()["embeddings"]
        np.testing.assert_array_equal(np.asarray(out, dtype=np.float32), served(monolith.decode, codes))
        buf = io.BytesIO()
        np.save(buf, codes.astype(np.uint8))
        resp = http.post("/decode", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
        np.testing.assert_array_equal(np.load(io.BytesIO(resp.content)), served(monolith.decode, codes))


def test_http_health_plot_and_metrics(server: str, monolith: Monolith) -> None:
    with httpx.Client(base_url=server, timeout=30) as http:
        http.post("/encode", json={"embeddings": unit_rows(30, seed=32).tolist()})
        traffic = http.get("/codebook/health", params={"source": "traffic"}).json()
        assert traffic["source"] == "traffic"
        assert traffic["total_assignments"] >= 30 * monolith.config.num_heads
        reference = http.get("/codebook/health", params={"source": "reference"}).json()
        expected = codebook_health(np.asarray(monolith.metadata["reference_counts"])).model_dump()
        assert reference == {**expected, "source": "reference", "drift": None}
        svg = http.get("/codebook/health.svg")
        assert svg.status_code == 200 and "Zipf fit" in svg.text
        png = http.get("/codebook/health.png", params={"source": "reference"})
        assert png.content.startswith(b"\x89PNG")
        metrics = http.get("/metrics").text
        assert 'route="/encode",status="200"' in metrics
        assert "monolith_vectors_encoded_total" in metrics
        assert 'monolith_code_entropy_bits{head="0"}' in metrics
        assert http.get("/healthz").json() == {"status": "ok"}


def test_concurrent_http_requests_are_coalesced(server: str, monolith: Monolith) -> None:
    x = unit_rows(24, seed=33)

    def passes() -> float:
        text = httpx.get(f"{server}/metrics").text
        line = next(ln for ln in text.splitlines() if ln.startswith('monolith_batch_size_count{op="encode"}'))
        return float(line.split()[-1])

    before = passes()
    with httpx.Client(base_url=server, timeout=30) as http, concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: http.post("/encode", json={"embeddings": x[i : i + 1].tolist()}),
                                range(len(x))))
    codes = np.concatenate([np.asarray(a.json()["codes"]) for a in answers])
    np.testing.assert_array_equal(codes, monolith.encode(x))
    assert passes() - before < len(x)


def test_sync_client(server: str, monolith: Monolith) -> None:
    small, big = unit_rows(5, seed=34), unit_rows(700, seed=35)
    with MonolithClient(server, npy_threshold=256) as client:
        np.testing.assert_array_equal(client.encode(small), monolith.encode(small))
        big_codes = client.encode(big)  # .npy path
        assert big_codes.dtype == np.uint8
        np.testing.assert_array_equal(big_codes, monolith.encode(big))
        np.testing.assert_array_equal(client.decode(big_codes), served(monolith.decode, big_codes))
        np.testing.assert_array_equal(client.decode(big_codes[:3]), served(monolith.decode, big_codes[:3]))
        text_codes = client.encode_text(["hello world", "bonjour"])
        assert text_codes.shape == (2, monolith.config.num_heads)
        assert client.health("reference")["source"] == "reference"
        assert client.health()["total_assignments"] > 0
        assert client.model()["sha256"] == monolith.sha256
        assert client.ready()
        with pytest.raises(MonolithError) as err:
            client.decode([[0, 1, 2, 999]])
        assert err.value.status == 422 and "255" in str(err.value)
        with pytest.raises(MonolithError) as err:
            client.encode(np.zeros((2, 3), np.float32))
        assert err.value.status == 422 and "384" in str(err.value)


def test_async_client(server: str, monolith: Monolith) -> None:
    x = unit_rows(300, seed=36)

    async def main() -> tuple[np.ndarray, list[np.ndarray], dict, np.ndarray]:
        async with AsyncMonolithClient(server, npy_threshold=100) as client:
            bulk = await client.encode(x)
            singles = await asyncio.gather(*(client.encode(x[i]) for i in range(8)))
            card = await client.model()
            recon = await client.decode(bulk[:2])
            assert await client.ready()
            assert (await client.health("traffic"))["source"] == "traffic"
            return bulk, singles, card, recon

    bulk, singles, card, recon = asyncio.run(main())
    np.testing.assert_array_equal(bulk, monolith.encode(x))
    np.testing.assert_array_equal(np.concatenate(singles), monolith.encode(x[:8]))
    assert card["sha256"] == monolith.sha256 and card["weights_sha256"] == monolith.weights_sha256
    np.testing.assert_array_equal(recon, served(monolith.decode, bulk[:2]))


def test_start_up_log_has_no_faiss_loader_lines() -> None:
    """faiss's loader logs each SIMD build it tries at INFO ("Could not load library with AVX512
    support due to: ModuleNotFoundError…"), which read like errors in the server's log. The
    server's logging set-up, run before service.app imports faiss, quietens it (not at debug)."""
    import logging
    import subprocess
    import sys

    from service.app import create_app
    from service.settings import Settings

    script = ("import sys; from service.server import configure_logging; configure_logging(sys.argv[1]); "
              "import service.app")
    quiet = subprocess.run([sys.executable, "-c", script, "info"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "faiss" not in quiet.stderr, quiet.stderr[-2000:]
    loud = subprocess.run([sys.executable, "-c", script, "debug"], capture_output=True, text=True, timeout=300)
    assert "faiss.loader" in loud.stderr  # the check above would see them
    create_app(Settings(load_text_model=False))  # in-process apps (uvicorn --factory workers) too
    assert logging.getLogger("faiss.loader").getEffectiveLevel() == logging.WARNING

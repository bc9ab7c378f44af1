"""Property tests: no body, however odd, gets a 5xx; the server keeps serving afterwards."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import unit_rows, wait_ready
from vqvae.api import Monolith

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
floats = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.integers(-5, 5)


def _row(n: int, value: float | int, at: int) -> list[float | int]:
    """A row of n small values with one fuzzed value: full random 384-lists are slow to draw."""
    row: list[float | int] = [0.05] * n
    if n:
        row[at % n] = value
    return row


rows = st.builds(_row, st.sampled_from([0, 1, 383, 384, 385]), floats, st.integers(0, 400))
texts = st.lists(st.text(max_size=30) | st.integers(), min_size=0, max_size=3)
encode_bodies = (
    st.fixed_dictionaries({"embeddings": st.lists(rows, max_size=3)}, optional={
        "return_reconstructions": json_values, "texts": texts})
    | st.fixed_dictionaries({"texts": texts}, optional={"return_reconstructions": st.booleans()})
    | json_values
)
codes = st.integers(-300, 300) | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=3)
decode_bodies = st.fixed_dictionaries({"codes": st.lists(st.lists(codes, max_size=6), max_size=4)}) | json_values


@pytest.fixture(scope="module")
def fuzz_client(monolith: Monolith, embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings_ = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), max_text_chars=20, max_batch=3,
                         max_body_bytes=64 * 1024)
    with TestClient(create_app(settings_, monolith=monolith, embedder=embedder)) as client:
        assert wait_ready(client).status_code == 200
        yield client
    # the server must still answer a good request after everything thrown at it


def _check(resp) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code != 200:
        assert "detail" in resp.json()


@FUZZ
@given(body=encode_bodies)
def test_encode_json_never_5xx(fuzz_client: TestClient, body: object) -> None:
    _check(fuzz_client.post("/encode", content=json.dumps(body), headers={"Content-Type": "application/json"}))


@FUZZ
@given(body=decode_bodies)
def test_decode_json_never_5xx(fuzz_client: TestClient, body: object) -> None:
    _check(fuzz_client.post("/decode", content=json.dumps(body), headers={"Content-Type": "application/json"}))


def _npy_prefix() -> bytes:
    buf = io.BytesIO()
    np.save(buf, unit_rows(2))
    return buf.getvalue()


@FUZZ
@given(cut=st.integers(0, 400), noise=st.binary(max_size=300), path=st.sampled_from(["/encode", "/decode"]))
def test_npy_bodies_never_5xx(fuzz_client: TestClient, cut: int, noise: bytes, path: str) -> None:
    body = _npy_prefix()[:cut] + noise
    _check(fuzz_client.post(path, content=body, headers={"Content-Type": "application/x-npy"}))


def test_still_serving_after_fuzz(fuzz_client: TestClient, monolith: Monolith) -> None:
    x = unit_rows(2, seed=40)
    resp = fuzz_client.post("/encode", json={"embeddings": x.tolist()})
    assert resp.status_code == 200
    np.testing.assert_array_equal(np.asarray(resp.json()["codes"]), monolith.encode(x))

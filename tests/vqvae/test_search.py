"""CodeIndex: ADC equals brute force in both kernels; add/replace/remove keep rows dense;
re-ranking orders by the exact cosine of decoded candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqvae.config import ModelConfig
from vqvae.decoding import CodeDecoder
from vqvae.registry import build_model
from vqvae.search import (
    METRIC_COSINE,
    METRIC_LATENT_COSINE,
    METRIC_NEG_L2,
    CodeIndex,
    lookup_tables,
    smallest_k,
    swap_remove_plan,
)

H, K, D = 4, 256, 16


def make_codebooks(seed: int = 0, k: int = K, unit: bool = False) -> np.ndarray:
    cb = np.random.default_rng(seed).standard_normal((H, k, D)).astype(np.float32)
    return cb / np.linalg.norm(cb, axis=-1, keepdims=True) if unit else cb


def brute_force(z: np.ndarray, codes: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """Squared distance of every query to every stored row's quantised latent."""
    zq = np.concatenate([cb[h][codes[:, h]] for h in range(H)], axis=1)
    return ((z[:, None, :] - zq[None]) ** 2).sum(-1)


@pytest.fixture
def filled() -> tuple[CodeIndex, np.ndarray, np.ndarray]:
    cb = make_codebooks()
    rng = np.random.default_rng(1)
    codes = rng.integers(0, K, (3000, H)).astype(np.uint8)
    index = CodeIndex(cb)
    index.add(codes)
    return index, codes, cb


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_adc_matches_brute_force(filled, backend) -> None:
    index, codes, cb = filled
    z = np.random.default_rng(2).standard_normal((7, H * D)).astype(np.float32)
    dist, rows = index.adc(z, 25, backend=backend)
    ref = brute_force(z, codes, cb)
    np.testing.assert_allclose(dist, np.sort(ref, axis=1)[:, :25], rtol=1e-4, atol=1e-3)
    # The rows returned have the distances returned.
    np.testing.assert_allclose(np.take_along_axis(ref, rows, 1), dist, rtol=1e-4, atol=1e-3)
    assert (np.diff(dist, axis=1) >= 0).all()


def test_numpy_and_faiss_kernels_agree(filled) -> None:
    index, _, _ = filled
    z = np.random.default_rng(3).standard_normal((5, H * D)).astype(np.float32)
    d1, _ = index.adc(z, 50, backend="numpy")
    d2, _ = index.adc(z, 50, backend="faiss")
    np.testing.assert_allclose(d1, d2, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_odd_head_count_and_small_codebook(backend) -> None:
    cb = np.random.default_rng(4).standard_normal((3, 10, 8)).astype(np.float32)
    codes = np.random.default_rng(5).integers(0, 10, (200, 3))
    index = CodeIndex(cb, backend=backend)
    index.add(codes)
    z = np.random.default_rng(6).standard_normal((4, 24)).astype(np.float32)
    zq = np.concatenate([cb[h][codes[:, h]] for h in range(3)], axis=1)
    ref = ((z[:, None] - zq[None]) ** 2).sum(-1)
    dist, _ = index.adc(z, 5)
    np.testing.assert_allclose(dist, np.sort(ref, 1)[:, :5], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_fewer_rows_than_k_are_padded(backend) -> None:
    index = CodeIndex(make_codebooks(), backend=backend)
    z = np.zeros((2, H * D), np.float32)
    res = index.search(z, 5)
    assert (res.rows == -1).all() and np.isneginf(res.scores).all()
    index.add(np.array([[1, 2, 3, 4], [5, 6, 7, 8]]))
    res = index.search(z, 5)
    assert sorted(res.rows[0, :2].tolist()) == [0, 1]
    assert (res.rows[:, 2:] == -1).all() and np.isneginf(res.scores[:, 2:]).all()


def test_lookup_tables_are_squared_distances() -> None:
    cb = make_codebooks(k=8)
    z = np.random.default_rng(7).standard_normal((3, H * D)).astype(np.float32)
    t = lookup_tables(z, cb)
    ref = ((z.reshape(3, H, 1, D) - cb[None]) ** 2).sum(-1)
    np.testing.assert_allclose(t, ref, rtol=1e-5, atol=1e-4)


def test_latent_cosine_score_is_mean_head_cosine() -> None:
    cb = make_codebooks(unit=True)
    index = CodeIndex(cb, latent_unit_heads=True)
    codes = np.random.default_rng(8).integers(0, K, (100, H))
    index.add(codes)
    z = np.random.default_rng(9).standard_normal((2, H, D)).astype(np.float32)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    res = index.search(z.reshape(2, -1), 3)
    assert res.metric == METRIC_LATENT_COSINE
    for q in range(2):
        for row, score in zip(res.rows[q], res.scores[q], strict=True):
            cos = np.mean([z[q, h] @ cb[h, codes[row, h]] for h in range(H)])
            assert score == pytest.approx(cos, abs=1e-5)
    assert CodeIndex(cb).search(z.reshape(2, -1), 1).metric == METRIC_NEG_L2


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3000),
    k=st.integers(1, 200),
    dup=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_smallest_k_equals_sorting(n: int, k: int, dup: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 5, n).astype(np.float32) if dup else rng.standard_normal(n).astype(np.float32)
    got = smallest_k(values, k)
    want = np.argsort(values, kind="stable")[: min(k, n)]
    np.testing.assert_array_equal(values[got], values[want])
    assert len(set(got.tolist())) == len(got)


def test_smallest_k_large_sampled_path() -> None:
    values = np.random.default_rng(10).standard_normal(1_000_000).astype(np.float32)
    for k in (1, 10, 1000):
        np.testing.assert_array_equal(smallest_k(values, k), np.argsort(values, kind="stable")[:k])


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_mutations_match_a_reference_list(data) -> None:
    """Random add/replace/remove: the index equals a plain list after every step, and the
    moves it reports are what a caller needs to keep an id → row map right."""
    index = CodeIndex(make_codebooks(k=16))
    ref: list[tuple[int, ...]] = []  # row → code
    owner: list[int] = []  # row → caller's id
    row_of: dict[int, int] = {}
    next_id = 0
    for _ in range(data.draw(st.integers(1, 12))):
        op = data.draw(st.sampled_from(["add", "replace", "remove"]))
        if op == "add" or not ref:
            m = data.draw(st.integers(1, 20))
            codes = np.asarray(data.draw(st.lists(st.tuples(*[st.integers(0, 15)] * H), min_size=m, max_size=m)))
            rows = index.add(codes)
            assert rows.tolist() == list(range(len(ref), len(ref) + m))
            for c in codes:
                ref.append(tuple(int(v) for v in c))
                owner.append(next_id)
                row_of[next_id] = len(ref) - 1
                next_id += 1
        elif op == "replace":
            rows = data.draw(st.lists(st.integers(0, len(ref) - 1), min_size=1, max_size=5, unique=True))
            codes = np.asarray([data.draw(st.tuples(*[st.integers(0, 15)] * H)) for _ in rows])
            index.replace(rows, codes)
            for r, c in zip(rows, codes, strict=True):
                ref[r] = tuple(int(v) for v in c)
        else:
            rows = data.draw(st.lists(st.integers(0, len(ref) - 1), min_size=1, max_size=len(ref), unique=True))
            gone = {owner[r] for r in rows}
            moves = index.remove(rows)
            assert moves == swap_remove_plan(len(ref), rows)
            keep_codes = {owner[r]: ref[r] for r in range(len(ref)) if owner[r] not in gone}
            for src, dst in moves:  # the caller's view, updated with the reported moves only
                ref[dst], owner[dst] = ref[src], owner[src]
            del ref[len(ref) - len(rows):], owner[len(owner) - len(rows):]
            row_of = {o: r for r, o in enumerate(owner)}
            assert set(row_of) == set(keep_codes)
            assert all(ref[row_of[o]] == c for o, c in keep_codes.items())
        assert len(index) == len(ref)
        np.testing.assert_array_equal(index.codes, np.asarray(ref, dtype=np.uint8).reshape(-1, H))


def test_swap_remove_plan_chains_moves() -> None:
    assert swap_remove_plan(5, [3, 0, 1]) == [(4, 3), (3, 1), (2, 0)]
    assert swap_remove_plan(3, [2]) == []
    with pytest.raises(IndexError):
        swap_remove_plan(3, [3])


def test_remove_applies_the_callers_plan(filled) -> None:
    """A caller that computed the plan for its own records hands it over: computed once."""
    index, codes, _ = filled
    rows = [10, 2999, 0, 1500]
    plan = swap_remove_plan(len(index), rows)
    assert index.remove(rows, plan) == plan
    expected = [tuple(c) for c in codes]
    for r in sorted(rows, reverse=True):  # swap-with-last, highest first
        expected[r] = expected[-1]
        expected.pop()
    np.testing.assert_array_equal(index.codes, np.asarray(expected, dtype=np.uint8))


def test_bad_inputs_raise_clear_errors(filled) -> None:
    index, _, _ = filled
    with pytest.raises(ValueError, match="shape"):
        index.add(np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        index.add(np.array([[0, 0, 0, 256]]))
    with pytest.raises(ValueError, match="integers"):
        index.add(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="latent"):
        index.search(np.zeros((1, 7), np.float32), 3)
    with pytest.raises(ValueError, match="decoder"):
        index.search(np.zeros((1, H * D), np.float32), 3, candidates=10)
    with pytest.raises(IndexError):
        index.replace([len(index)], np.zeros((1, H), np.uint8))
    with pytest.raises(ValueError, match="backend"):
        CodeIndex(make_codebooks(), backend="gpu")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=32, hidden_dim=48, latent_dim=64, num_heads=4, codebook_size=32)
    return build_model(cfg).eval()


def test_rerank_orders_candidates_by_decoded_cosine(small_model) -> None:
    dec = CodeDecoder(small_model)
    index = CodeIndex.from_model(small_model)
    rng = np.random.default_rng(12)
    codes = rng.integers(0, 32, (500, 4))
    index.add(codes)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    with torch.inference_mode():
        z = small_model.encode_latent(torch.from_numpy(x)).numpy()
    res = index.search(z, 5, candidates=40, queries=x, decoder=dec)
    assert res.metric == METRIC_COSINE
    _, cand = index.adc(z, 40)
    recon = dec(codes)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for q in range(3):
        cos = recon[cand[q]] @ xn[q]
        np.testing.assert_allclose(res.scores[q], np.sort(cos)[::-1][:5], atol=1e-5)
        np.testing.assert_allclose(recon[res.rows[q]] @ xn[q], res.scores[q], atol=1e-5)
        assert set(res.rows[q]) <= set(cand[q])


def test_rerank_with_fewer_rows_than_candidates(small_model) -> None:
    index = CodeIndex.from_model(small_model)
    index.add(np.array([[1, 2, 3, 4], [4, 3, 2, 1]]))
    x = np.ones((1, 32), np.float32)
    with torch.inference_mode():
        z = small_model.encode_latent(torch.from_numpy(x)).numpy()
    res = index.search(z, 5, candidates=100, queries=x, decoder=CodeDecoder(small_model))
    assert sorted(res.rows[0, :2].tolist()) == [0, 1] and (res.rows[0, 2:] == -1).all()

"""CodeIndex.search(rows=...): scanning a subset of rows gives the best k of that subset, with
the same scores as a full scan, for both kernels and with re-ranking."""

from __future__ import annotations

import numpy as np
import pytest

from vqvae.search import CodeIndex, lookup_tables


@pytest.fixture(params=["faiss", "numpy"])
def index(request: pytest.FixtureRequest) -> CodeIndex:
    rng = np.random.default_rng(0)
    idx = CodeIndex(rng.standard_normal((4, 256, 16)).astype(np.float32), backend=request.param)
    idx.add(rng.integers(0, 256, (3000, 4)))
    return idx


def exact(index: CodeIndex, z: np.ndarray) -> np.ndarray:
    t = lookup_tables(z, index.codebooks)
    codes = index.codes
    return sum(t[:, h, codes[:, h]] for h in range(index.num_heads))  # [Q, n]


def test_subset_scan_is_the_best_k_of_the_subset(index: CodeIndex) -> None:
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 64)).astype(np.float32)
    rows = np.sort(rng.choice(len(index), 400, replace=False))
    dist, found = index.adc(z, 10, rows=rows)
    full = exact(index, z)
    for q in range(3):
        assert set(found[q]) <= set(rows)
        np.testing.assert_allclose(dist[q], np.sort(full[q, rows])[:10], rtol=1e-4, atol=1e-4)
    res = index.search(z, 10, rows=rows)
    assert (res.rows == found).all()


def test_subset_smaller_than_k_pads_and_empty_subset_finds_nothing(index: CodeIndex) -> None:
    z = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)
    _, found = index.adc(z, 5, rows=np.array([7, 99]))
    assert sorted(found[0][:2].tolist()) == [7, 99] and (found[:, 2:] == -1).all()
    res = index.search(z, 5, rows=np.zeros(0, dtype=np.int64))
    assert (res.rows == -1).all() and np.isneginf(res.scores).all()
    with pytest.raises(IndexError):
        index.adc(z, 5, rows=np.array([len(index)]))


def test_subset_rerank_keeps_to_the_subset(index: CodeIndex) -> None:
    rng = np.random.default_rng(3)
    proj = rng.standard_normal((64, 12)).astype(np.float32)

    def decode(codes: np.ndarray) -> np.ndarray:
        return np.concatenate([index.codebooks[h][codes[:, h]] for h in range(4)], axis=1) @ proj

    z = rng.standard_normal((2, 64)).astype(np.float32)
    x = rng.standard_normal((2, 12)).astype(np.float32)
    rows = np.arange(0, 3000, 3)
    res = index.search(z, 8, candidates=50, queries=x, decoder=decode, rows=rows)
    assert res.metric == "cosine" and set(res.rows.ravel().tolist()) <= set(rows.tolist())


@pytest.mark.parametrize("share", [0.02, 0.4, 0.6, 0.95, 1.0])
def test_row_masks_give_the_same_hits_as_row_lists(index: CodeIndex, share: float) -> None:
    """Dense masks take the over-fetching full scan, sparse ones the gathered subset: the same
    best k either way (and the fallback when a full scan holds too few admitted rows)."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((4, 64)).astype(np.float32)
    mask = rng.random(len(index)) < share
    full = exact(index, z)
    for k in (1, 10, 200):
        dist, found = index.adc(z, k, rows=mask)
        admitted = np.flatnonzero(mask)
        for q in range(4):
            best = np.sort(full[q, admitted])[:k]
            np.testing.assert_allclose(dist[q, : len(best)], best, rtol=1e-4, atol=1e-4)
            assert mask[found[q, : len(best)]].all()
    # a mask that admits most rows but none of the nearest ones forces the fallback
    order = np.argsort(full[0])
    tricky = np.ones(len(index), dtype=bool)
    tricky[order[:500]] = False
    dist, found = index.adc(z[:1], 10, rows=tricky)
    np.testing.assert_allclose(dist[0], np.sort(full[0, tricky])[:10], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="one entry per row"):
        index.adc(z, 5, rows=np.ones(3, dtype=bool))

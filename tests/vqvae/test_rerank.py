"""The re-ranking step, defined once (vqvae.search.rerank_by_cosine)."""

import numpy as np
import pytest

from vqvae.search import METRIC_COSINE, rerank_by_cosine


def test_candidates_are_reordered_by_cosine_of_their_reconstructions():
    recon = np.array([[3.0, 3.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    q = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
    cand = np.array([[0, 1, 3], [0, 2, -1]])  # -1: no candidate there
    res = rerank_by_cosine(q, cand, 2, lambda rows: recon[rows])
    assert res.metric == METRIC_COSINE
    assert res.rows.tolist() == [[1, 0], [2, 0]]  # by cosine, not by inner product (row 0 would win)
    assert res.scores[0] == pytest.approx([1 / np.sqrt(1.01), np.sqrt(0.5)], abs=1e-6)


def test_rows_past_the_valid_candidates_are_padding():
    recon = np.eye(3, dtype=np.float32)
    res = rerank_by_cosine(np.ones((2, 3), np.float32), np.array([[2, -1], [-1, -1]]), 3, lambda r: recon[r])
    assert res.rows.tolist() == [[2, -1, -1], [-1, -1, -1]]
    assert np.isneginf(res.scores[1]).all() and np.isneginf(res.scores[0, 1:]).all()
    with pytest.raises(ValueError, match="3 queries for 2 candidate lists"):
        rerank_by_cosine(np.ones((3, 3), np.float32), np.zeros((2, 1), int), 1, lambda r: recon[r])

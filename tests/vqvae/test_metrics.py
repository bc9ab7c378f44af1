"""The quality metrics, defined once in vqvae.metrics: recall, cosine ranking, paired errors."""

import math

import numpy as np
import pytest

from vqvae.metrics import (
    cosine_topk,
    exact_topk,
    paired_difference,
    paired_se,
    recall,
    recall_per_query,
    recalls,
    reconstruction_stats,
    retrieval_stats,
)


def test_recall_counts_the_overlap_of_the_top_ranks():
    truth = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    got = np.array([[3, 9, 0, 8], [9, 8, 7, 6]])
    assert recall_per_query(truth, got, 4, 4).tolist() == [0.5, 0.5]
    assert recall(truth, got, 1, 4) == 0.5  # true top-1 (0) retrieved for the first query only
    assert recall(truth, got, 2, 2) == 0.0  # 10@10 style at depth 2: no true top-2 in the first 2
    assert recall(truth, truth, 4, 4) == 1.0 and recall(truth, truth[:, ::-1], 4, 4) == 1.0  # order is free
    assert recall(truth, got + 100, 4, 4) == 0.0


def test_recall_ignores_padding_and_duplicates_and_short_databases():
    truth = np.array([[0, 1, -1, -1]])  # a database of 2 rows: faiss pads with -1
    assert recall(truth, np.array([[1, 0, -1, -1]]), 4, 4) == 1.0  # both true neighbours found; -1 never hits
    assert recall(truth, np.array([[1, 1, 1, -1]]), 4, 4) == 0.5  # a duplicate counts once
    assert recall(np.zeros((0, 10), int), np.zeros((0, 100), int), 10, 10) == 0.0  # no queries
    with pytest.raises(ValueError, match="2 queries in truth but 1"):
        recall(np.zeros((2, 10), int), np.zeros((1, 10), int), 10, 10)


def test_recalls_1_at_10_10_at_10_10_at_100():
    truth = np.arange(10)[None]
    got = np.r_[np.arange(10, 20), np.arange(5), np.arange(100, 185)][None]  # true top-5 at ranks 11-15
    assert recalls(truth, got) == {"recall_10@10": 0.0, "recall_1@10": 0.0, "recall_10@100": 0.5}
    got[0, 9] = 0  # the true top-1 at rank 10
    assert recalls(truth, got) == {"recall_10@10": 0.1, "recall_1@10": 1.0, "recall_10@100": 0.5}


def test_exact_topk_is_inner_product_and_never_longer_than_the_database():
    db = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    assert exact_topk(db, np.array([[1, 0.1]], np.float32), 10).tolist() == [[0, 2, 1]]


def test_cosine_ranking_differs_from_inner_product_ranking():
    """A long reconstruction at a wide angle wins by inner product, loses by cosine."""
    q = np.array([[1.0, 0.0]], np.float32)
    recon = np.array([[3.0, 3.0], [1.0, 0.1]], np.float32)  # IP 3 vs 1; cosine 0.71 vs 0.995
    assert exact_topk(recon, q, 2).tolist() == [[0, 1]]
    assert cosine_topk(recon, q, 2).tolist() == [[1, 0]]
    assert cosine_topk(recon, 5 * q, 2).tolist() == [[1, 0]]  # the query's norm changes nothing
    # the same through retrieval_stats: the originals put row 1 first
    db = np.array([[0.7071, 0.7071], [0.995, 0.0995]], np.float32)
    assert retrieval_stats(db, recon, q)["recall_1@10"] == 1.0  # depth 10 holds both rows either way
    truth_top1 = exact_topk(db, q, 1)
    assert (cosine_topk(recon, q, 1) == truth_top1).all() and not (exact_topk(recon, q, 1) == truth_top1).all()
    with pytest.raises(ValueError, match="ranking"):
        retrieval_stats(db, recon, q, ranking="l2")


def test_retrieval_stats_of_perfect_and_rescaled_reconstructions():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((300, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    scaled = db * rng.uniform(0.2, 5.0, (300, 1)).astype(np.float32)  # right directions, wrong lengths
    assert retrieval_stats(db, scaled, q) == {"recall_10@10": 1.0, "recall_1@10": 1.0, "recall_10@100": 1.0}
    assert retrieval_stats(db, scaled, q, ranking="ip")["recall_10@10"] < 1.0


def test_reconstruction_stats():
    x = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    assert reconstruction_stats(x, x) == pytest.approx({"cosine": 1.0, "rel_sq_error": 0.0, "mse": 0.0})
    zero = reconstruction_stats(x, np.zeros_like(x))
    assert zero["rel_sq_error"] == pytest.approx(1.0) and zero["cosine"] == pytest.approx(0.0)


def test_paired_standard_error_matches_a_hand_computation():
    a = np.array([1.0, 0.5, 0.0, 1.0])
    b = np.array([0.5, 0.5, 0.5, 0.0])
    # d = [.5, 0, -.5, 1]: mean .25; sample variance (.0625 + .0625 + .5625 + .5625) / 3 = 1.25 / 3
    diff, se = paired_difference(a, b)
    assert diff == pytest.approx(0.25)
    assert se == pytest.approx(math.sqrt(1.25 / 3) / 2) and paired_se(a, b) == se
    assert paired_difference(a, a) == (0.0, 0.0)
    assert paired_difference(b + 0.1, b) == pytest.approx((0.1, 0.0))  # a constant shift is exact
    assert math.isnan(paired_difference([1.0], [0.0])[1])
    with pytest.raises(ValueError, match="1-D"):
        paired_difference(np.zeros((2, 2)), np.zeros((2, 2)))

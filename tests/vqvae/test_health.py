import numpy as np
import pytest
import torch

from vqvae.health import HealthThresholds, codebook_health, count_codes, zipf_fit


def test_recovers_known_zipf_alpha():
    ranks = np.arange(1, 257)
    for alpha in (0.8, 1.2, 1.6):
        counts = np.round(1e7 * ranks ** -alpha).astype(np.int64)
        est, r2 = zipf_fit(np.random.default_rng(0).permutation(counts))
        assert abs(est - alpha) < 0.05 and r2 > 0.99


def test_uniform_usage_is_healthy():
    h = codebook_health(np.full((4, 256), 100))
    assert h.status == "healthy" and not h.reasons
    assert all(abs(x.entropy_bits - 8) < 1e-9 and x.used == 256 and x.dead == 0 for x in h.heads)
    assert abs(h.heads[0].perplexity - 256) < 1e-6
    assert abs(h.heads[0].top10_share - 26 / 256) < 1e-9


def test_collapse_and_warning_are_flagged_with_reasons():
    counts = np.full((4, 256), 100)
    counts[1, 10:] = 0  # 10 codes used
    h = codebook_health(counts)
    assert h.status == "collapsed" and "head 1" in h.reasons[0]
    counts = np.full((4, 256), 100)
    counts[2, :30] = 0  # 30 dead codes
    h = codebook_health(counts)
    assert h.status == "warning" and "head 2: 30 dead" in h.reasons[0]


def test_empty_and_bad_counts():
    assert codebook_health(np.zeros((4, 256))).status == "insufficient_data"
    with pytest.raises(ValueError, match="heads, codes"):
        codebook_health(np.zeros(256))


def test_count_codes_numpy_and_torch_agree():
    codes = np.array([[0, 1], [0, 3]], dtype=np.uint8)
    expected = [[2, 0, 0, 0], [0, 1, 0, 1]]
    for given in (codes, codes.astype(np.int32), torch.from_numpy(codes.astype(np.int64)), torch.tensor(codes)):
        counts = count_codes(given, 4)
        assert isinstance(counts, np.ndarray) and counts.dtype == np.int64
        assert counts.tolist() == expected


def test_count_codes_matches_per_head_bincount():
    codes = np.random.default_rng(0).integers(0, 256, size=(1000, 4))
    loop = np.stack([np.bincount(codes[:, h], minlength=256) for h in range(4)])
    np.testing.assert_array_equal(count_codes(codes, 256), loop)
    assert count_codes(np.zeros((0, 4), dtype=np.int64), 256).shape == (4, 256)


def test_count_codes_rejects_bad_input():
    with pytest.raises(ValueError):
        count_codes(np.array([[0, 4]]), 4)
    with pytest.raises(ValueError):
        count_codes(np.array([-1, 0]), 4)
    with pytest.raises(TypeError):
        count_codes(np.array([[0.5, 1.0]]), 4)


def test_status_waits_for_20_counts_per_code():
    """A few requests leave most codes unused by chance: no verdict, never `collapsed`."""
    one_request = np.zeros((4, 256), dtype=np.int64)
    one_request[:, :3] = 1  # 3 vectors: 3 of 256 codes used per head
    h = codebook_health(one_request)
    assert h.status == "insufficient_data" and h.min_vectors == 20 * 256
    assert "3 vectors counted" in h.reasons[0] and "5120" in h.reasons[0]
    rng = np.random.default_rng(0)
    almost = np.stack([np.bincount(rng.integers(0, 256, 5119), minlength=256) for _ in range(4)])
    assert codebook_health(almost).status == "insufficient_data"
    enough = np.stack([np.bincount(rng.integers(0, 256, 5120), minlength=256) for _ in range(4)])
    assert codebook_health(enough).status == "healthy"
    collapsed = np.zeros((4, 256), dtype=np.int64)
    collapsed[:, 0] = 6000  # enough vectors, all on one code: now that is a collapse
    assert codebook_health(collapsed).status == "collapsed"
    assert codebook_health(one_request, HealthThresholds(min_counts_per_code=0)).status == "collapsed"

"""faiss baselines, defined once in vqvae.baselines: fitted from an index_factory string."""

import numpy as np
import pytest

from vqvae.baselines import DEFAULT_BASELINES, BaselineError, build_index, fit_baseline


@pytest.fixture(scope="module")
def train():
    return np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)


def test_a_fitted_baseline_encodes_decodes_and_states_its_bytes(train):
    b = fit_baseline("PQ2x4", train)
    codes, recon = b.reconstruct(train)
    assert b.spec == "PQ2x4" and b.train_vectors == 500 and b.bytes_per_vector == 1
    assert codes.shape == (500, 1) and codes.dtype == np.uint8 and recon.shape == (500, 16)
    assert np.array_equal(b.decode(b.encode(train[:7])), recon[:7])
    rel = ((train - recon) ** 2).sum(1) / (train**2).sum(1)
    assert rel.mean() < 0.9  # better than predicting zero
    assert b.codebook_size is None  # 4-bit codes share a byte: no per-head usage
    again = fit_baseline("PQ2x4", train)
    assert np.array_equal(again.encode(train), codes)  # seeded: the same fit twice


def test_byte_codes_report_their_codebook_size(train):
    b = fit_baseline("PQ4x8", train)
    assert b.bytes_per_vector == 4 and b.codebook_size == 256
    assert b.encode(train).shape == (500, 4)


def test_unknown_specs_and_indexes_without_codes_are_clear_errors(train):
    with pytest.raises(BaselineError, match="unknown baseline 'XQ9'.*index_factory"):
        fit_baseline("XQ9", train)
    with pytest.raises(BaselineError, match="no standalone codes"):
        build_index("HNSW8", 16)
    with pytest.raises(BaselineError, match="OPQ needs at least 16 training vectors"):
        fit_baseline("OPQ2,PQ2x4", train[:10])  # faiss itself would corrupt memory here


def test_default_baselines_build_at_four_bytes():
    assert all(build_index(spec, 384).sa_code_size() == 4 for spec in DEFAULT_BASELINES)


def test_cache_reads_a_fitted_index_back(train, tmp_path):
    first = fit_baseline("PQ2x4", train, cache=tmp_path)
    assert len(list(tmp_path.glob("*.faiss"))) == 1
    second = fit_baseline("PQ2x4", train, cache=tmp_path)
    assert second.fit_seconds == 0.0 and np.array_equal(second.encode(train), first.encode(train))
    fit_baseline("PQ2x4", train[:400], cache=tmp_path)  # other training vectors: another entry
    assert len(list(tmp_path.glob("*.faiss"))) == 2

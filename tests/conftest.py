"""Shared fixtures: small generated data and a tiny checkpoint, so tests run offline in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vqvae import ModelConfig, MonolithWiki, save_checkpoint

TINY = ModelConfig(input_dim=384, hidden_dim=64, latent_dim=32, num_heads=4, codebook_size=16, dropout=0.0)


def clustered_embeddings(n: int, dim: int = 384, clusters: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few random centres: structure a quantizer can learn quickly."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


REAL_SAMPLE = Path(__file__).parent / "data" / "real_sample.npy"


def real_embeddings() -> np.ndarray:
    """1,024 real MiniLM embeddings: 512 WordNet glosses, then 512 Debian package descriptions
    (validation splits; rebuilt by scripts/make_test_sample.py)."""
    return np.load(REAL_SAMPLE)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(MonolithWiki(TINY), path, provenance={"test": True},
                    reference_counts=np.ones((4, 16), int).tolist())
    return path


@pytest.fixture
def embeddings_file(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, clustered_embeddings(2048))
    return path

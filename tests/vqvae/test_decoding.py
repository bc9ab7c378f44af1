"""CodeDecoder: the first-layer shortcut decodes exactly what ``model.decode`` does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqvae.config import ModelConfig
from vqvae.decoding import CodeDecoder
from vqvae.registry import build_model


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=32, hidden_dim=48, latent_dim=64, num_heads=4, codebook_size=32)
    return build_model(cfg).eval()


def test_code_decoder_shortcut_equals_model_decode(small_model) -> None:
    dec = CodeDecoder(small_model)
    assert dec._table is not None  # the shortcut is in use for this architecture
    codes = np.random.default_rng(11).integers(0, 32, (300, 4))
    with torch.inference_mode():
        ref = small_model.decode(torch.from_numpy(codes)).numpy()
    np.testing.assert_allclose(dec(codes), ref, atol=1e-5)


def test_first_layer_table_plus_finish_is_decode(small_model) -> None:
    dec = CodeDecoder(small_model)
    table = dec.first_layer_table
    assert table is not None and table.shape[:2] == (4, 32)
    codes = np.random.default_rng(12).integers(0, 32, (20, 4))
    with torch.inference_mode():
        hidden = sum(table[h, torch.from_numpy(codes[:, h])] for h in range(4))
        np.testing.assert_allclose(dec.finish(hidden).numpy(), dec(codes), atol=1e-5)


def test_no_codes_decode_to_an_empty_array(small_model) -> None:
    assert CodeDecoder(small_model)(np.zeros((0, 4), np.int64)).shape[0] == 0

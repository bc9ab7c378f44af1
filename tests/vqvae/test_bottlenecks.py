"""The bottlenecks besides product_vq: shapes, hand-checked residual encoding, checkpoints, refusal."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TINY, clustered_embeddings
from vqvae import CheckpointError, ModelConfig, Monolith, build_model, load_checkpoint, save_checkpoint
from vqvae.api import DEFAULT_CHECKPOINT
from vqvae.bottlenecks import ResidualQuantizer
from vqvae.checkpoint import read_metadata
from vqvae.decoding import CodeDecoder
from vqvae.search import CodeIndex


def tiny(bottleneck: str) -> ModelConfig:
    return TINY.model_copy(update={"bottleneck": bottleneck})


def test_residual_quantizer_greedy_by_hand():
    q = ResidualQuantizer(num_stages=2, codebook_size=2, dim=2)
    q.codebooks.data = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.1, 0.0], [0.0, -0.2]]])
    z = torch.tensor([[1.1, -0.1]])
    out, inputs, chosen = q(z)
    # stage 0 takes (1, 0); the residual (0.1, −0.1) is nearest (0.1, 0) in stage 1
    assert out.codes.tolist() == [[0, 0]]
    assert torch.allclose(inputs[0, 1], torch.tensor([0.1, -0.1]))
    assert torch.allclose(out.z_q_raw, torch.tensor([[1.1, 0.0]]))
    assert torch.allclose(q.get_codes_from_indices(out.codes), out.z_q_raw)
    assert torch.equal(q.distances(z).argmin(-1), out.codes)


def test_residual_vq_is_still_one_byte_per_stage():
    m = build_model(tiny("residual_vq")).eval()
    x = torch.from_numpy(clustered_embeddings(6))
    out = m(x)
    assert out["codes"].shape == (6, 4) and tuple(m.quantizer.codebooks.shape) == (4, 16, 32)
    assert torch.allclose(m.decode(m.encode(x)), out["x_hat"], atol=1e-6)
    assert m.search_latent(x).shape == (6, 4 * 32)


@pytest.mark.parametrize("bottleneck", ["vae", "wasserstein"])
def test_float_latent_models(bottleneck):
    m = build_model(tiny(bottleneck))
    x = torch.from_numpy(clustered_embeddings(8))
    out = m(x)
    assert out["x_hat"].shape == (8, 384) and out["z"].shape == (8, 32)
    assert not m.produces_codes and not m.config.produces_codes
    with pytest.raises(NotImplementedError, match="produces no codes"):
        m.encode(x)
    m.eval()
    assert torch.allclose(m(x)["x_hat"], m.reconstruct(x), atol=1e-6)  # eval: deterministic latent


def test_vae_samples_in_training_and_uses_the_mean_in_the_warmup():
    m = build_model(tiny("vae")).train()
    x = torch.from_numpy(clustered_embeddings(4))
    out = m(x)
    assert not torch.allclose(out["z"], out["mu"])
    warm = m(x, quantize=False)
    assert torch.equal(warm["z"], warm["mu"])


@pytest.mark.parametrize("bottleneck", ["product_vq", "residual_vq", "vae", "wasserstein"])
def test_checkpoint_round_trip_marks_code_producing(tmp_path, bottleneck):
    m = build_model(tiny(bottleneck))
    path = save_checkpoint(m, tmp_path / f"{bottleneck}.safetensors")
    meta = read_metadata(path)
    codes = bottleneck in ("product_vq", "residual_vq")
    assert meta["bottleneck"] == bottleneck and meta["produces_codes"] == ("true" if codes else "false")
    ck = load_checkpoint(path)
    assert ck.produces_codes is codes and type(ck.model) is type(m)
    for k, v in m.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k])


@pytest.mark.parametrize("bottleneck", ["vae", "wasserstein"])
def test_monolith_refuses_checkpoints_without_codes(tmp_path, bottleneck):
    path = save_checkpoint(build_model(tiny(bottleneck)), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=f"'{bottleneck}' checkpoint.*produces no codes"):
        Monolith.load(path)


def test_residual_checkpoint_serves_encode_decode_and_search(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(build_model(tiny("residual_vq")), tmp_path / "r.safetensors")
    m = Monolith.load(path)
    x = clustered_embeddings(50)
    codes = m.encode(x)
    assert codes.shape == (50, 4) and codes.dtype == np.uint8
    ref = m.model.reconstruct(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(m.decode(codes), ref, atol=1e-5)
    fast = CodeDecoder(m.model)
    assert fast._table is not None  # the per-stage lookup table matches model.decode
    assert np.allclose(fast(codes), ref, atol=1e-4)
    index = CodeIndex.from_model(m.model, backend="numpy")
    index.add(codes)
    rows, _ = index.adc(m.search_latent(x[:5]), 3)
    assert rows.shape == (5, 3) and index.metric == "neg_sq_l2"


def test_shipped_checkpoint_is_unchanged_product_vq():
    """The shipped checkpoint still loads as product_vq, and its codes are exactly the nearest
    product codes of its encoder output (computed here from the raw tensors)."""
    ck = load_checkpoint(DEFAULT_CHECKPOINT)
    assert ck.config.bottleneck == "product_vq" and ck.produces_codes
    m = ck.model
    x = torch.from_numpy(clustered_embeddings(32))
    z = m.encoder(x)
    c = ck.config
    if c.normalize_latent:
        z = F.normalize(z.reshape(-1, c.num_heads, c.head_dim), dim=-1).reshape(-1, c.latent_dim)
    heads = z.reshape(-1, c.num_heads, c.head_dim)
    cb = m.quantizer.codebooks
    dist = (heads.unsqueeze(2) - cb.unsqueeze(0)).pow(2).sum(-1)
    assert torch.equal(m.encode(x), dist.argmin(-1))
    assert np.array_equal(Monolith(ck).search_latent(x.numpy()), m.encode_latent(x).detach().numpy())

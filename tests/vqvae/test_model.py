import torch
from torch import nn

from vqvae import ModelConfig, MonolithV13, MonolithWiki


def test_monolith_wiki_layers_match_design():
    m = MonolithWiki()
    enc = [type(layer) for layer in m.encoder]
    assert enc == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Dropout, nn.Linear]
    assert (m.encoder[0].in_features, m.encoder[0].out_features, m.encoder[4].out_features) == (384, 1024, 512)
    assert (m.decoder[0].in_features, m.decoder[4].out_features) == (512, 384)
    assert tuple(m.quantizer.codebooks.shape) == (4, 256, 128)


def test_forward_outputs_and_unit_norms():
    m = MonolithWiki().eval()
    out = m(torch.randn(3, 384))
    assert out["codes"].shape == (3, 4)
    assert torch.allclose(out["x_hat"].norm(dim=1), torch.ones(3), atol=1e-5)
    heads = out["z_e"].reshape(3, 4, 128).norm(dim=-1)
    assert torch.allclose(heads, torch.ones(3, 4), atol=1e-5)


def test_gradient_reaches_encoder_through_quantizer():
    m = MonolithWiki()
    out = m(torch.randn(4, 384))
    out["x_hat"].sum().backward()
    assert m.encoder[0].weight.grad is not None and m.encoder[0].weight.grad.abs().sum() > 0


def test_encode_decode_agree_with_forward():
    m = MonolithWiki().eval()
    x = torch.randn(5, 384)
    codes = m.encode(x)
    assert torch.equal(codes, m(x)["codes"])
    assert torch.allclose(m.decode(codes), m(x)["x_hat"], atol=1e-6)


def test_legacy_layout():
    m = MonolithV13(ModelConfig(architecture="MonolithV13", latent_dim=256))
    assert m(torch.randn(2, 384))["x_hat"].shape == (2, 384)
    assert m.encoder[0].out_features == 256

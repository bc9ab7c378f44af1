import pytest
import torch

from vqvae import OrthogonalProductQuantizer


def test_shapes_and_nearest_code():
    q = OrthogonalProductQuantizer(num_heads=4, codebook_size=8, head_dim=3)
    z = torch.randn(5, 12)
    out = q(z)
    assert out.z_q.shape == (5, 12) and out.codes.shape == (5, 4) and out.distances.shape == (5, 4, 8)
    # brute force per head, one at a time
    for h in range(4):
        d = torch.cdist(z[:, h * 3 : (h + 1) * 3], q.codebooks[h]) ** 2
        assert torch.equal(d.argmin(-1), out.codes[:, h])
        assert torch.allclose(out.distances[:, h], d, atol=1e-4)


def test_codes_round_trip_through_lookup():
    q = OrthogonalProductQuantizer(4, 8, 3)
    codes = torch.randint(0, 8, (6, 4))
    z = q.get_codes_from_indices(codes)
    assert torch.equal(q(z).codes, codes)  # a code's own vector quantizes to itself


def test_straight_through_gradient_reaches_input():
    q = OrthogonalProductQuantizer(4, 8, 3)
    z = torch.randn(5, 12, requires_grad=True)
    out = q(z)
    (out.z_q * torch.arange(12.0)).sum().backward()
    assert torch.allclose(z.grad, torch.arange(12.0).expand(5, 12))  # identity gradient
    assert torch.allclose(out.z_q, out.z_q_raw)  # forward value is the code


def test_bad_shapes_are_clear_errors():
    q = OrthogonalProductQuantizer(4, 8, 3)
    with pytest.raises(ValueError, match="latent has 10 dims"):
        q(torch.randn(2, 10))
    with pytest.raises(ValueError, match=r"codes must be \[N, 4\]"):
        q.get_codes_from_indices(torch.zeros(2, 3, dtype=torch.long))

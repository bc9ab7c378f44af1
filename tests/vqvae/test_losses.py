import math

import torch
import torch.nn.functional as F

from vqvae import losses as L


def test_reconstruction_losses_zero_at_perfect():
    x = F.normalize(torch.randn(4, 8), dim=1)
    assert L.reconstruction_mse(x, x) == 0
    assert abs(float(L.cosine_loss(x, x))) < 1e-6
    assert float(L.score_aware_loss(x, x)) == 0


def test_score_aware_weights_parallel_error():
    x = torch.tensor([[1.0, 0.0]])
    par = torch.tensor([[0.9, 0.0]])  # error 0.1 along x
    perp = torch.tensor([[1.0, 0.1]])  # error 0.1 across x
    assert math.isclose(float(L.score_aware_loss(par, x, eta=4)), 4 * 0.01 / 5, rel_tol=1e-5)
    assert math.isclose(float(L.score_aware_loss(perp, x, eta=4)), 0.01 / 5, rel_tol=1e-5)


def test_codebook_commitment_hand_computed():
    z_e = torch.tensor([[1.0, 0.0]])
    z_q = torch.tensor([[0.0, 0.0]])
    # mse = 0.5 for each part: 0.5 + 0.25 * 0.5
    assert math.isclose(float(L.codebook_commitment_loss(z_e, z_q, beta=0.25)), 0.625)


def test_orthogonal_loss():
    ortho = torch.eye(3).unsqueeze(1).repeat(1, 5, 1)  # head h's codes all along axis h
    assert float(L.orthogonal_loss(ortho)) == 0
    same = torch.ones(3, 5, 3)
    assert math.isclose(float(L.orthogonal_loss(same)), 1.0, rel_tol=1e-5)


def test_head_balance():
    equal = torch.ones(2, 8)  # 4 heads of 2 dims, same energy
    assert float(L.head_balance_loss(equal, 4)) == 0
    one = torch.zeros(2, 8)
    one[:, :2] = 1.0  # all energy in head 0: (1 - 1/4)² + 3·(1/4)²
    assert math.isclose(float(L.head_balance_loss(one, 4)), 0.75, rel_tol=1e-6)


def test_entropy_and_load_balance_zero_at_uniform_usage():
    uniform = torch.full((10, 4, 16), 1 / 16)
    assert float(L.entropy_loss(uniform, 0.8)) == 0
    assert float(L.load_balance_loss(uniform)) < 1e-12
    collapsed = torch.zeros(10, 4, 16)
    collapsed[..., 0] = 1
    assert math.isclose(float(L.entropy_loss(collapsed, 0.8)), 0.8, rel_tol=1e-4)
    assert math.isclose(float(L.load_balance_loss(collapsed)), 4 * ((15 / 16) ** 2 + 15 / 256), rel_tol=1e-5)


def test_entropy_loss_has_gradient_through_soft_assignments():
    d = torch.randn(32, 4, 16, requires_grad=True)
    L.entropy_loss(L.soft_assignments(d * 10), 0.99).backward()
    assert d.grad.abs().sum() > 0


def test_code_histogram():
    codes = torch.tensor([[0, 1], [0, 3]])
    h = L.code_histogram(codes, 4)
    assert h.tolist() == [[2, 0, 0, 0], [0, 1, 0, 1]]


def test_info_nce_prefers_own_reconstruction():
    x = torch.eye(8)
    perfect = float(L.info_nce_loss(x, x, 0.07))
    shuffled = float(L.info_nce_loss(x.roll(1, 0), x, 0.07))
    assert perfect < 1e-4 and shuffled > 10


def test_distillation_zero_when_scores_match():
    x = F.normalize(torch.randn(16, 8), dim=1)
    assert abs(float(L.similarity_distillation_loss(x, x))) < 1e-6
    assert float(L.similarity_distillation_loss(F.normalize(torch.randn(16, 8), dim=1), x)) > 0.1

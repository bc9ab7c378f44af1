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


def test_info_nce_prefers_own_reconstruction():
    x = torch.eye(8)
    perfect = float(L.info_nce_loss(x, x, 0.07))
    shuffled = float(L.info_nce_loss(x.roll(1, 0), x, 0.07))
    assert perfect < 1e-4 and shuffled > 10


def test_distillation_zero_when_scores_match():
    x = F.normalize(torch.randn(16, 8), dim=1)
    assert abs(float(L.similarity_distillation_loss(x, x))) < 1e-6
    assert float(L.similarity_distillation_loss(F.normalize(torch.randn(16, 8), dim=1), x)) > 0.1


def test_info_nce_near_its_minimum_at_perfect_reconstruction_of_orthogonal_inputs():
    x = torch.eye(6, dtype=torch.float64)  # float32 rounds the tiny off-diagonal mass
    # logits: 1/τ on the diagonal, 0 elsewhere → loss = log(1 + 5·e^(−1/τ)), the lowest it gets at τ
    expected = math.log1p(5 * math.exp(-1 / 0.07))
    assert math.isclose(float(L.info_nce_loss(x, x)), expected, rel_tol=1e-4)
    assert float(L.info_nce_loss(x, x)) < 1e-5


def test_load_balance_hand_computed():
    probs = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])  # one head, both rows on code 0: f = (1, 0)
    assert math.isclose(float(L.load_balance_loss(probs)), 0.25 + 0.25)


def test_kl_zero_at_prior_and_hand_computed():
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    assert float(L.kl_divergence(mu, logvar)) == 0
    # one dim with μ = 1, σ = 1: ½(1 + 1 − 1 − 0) = 0.5; the other dims at the prior
    mu[:, 0] = 1.0
    assert math.isclose(float(L.kl_divergence(mu, logvar)), 0.5)
    # σ² = e: ½(e − 1 − 1) per dim
    assert math.isclose(float(L.kl_divergence(torch.zeros(2, 1), torch.ones(2, 1))), 0.5 * (math.e - 2), rel_tol=1e-6)


def test_free_bits_clamps_each_dimension():
    kl = torch.tensor([0.0, 0.05, 0.5])
    assert math.isclose(float(L.free_bits(kl, 0.1)), 0.1 + 0.1 + 0.5, rel_tol=1e-6)
    assert math.isclose(float(L.free_bits(kl, 0.0)), 0.55, rel_tol=1e-6)
    # below the threshold a dimension gets no gradient: it is not pushed onto the prior
    mu = torch.tensor([[0.1, 2.0]], requires_grad=True)
    L.kl_divergence(mu, torch.zeros(1, 2), free_bits_nats=0.5).backward()
    assert mu.grad[0, 0] == 0 and mu.grad[0, 1] > 0


def test_mmd_zero_for_identical_samples_and_hand_computed():
    z = torch.randn(16, 4)
    assert abs(float(L.mmd_rbf(z, z))) < 1e-6
    a, b = torch.zeros(1, 2), torch.tensor([[3.0, 4.0]])  # distance 5, σ² = 2 (the dimension)
    assert math.isclose(float(L.mmd_rbf(a, b)), 2 - 2 * math.exp(-25 / 4), rel_tol=1e-5)
    assert math.isclose(float(L.mmd_rbf(a, b, bandwidth=12.5)), 2 - 2 * math.exp(-1), rel_tol=1e-5)


def test_mmd_separates_distributions():
    g = torch.Generator().manual_seed(0)
    prior = torch.randn(256, 8, generator=g)
    same = torch.randn(256, 8, generator=g)
    shifted = torch.randn(256, 8, generator=g) + 2.0
    assert float(L.mmd_rbf(same, prior)) < 0.1 * float(L.mmd_rbf(shifted, prior))


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # real: relu(1−2)=0, relu(1−0.5)=0.5 → 0.25; fake: relu(1−2)=0, relu(1+0)=1 → 0.5; ½(0.25+0.5)
    assert math.isclose(float(L.hinge_discriminator_loss(real, fake)), 0.375)
    assert float(L.hinge_discriminator_loss(torch.ones(3), -torch.ones(3))) == 0
    assert math.isclose(float(L.hinge_generator_loss(fake)), 1.0)


def test_adaptive_adversarial_weight_is_gradient_norm_ratio_and_clipped():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (3.0 * w).sum()  # ∇ = (3, 3), norm 3√2
    gen = (w * torch.tensor([0.0, 1.0])).sum()  # ∇ = (0, 1), norm 1
    lam = L.adaptive_adversarial_weight(rec, gen, w, max_weight=100.0)
    assert math.isclose(float(lam), 3 * math.sqrt(2) / (1 + 1e-4), rel_tol=1e-5)
    assert not lam.requires_grad
    assert float(L.adaptive_adversarial_weight(rec, gen, w, max_weight=2.0)) == 2.0

"""Every training loss as a plain function of tensors.

Each function takes only tensors (and scalars) and returns a scalar tensor, so the loss
factory can wire any of them to a model output by key and weight it. Shapes: B batch,
H heads, K codes per head, D head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def reconstruction_mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over elements of (x̂ − x)². Reported, but small even for useless models."""
    return F.mse_loss(x_hat, x)


def cosine_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 − mean_i cos(x̂ᵢ, xᵢ): the direction error that cosine search actually sees."""
    return 1.0 - F.cosine_similarity(x_hat, x, dim=-1).mean()


def score_aware_loss(x_hat: torch.Tensor, x: torch.Tensor, eta: float = 4.0) -> torch.Tensor:
    """Anisotropic (ScaNN) loss: mean_i [η‖r∥ᵢ‖² + ‖r⊥ᵢ‖²] / (η + 1), r = x − x̂.

    r∥ is the part of the residual along x, r⊥ the rest. Queries near x score it by ⟨q, x̂⟩,
    and the parallel error shifts that score for every such query, while the orthogonal
    error mostly averages out; η > 1 spends the bits where inner products need them.
    """
    u = F.normalize(x, dim=-1)
    r = x - x_hat
    r_par = (r * u).sum(-1, keepdim=True) * u
    r_perp = r - r_par
    return (eta * r_par.pow(2).sum(-1) + r_perp.pow(2).sum(-1)).mean() / (eta + 1.0)


def codebook_commitment_loss(z_e: torch.Tensor, z_q_raw: torch.Tensor, beta: float = 0.25) -> torch.Tensor:
    """‖sg(z_e) − z_q‖² + β‖z_e − sg(z_q)‖² (van den Oord et al., β = 0.25).

    The first term moves codes towards encoder outputs, the second keeps the encoder
    committed to its codes. With EMA codebooks the first term has no parameter to move.
    """
    codebook = F.mse_loss(z_q_raw, z_e.detach())
    commitment = F.mse_loss(z_e, z_q_raw.detach())
    return codebook + beta * commitment


def orthogonal_loss(codebooks: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine between the heads' codebook centres.

    codebooks [H, K, D]; centre c_h = mean_k codebooks[h, k], normalised. Zero when the
    centres are mutually orthogonal, so no head's codes drift into a shared offset.
    """
    num_heads = codebooks.shape[0]
    if num_heads < 2:
        return codebooks.new_zeros(())
    centres = F.normalize(codebooks.mean(dim=1), dim=-1)
    gram = centres @ centres.T
    off = gram - torch.diag_embed(torch.diagonal(gram))
    return off.pow(2).sum() / (num_heads * (num_heads - 1))


def head_balance_loss(z_q: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Σ_h (s_h − 1/H)², s_h = E‖z_q,h‖² / Σ_h' E‖z_q,h'‖²: each head's share of the energy.

    Zero when every head carries the same energy, so no head is left idle.
    """
    energy = z_q.reshape(z_q.shape[0], num_heads, -1).pow(2).sum(-1).mean(0)
    share = energy / energy.sum().clamp_min(1e-12)
    return (share - 1.0 / num_heads).pow(2).sum()


def soft_assignments(distances: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(−d / T) over codes: a differentiable stand-in for the argmin [B, H, K]."""
    return torch.softmax(-distances / temperature, dim=-1)


def usage_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats [H] of each head's mean soft assignment; probs [B, H, K]."""
    p = probs.mean(0)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def entropy_loss(probs: torch.Tensor, target_fraction: float = 0.8) -> torch.Tensor:
    """mean_h max(0, τ·log K − H_h) / log K, H_h = entropy of head h's mean soft usage.

    Zero once every head's usage entropy reaches ``target_fraction`` of the maximum log K
    (uniform usage reaches it for any fraction ≤ 1); grows as usage concentrates.
    """
    log_k = math.log(probs.shape[-1])
    return F.relu(target_fraction * log_k - usage_entropy(probs)).mean() / log_k


def load_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """Σ_h Σ_k (f_hk − 1/K)², f = mean soft assignment: zero at uniform usage."""
    f = probs.mean(0)
    return (f - 1.0 / probs.shape[-1]).pow(2).sum()


def info_nce_loss(x_hat: torch.Tensor, x: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Cross-entropy of cos(x̂ᵢ, xⱼ)/τ over j with target j = i, averaged over the batch.

    Each reconstruction must sit closer to its own input than to the batch's others: the
    ranking a search over reconstructions needs, which per-vector losses never see.
    """
    logits = F.normalize(x_hat, dim=-1) @ F.normalize(x, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(x.shape[0], device=x.device))


def similarity_distillation_loss(x_hat: torch.Tensor, x: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """KL(softmax(⟨xᵢ, xⱼ⟩/τ) ‖ softmax(⟨xᵢ, x̂ⱼ⟩/τ)) over j, averaged over i (self excluded).

    The exact query–neighbour score distribution over the batch is the teacher; scores
    against reconstructions must reproduce it, which weights the near neighbours that
    decide recall@10 far above the bulk of unrelated pairs.
    """
    n = x.shape[0]
    mask = torch.eye(n, dtype=torch.bool, device=x.device)
    teacher = (x @ x.T / temperature).masked_fill(mask, float("-inf"))
    student = (x @ x_hat.T / temperature).masked_fill(mask, float("-inf"))
    p = torch.softmax(teacher, dim=-1)
    log_q = torch.log_softmax(student, dim=-1).masked_fill(mask, 0.0)
    log_p = torch.log_softmax(teacher, dim=-1).masked_fill(mask, 0.0)
    return (p * (log_p - log_q)).sum(-1).mean()


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per latent dim, averaged over the batch: ½ E_b[μ² + σ² − 1 − log σ²]  → [D]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(0)


def free_bits(kl_per_dim: torch.Tensor, threshold: float) -> torch.Tensor:
    """Σ_d max(KL_d, λ) (Kingma et al. 2016, λ in nats per dim).

    Below λ a dimension's KL is a constant, so its gradient vanishes: the optimiser no longer
    gains by collapsing that dimension onto the prior, which keeps latents in use.
    """
    return kl_per_dim.clamp_min(threshold).sum() if threshold > 0 else kl_per_dim.sum()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, free_bits_nats: float = 0.0) -> torch.Tensor:
    """Σ_d max(½ E_b[μ_d² + σ_d² − 1 − log σ_d²], λ): a Gaussian VAE's KL to N(0, I) with free bits λ.

    Zero at μ = 0, σ = 1 (λ = 0); with λ > 0 its minimum is D·λ.
    """
    return free_bits(gaussian_kl_per_dim(mu, logvar), free_bits_nats)


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """k(aᵢ, bⱼ) = exp(−‖aᵢ − bⱼ‖² / (2σ²)) with σ² = ``bandwidth``  → [A, B]."""
    return torch.exp(-torch.cdist(a, b).pow(2) / (2.0 * bandwidth))


def mmd_rbf(z: torch.Tensor, z_prior: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """MMD² = mean k(z, z) + mean k(p, p) − 2 mean k(z, p), RBF kernel (the biased V-statistic).

    σ² defaults to the latent dimension D, the scale of ½‖p − p'‖² between two N(0, I)
    samples. Zero when the two samples coincide; for single points at distance d it is
    2 − 2·exp(−d²/2σ²). A Wasserstein autoencoder pulls the aggregate of z towards the prior
    with it, instead of every posterior as the VAE's KL does.
    """
    s2 = float(z.shape[-1]) if bandwidth is None else bandwidth
    return (rbf_kernel(z, z, s2).mean() + rbf_kernel(z_prior, z_prior, s2).mean()
            - 2.0 * rbf_kernel(z, z_prior, s2).mean())


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """½ (E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̂))]): zero once real scores ≥ 1 and fakes ≤ −1."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−E[D(x̂)]: the generator (the decoder) raises the critic's score of reconstructions."""
    return -fake_logits.mean()


def adaptive_adversarial_weight(
    rec_loss: torch.Tensor, gen_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """λ = clip(‖∇_w L_rec‖ / (‖∇_w L_gen‖ + 10⁻⁴), 0, max), w = the decoder's last weights (VQGAN).

    Balances the two gradients where they meet, so the adversarial term neither drowns the
    reconstruction nor vanishes; detached, it is a weight and not a path for gradients.
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gen.norm() + 1e-4)).clamp(0.0, max_weight).detach()

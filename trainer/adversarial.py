"""The optional adversarial term: a small MLP critic on embeddings, trained with the hinge loss.

Reconstruction losses pull x̂ towards the mean of what a code stands for; a critic that
tells real embeddings from reconstructions pushes x̂ back onto the data manifold. The
generator side is ``weight × λ × (−D(x̂))`` with λ the VQGAN ratio of gradient norms at the
decoder's last layer (``vqvae.losses.adaptive_adversarial_weight``), clipped. Off by default.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.config import AdversarialConfig
from trainer.distributed import Dist
from trainer.state import flatten_optimizer, unflatten_optimizer
from vqvae import losses as L


class EmbeddingDiscriminator(nn.Module):
    """d → h → h → 1 logits, LeakyReLU(0.2): small, so the critic does not overpower the decoder."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class Adversary:
    """The critic, its optimiser, and the generator term with its adaptive weight."""

    def __init__(self, cfg: AdversarialConfig, dim: int, dist: Dist | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or Dist()
        self.critic = EmbeddingDiscriminator(dim, cfg.hidden_dim)
        self.dist.broadcast_(*self.critic.parameters())
        self.opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, betas=(0.5, 0.9))

    def active(self, step: int) -> bool:
        return step >= self.cfg.start_step

    def generator_term(
        self, x_hat: torch.Tensor, rec_loss: torch.Tensor, last_layer: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(−E[D(x̂)], weight × λ) with λ from the gradient norms of both losses at ``last_layer``."""
        self.critic.requires_grad_(False)  # the generator step must not move the critic
        try:
            gen = L.hinge_generator_loss(self.critic(x_hat))
        finally:
            self.critic.requires_grad_(True)
        lam = L.adaptive_adversarial_weight(rec_loss, gen, last_layer, self.cfg.max_adaptive_weight)
        return gen, self.cfg.weight * lam

    def critic_step(self, x: torch.Tensor, x_hat: torch.Tensor) -> float:
        """One hinge-loss step of the critic on real x against detached reconstructions."""
        loss = L.hinge_discriminator_loss(self.critic(x), self.critic(x_hat.detach()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_grads_(self.critic.parameters())
        self.opt.step()
        return float(loss.detach())

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"adversary.{k}": v for k, v in self.critic.state_dict().items()}
        opt_t, opt_meta = flatten_optimizer(self.opt.state_dict(), prefix="adv_optim")
        return {**tensors, **opt_t}, opt_meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.critic.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("adversary.")})
        self.opt.load_state_dict(unflatten_optimizer(
            {k: v for k, v in tensors.items() if k.startswith("adv_optim.")}, meta))

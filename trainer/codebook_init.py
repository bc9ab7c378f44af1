"""Codebook initialisation and upkeep: k-means from encoder outputs, EMA updates, dead-code re-seeding.

Random codebooks on a fresh encoder collapse to a handful of codes; starting every head
from k-means centres of real encoder outputs, and moving codes by running averages of
the vectors they win, keeps all of them in use.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from vqvae.quantizer import OrthogonalProductQuantizer


def kmeans_codebooks(z: np.ndarray, num_heads: int, k: int, iters: int, seed: int) -> np.ndarray:
    """faiss k-means per head on latents z [N, H*D] → centres [H, K, D]."""
    n, dim = z.shape
    d = dim // num_heads
    heads = z.reshape(n, num_heads, d)
    out = np.empty((num_heads, k, d), dtype=np.float32)
    for h in range(num_heads):
        km = faiss.Kmeans(d, k, niter=iters, seed=seed + h, verbose=False, max_points_per_centroid=1024)
        km.train(np.ascontiguousarray(heads[:, h]))
        out[h] = km.centroids.reshape(k, d)
    return out


class EMACodebook:
    """Exponential moving averages of code counts and sums; the codebook is their Laplace-smoothed ratio."""

    def __init__(self, quantizer: OrthogonalProductQuantizer, decay: float, fair_count: float) -> None:
        self.q = quantizer
        self.decay = decay
        self.fair = fair_count  # expected per-code count in one batch: B / K
        h, k, _ = quantizer.codebooks.shape
        self.count = torch.full((h, k), fair_count)
        self.sum = quantizer.codebooks.detach().clone() * fair_count

    def reset_from_codebooks(self) -> None:
        self.count.fill_(self.fair)
        self.sum = self.q.codebooks.detach().clone() * self.fair

    @torch.no_grad()
    def update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        h, k, d = self.q.codebooks.shape
        z = z_e.detach().reshape(-1, h, d)
        flat = codes + torch.arange(h).unsqueeze(0) * k  # [B, H] → slot in H*K
        counts = torch.bincount(flat.reshape(-1), minlength=h * k).reshape(h, k).float()
        sums = torch.zeros(h * k, d).index_add_(0, flat.reshape(-1), z.reshape(-1, d)).reshape(h, k, d)
        self.count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.count.sum(-1, keepdim=True)
        smoothed = (self.count + 1e-5) / (total + k * 1e-5) * total
        self.q.codebooks.data.copy_(self.sum / smoothed.unsqueeze(-1))

    @torch.no_grad()
    def reseed_dead(self, z_e: torch.Tensor, dead_fraction: float, generator: torch.Generator | None = None) -> int:
        """Move codes used less than ``dead_fraction`` of their fair share onto random batch latents."""
        h, k, d = self.q.codebooks.shape
        z = z_e.detach().reshape(-1, h, d)
        reseeded = 0
        for head in range(h):
            dead = torch.nonzero(self.count[head] < dead_fraction * self.fair).flatten()
            if dead.numel() == 0:
                continue
            pick = torch.randint(0, z.shape[0], (dead.numel(),), generator=generator)
            new = z[pick, head] + 1e-3 * torch.randn(dead.numel(), d, generator=generator)
            self.q.codebooks.data[head, dead] = new
            self.count[head, dead] = self.fair
            self.sum[head, dead] = new * self.fair
            reseeded += dead.numel()
        return reseeded


@torch.no_grad()
def reseed_dead_plain(
    quantizer: OrthogonalProductQuantizer, counts: torch.Tensor, z_e: torch.Tensor, min_count: float
) -> int:
    """Without EMA: codes whose recent hard counts [H, K] fall below ``min_count`` jump to batch latents."""
    h, _, d = quantizer.codebooks.shape
    z = z_e.detach().reshape(-1, h, d)
    reseeded = 0
    for head in range(h):
        dead = torch.nonzero(counts[head] < min_count).flatten()
        if dead.numel():
            pick = torch.randint(0, z.shape[0], (dead.numel(),))
            quantizer.codebooks.data[head, dead] = z[pick, head]
            reseeded += dead.numel()
    return reseeded

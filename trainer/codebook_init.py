"""Codebook initialisation and upkeep: k-means from encoder outputs, EMA updates, dead-code re-seeding.

Random codebooks on a fresh encoder collapse to a handful of codes; starting every head
from k-means centres of real encoder outputs, and moving codes by running averages of
the vectors they win, keeps all of them in use.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch

from trainer.config import QuantizerTrainConfig
from trainer.distributed import Dist
from vqvae.health import count_codes
from vqvae.quantizer import OrthogonalProductQuantizer

log = logging.getLogger(__name__)


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


def _no_reduce(*tensors: torch.Tensor) -> None:
    """Single process: the batch statistics are already global."""


class EMACodebook:
    """Exponential moving averages of code counts and sums; the codebook is their Laplace-smoothed ratio."""

    def __init__(self, quantizer: OrthogonalProductQuantizer, decay: float, fair_count: float) -> None:
        self.q = quantizer
        self.decay = decay
        self.fair = fair_count  # expected per-code count in one batch: B / K
        h, k, _ = quantizer.codebooks.shape
        self.count = torch.full((h, k), fair_count)
        self.sum = quantizer.codebooks.detach().clone() * fair_count
        self.reduce = _no_reduce  # distributed training sums the batch statistics over ranks here

    def reset_from_codebooks(self) -> None:
        self.count.fill_(self.fair)
        self.sum = self.q.codebooks.detach().clone() * self.fair

    @torch.no_grad()
    def update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        h, k, d = self.q.codebooks.shape
        z = z_e.detach().reshape(-1, h, d)
        flat = codes + torch.arange(h).unsqueeze(0) * k  # [B, H] → slot in H*K
        counts = torch.from_numpy(count_codes(codes, k)).float()
        sums = torch.zeros(h * k, d).index_add_(0, flat.reshape(-1), z.reshape(-1, d)).reshape(h, k, d)
        self.reduce(counts, sums)
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


def kmeans_residual_codebooks(z: np.ndarray, num_stages: int, k: int, iters: int, seed: int) -> np.ndarray:
    """Residual k-means: stage s clusters what stages < s left of z [N, D] → centres [S, K, D]."""
    residual = np.ascontiguousarray(z, dtype=np.float32).copy()
    out = np.empty((num_stages, k, z.shape[1]), dtype=np.float32)
    for s in range(num_stages):
        km = faiss.Kmeans(z.shape[1], k, niter=iters, seed=seed + s, verbose=False, max_points_per_centroid=1024)
        km.train(residual)
        out[s] = km.centroids.reshape(k, -1)
        _, assign = km.index.search(residual, 1)
        residual -= out[s][assign[:, 0]]
    return out


class CodebookKeeper:
    """Codebook upkeep during training: k-means init, EMA updates and dead-code re-seeding.

    Distributed: k-means and re-seeding run on rank 0 and are broadcast; EMA statistics and
    the hard counts behind plain re-seeding are summed over ranks first, so every rank
    computes the same codebooks from the global batch.
    """

    def __init__(self, model: torch.nn.Module, cfg: QuantizerTrainConfig, global_batch: int, dist: Dist) -> None:
        self.model, self.cfg, self.dist = model, cfg, dist
        self.quantizer = model.quantizer
        self.global_batch = global_batch
        self.quantizer.codebooks.requires_grad_(not cfg.ema)
        k = self.quantizer.codebook_size
        self.ema = EMACodebook(self.quantizer, cfg.ema_decay, global_batch / k) if cfg.ema else None
        if self.ema:
            self.ema.reduce = dist.all_reduce_sum_
        self.recent_counts = torch.zeros(self.quantizer.num_heads, k)

    @torch.no_grad()
    def init(self, x: np.ndarray, seed: int) -> None:
        """k-means on encoder outputs of a sample of x (rank 0), then every rank takes rank 0's codebooks."""
        q = self.cfg
        if q.init == "kmeans" and self.dist.is_main:
            rng = np.random.default_rng(seed)
            n = min(q.kmeans_samples, len(x))
            sample = torch.from_numpy(x[np.sort(rng.choice(len(x), n, replace=False))])
            was_training = self.model.training
            self.model.eval()
            z = torch.cat([self.model.encode_latent(sample[i : i + 4096]) for i in range(0, n, 4096)]).numpy()
            self.model.train(was_training)
            h, k = self.quantizer.num_heads, self.quantizer.codebook_size
            if self.model.config.bottleneck == "residual_vq":
                centres = kmeans_residual_codebooks(z, h, k, q.kmeans_iters, seed)
            else:
                centres = kmeans_codebooks(z, h, k, q.kmeans_iters, seed)
            self.quantizer.codebooks.data.copy_(torch.from_numpy(centres))
            log.info("codebooks initialised by k-means on %d encoder outputs", n)
        self.model.renormalize_codebooks()
        self.dist.broadcast_(self.quantizer.codebooks)
        if self.ema:
            self.ema.reset_from_codebooks()

    @torch.no_grad()
    def update(self, step: int, out: dict[str, torch.Tensor]) -> None:
        """After an optimiser step: EMA move, and every ``reseed_every`` steps dead codes re-seeded."""
        q = self.cfg
        codes = out["codes"]
        targets = out.get("quant_targets", out["z_e"])  # residual stages chase residuals, not z_e
        if self.ema:
            self.ema.update(targets, codes)
        else:
            self.recent_counts += torch.from_numpy(count_codes(codes, self.quantizer.codebook_size)).float()
        if q.reseed_every and (step + 1) % q.reseed_every == 0:
            self._reseed(targets)
        self.model.renormalize_codebooks()

    def _reseed(self, targets: torch.Tensor) -> None:
        q = self.cfg
        if self.ema:
            if self.dist.is_main:
                self.ema.reseed_dead(targets, q.dead_fraction)
            self.dist.broadcast_(self.quantizer.codebooks, self.ema.count, self.ema.sum)
            return
        self.dist.all_reduce_sum_(self.recent_counts)
        if self.dist.is_main:
            fair = q.reseed_every * self.global_batch / self.quantizer.codebook_size
            reseed_dead_plain(self.quantizer, self.recent_counts, targets, q.dead_fraction * fair)
        self.dist.broadcast_(self.quantizer.codebooks)
        self.recent_counts.zero_()

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {"recent_counts": self.recent_counts}
        if self.ema:
            tensors["ema.count"], tensors["ema.sum"] = self.ema.count, self.ema.sum
        return tensors

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.recent_counts = tensors["recent_counts"].clone()
        if self.ema:
            self.ema.count, self.ema.sum = tensors["ema.count"].clone(), tensors["ema.sum"].clone()

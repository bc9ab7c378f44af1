"""Product quantizer: the latent splits into H heads, each snapped to its nearest of K codes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    """What the losses need: quantized latents with and without the straight-through path."""

    z_q: torch.Tensor  # [B, H*D], z_e + (z_q - z_e).detach(): forward value of z_q, gradient of z_e
    z_q_raw: torch.Tensor  # [B, H*D], codebook rows, gradient flows to the codebooks
    codes: torch.Tensor  # [B, H] int64
    distances: torch.Tensor  # [B, H, K] squared L2 from each head of z_e to each code


class OrthogonalProductQuantizer(nn.Module):
    """H independent codebooks of K codes over disjoint D-d slices of the latent.

    "Orthogonal" because the heads quantize orthogonal subspaces (the slices) and the
    orthogonal loss keeps their codebook centres apart; the code of a vector is one byte
    per head when K ≤ 256.
    """

    def __init__(self, num_heads: int = 4, codebook_size: int = 256, head_dim: int = 128) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.codebook_size = codebook_size
        self.head_dim = head_dim
        self.codebooks = nn.Parameter(torch.randn(num_heads, codebook_size, head_dim) * head_dim**-0.5)

    def split(self, z: torch.Tensor) -> torch.Tensor:
        """[B, H*D] → [B, H, D]."""
        if z.shape[-1] != self.num_heads * self.head_dim:
            raise ValueError(f"latent has {z.shape[-1]} dims, quantizer expects {self.num_heads * self.head_dim}")
        return z.reshape(z.shape[0], self.num_heads, self.head_dim)

    def distances(self, z_e: torch.Tensor) -> torch.Tensor:
        """Squared L2 distances [B, H, K], all heads in one batched matmul."""
        z = self.split(z_e)
        cb = self.codebooks
        cross = torch.einsum("bhd,hkd->bhk", z, cb)
        return (z * z).sum(-1, keepdim=True) - 2 * cross + (cb * cb).sum(-1).unsqueeze(0)

    def get_codes_from_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, H] (any integer dtype) → quantized latents [B, H*D]."""
        if codes.ndim != 2 or codes.shape[1] != self.num_heads:
            raise ValueError(f"codes must be [N, {self.num_heads}], got {list(codes.shape)}")
        heads = torch.arange(self.num_heads, device=codes.device).unsqueeze(0)
        return self.codebooks[heads, codes.long()].reshape(codes.shape[0], -1)

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        dist = self.distances(z_e)
        codes = dist.argmin(dim=-1)
        z_q_raw = self.get_codes_from_indices(codes)
        z_q = z_e + (z_q_raw - z_e).detach()
        return QuantizerOutput(z_q=z_q, z_q_raw=z_q_raw, codes=codes, distances=dist)

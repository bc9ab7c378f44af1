"""The other bottlenecks: residual VQ (codes), and Gaussian-VAE / Wasserstein float latents.

Every model here keeps MonolithWiki's encoder/decoder layout and its ``forward`` contract (a
dict the loss factory reads by key), so that the trainer, the loss factory and the
checkpoint code handle all of them alike. ``produces_codes`` tells the service which ones
it may serve: only the code-producing ones store a vector in ``num_heads`` bytes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqvae.config import ModelConfig
from vqvae.model import MonolithWiki, _mlp
from vqvae.quantizer import QuantizerOutput


class ResidualQuantizer(nn.Module):
    """S stages of K codes over the whole latent; stage s quantizes what stages < s left.

    ``codebooks`` is [S, K, D] like the product quantizer's [H, K, D], so EMA updates, dead-
    code re-seeding and the service's lookup tables work on it unchanged; what differs is
    that each stage's targets are residuals (``stage_inputs``), not slices of z_e.
    """

    def __init__(self, num_stages: int = 4, codebook_size: int = 256, dim: int = 512) -> None:
        super().__init__()
        self.num_heads = num_stages  # one byte per stage, as one per head
        self.codebook_size = codebook_size
        self.head_dim = dim
        self.codebooks = nn.Parameter(torch.randn(num_stages, codebook_size, dim) * dim**-0.5)

    def _greedy(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Greedy encoding: (distances [B,S,K], codes [B,S], stage inputs [B,S,D], chosen codes [B,S,D])."""
        if z_e.shape[-1] != self.head_dim:
            raise ValueError(f"latent has {z_e.shape[-1]} dims, quantizer expects {self.head_dim}")
        residual, dists, codes, inputs, chosen = z_e, [], [], [], []
        for cb in self.codebooks:
            d = (residual * residual).sum(-1, keepdim=True) - 2 * residual @ cb.T + (cb * cb).sum(-1)
            c = d.argmin(-1)
            q = cb[c]
            dists.append(d)
            codes.append(c)
            inputs.append(residual)
            chosen.append(q)
            residual = residual - q.detach()
        return torch.stack(dists, 1), torch.stack(codes, 1), torch.stack(inputs, 1), torch.stack(chosen, 1)

    def distances(self, z_e: torch.Tensor) -> torch.Tensor:
        """Distances [B, S, K] of each stage's residual to its codes; argmin gives the codes."""
        return self._greedy(z_e)[0]

    def get_codes_from_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, S] → Σ_s codebooks[s, codes[:, s]]  [B, D]."""
        if codes.ndim != 2 or codes.shape[1] != self.num_heads:
            raise ValueError(f"codes must be [N, {self.num_heads}], got {list(codes.shape)}")
        stages = torch.arange(self.num_heads, device=codes.device).unsqueeze(0)
        return self.codebooks[stages, codes.long()].sum(1)

    def forward(self, z_e: torch.Tensor) -> tuple[QuantizerOutput, torch.Tensor, torch.Tensor]:
        dist, codes, inputs, chosen = self._greedy(z_e)
        z_q_raw = chosen.sum(1)
        z_q = z_e + (z_q_raw - z_e).detach()
        return QuantizerOutput(z_q=z_q, z_q_raw=z_q_raw, codes=codes, distances=dist), inputs, chosen


class ResidualVQ(MonolithWiki):
    """MonolithWiki's encoder and decoder around an S-stage residual quantizer (S bytes).

    With ``normalize_latent`` the whole z_e has unit length (residuals of later stages do
    not, so the codebooks are never renormalised).
    """

    bottleneck = "residual_vq"

    def __init__(self, config: ModelConfig | None = None) -> None:
        config = config or ModelConfig(bottleneck="residual_vq")
        if config.bottleneck != "residual_vq":
            raise ValueError(f"ResidualVQ needs bottleneck 'residual_vq', got {config.bottleneck!r}")
        super().__init__(config)
        c = self.config
        self.quantizer = ResidualQuantizer(c.num_heads, c.codebook_size, c.latent_dim)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        return F.normalize(z, dim=-1) if self.config.normalize_latent else z

    def search_latent(self, x: torch.Tensor) -> torch.Tensor:
        """z_e repeated per stage [B, S·D]: scored against the stage codebooks like product heads,
        Σ_s ‖z − c_s‖² ranks rows as ‖z − Σ_s c_s‖² does up to the cross terms between stages."""
        return self.encode_latent(x).repeat(1, self.config.num_heads)

    @torch.no_grad()
    def renormalize_codebooks(self) -> None:
        """Residual codes are not unit vectors: nothing to do."""

    def quantize(self, z_e: torch.Tensor) -> dict[str, torch.Tensor]:
        q, inputs, chosen = self.quantizer(z_e)
        return {
            **self.quantizer_outputs(q),
            "stage_inputs": inputs,  # [B, S, D] what each stage quantizes (its EMA targets)
            "stage_codes": chosen,  # [B, S, D] the code each stage chose, gradient to the codebook
            "quant_targets": inputs.reshape(z_e.shape[0], -1),
        }


class ContinuousAutoencoder(nn.Module):
    """Encoder/decoder with a float latent; the base of the two comparison bottlenecks."""

    bottleneck = "continuous"
    produces_codes = False
    encoder_outputs = 1  # multiples of latent_dim the encoder emits

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = _mlp(c.input_dim, c.hidden_dim, c.latent_dim * self.encoder_outputs, c.dropout)
        self.decoder = _mlp(c.latent_dim, c.hidden_dim, c.input_dim, c.dropout)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic latent (the posterior mean for the VAE)."""
        return self.encoder(x)[:, : self.config.latent_dim]

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        x_hat = self.decoder(z)
        return F.normalize(x_hat, dim=-1) if self.config.normalize_output else x_hat

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_latent(self.encode_latent(x))

    def renormalize_codebooks(self) -> None:
        """No codebooks."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"a {self.config.bottleneck} model keeps a float latent and produces no codes")

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"a {self.config.bottleneck} model keeps a float latent and produces no codes")


class GaussianVAE(ContinuousAutoencoder):
    """q(z|x) = N(μ(x), diag σ²(x)), prior N(0, I); the KL term (with free bits) regularises it."""

    bottleneck = "vae"
    encoder_outputs = 2

    def forward(self, x: torch.Tensor, quantize: bool = True) -> dict[str, torch.Tensor]:
        """``quantize=False`` (the warm-up) decodes μ, a plain autoencoder; else a sample of q(z|x)
        in training mode and μ in eval mode."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        logvar = logvar.clamp(-30.0, 20.0)  # exp() stays finite whatever the encoder emits
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if (quantize and self.training) else mu
        return {"x": x, "z_e": mu, "mu": mu, "logvar": logvar, "z": z, "x_hat": self.decode_latent(z)}


class WassersteinAE(ContinuousAutoencoder):
    """Deterministic encoder; the MMD between the batch of z and prior samples regularises it (WAE-MMD)."""

    bottleneck = "wasserstein"

    def forward(self, x: torch.Tensor, quantize: bool = True) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        return {"x": x, "z_e": z, "z": z, "z_prior": torch.randn_like(z), "x_hat": self.decode_latent(z)}

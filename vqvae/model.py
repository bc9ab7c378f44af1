"""MonolithWiki (the shipped architecture) and the legacy MonolithV13 layout (built by ``vqvae.registry``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqvae.config import ModelConfig
from vqvae.quantizer import OrthogonalProductQuantizer, QuantizerOutput


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, d_hidden),
        nn.LayerNorm(d_hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(d_hidden, d_out),
    )


class MonolithWiki(nn.Module):
    """Encoder 384→1024→512, 4×256×128 product quantizer, decoder 512→1024→384.

    ``forward`` returns a dict so that the loss factory can read each term's inputs by key.
    """

    bottleneck = "product_vq"
    produces_codes = True

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        self.encoder = self._make_encoder(c)
        self.quantizer: nn.Module = OrthogonalProductQuantizer(c.num_heads, c.codebook_size, c.head_dim)
        self.decoder = self._make_decoder(c)

    @staticmethod
    def _make_encoder(c: ModelConfig) -> nn.Module:
        return _mlp(c.input_dim, c.hidden_dim, c.latent_dim, c.dropout)

    @staticmethod
    def _make_decoder(c: ModelConfig) -> nn.Module:
        return _mlp(c.latent_dim, c.hidden_dim, c.input_dim, c.dropout)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """z_e [B, H*D]; with ``normalize_latent`` every head's slice has unit length."""
        z = self.encoder(x)
        if self.config.normalize_latent:
            c = self.config
            z = F.normalize(z.reshape(-1, c.num_heads, c.head_dim), dim=-1).reshape(-1, c.latent_dim)
        return z

    def search_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The query side of compressed-domain search: z_e, scored head by head against the codes."""
        return self.encode_latent(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x → codes → x̂, what a stored vector becomes."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def renormalize_codebooks(self) -> None:
        """Put codes back on the unit sphere after an update moved them (normalize_latent only)."""
        if self.config.normalize_latent:
            cb = self.quantizer.codebooks
            cb.data.copy_(F.normalize(cb.data, dim=-1))

    def decode_latent(self, z_q: torch.Tensor) -> torch.Tensor:
        """Latent → embedding; unit length when configured, as the inputs are."""
        x_hat = self.decoder(z_q)
        return F.normalize(x_hat, dim=-1) if self.config.normalize_output else x_hat

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, 384] → codes [B, H] int64."""
        return self.quantizer.distances(self.encode_latent(x)).argmin(dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, H] → reconstructions [B, 384]."""
        return self.decode_latent(self.quantizer.get_codes_from_indices(codes))

    def forward(self, x: torch.Tensor, quantize: bool = True) -> dict[str, torch.Tensor]:
        """``quantize=False`` bypasses the quantizer (the autoencoder warm-up before k-means init)."""
        z_e = self.encode_latent(x)
        if not quantize:
            return {"x": x, "z_e": z_e, "x_hat": self.decode_latent(z_e)}
        out = {"x": x, "z_e": z_e, **self.quantize(z_e)}
        out["x_hat"] = self.decode_latent(out["z_q"])
        return out

    def quantize(self, z_e: torch.Tensor) -> dict[str, torch.Tensor]:
        """The quantizer's part of the output dict; subclasses with other quantizers add their keys."""
        return self.quantizer_outputs(self.quantizer(z_e))

    def quantizer_outputs(self, q: QuantizerOutput) -> dict[str, torch.Tensor]:
        return {
            "z_q": q.z_q,
            "z_q_raw": q.z_q_raw,
            "codes": q.codes,
            "distances": q.distances,
            "codebooks": self.quantizer.codebooks,
        }


class MonolithV13(MonolithWiki):
    """The legacy single-layer layout (384→256→384, 4 heads × 64-d), kept loadable as a fallback."""

    @staticmethod
    def _make_encoder(c: ModelConfig) -> nn.Module:
        return nn.Sequential(nn.Linear(c.input_dim, c.latent_dim))

    @staticmethod
    def _make_decoder(c: ModelConfig) -> nn.Module:
        return nn.Sequential(nn.Linear(c.latent_dim, c.input_dim))

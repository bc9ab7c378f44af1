"""Model configuration: the one place that fixes the shapes a checkpoint must match."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

Bottleneck = Literal["product_vq", "residual_vq", "vae", "wasserstein"]
BOTTLENECKS: tuple[str, ...] = get_args(Bottleneck)
# Bottlenecks whose latent is a handful of bytes; the others keep a float latent and exist
# for comparison in training, so they cannot serve encode/decode/search.
CODE_BOTTLENECKS: frozenset[str] = frozenset({"product_vq", "residual_vq"})


class ModelConfig(BaseModel):
    """Shapes and switches of a Monolith model.

    Stored as JSON inside every checkpoint, so a loader can rebuild the exact
    architecture without guessing from tensor shapes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: Literal["MonolithWiki", "MonolithV13"] = "MonolithWiki"
    # product_vq: H heads quantize disjoint slices of z_e (MonolithWiki). residual_vq: H stages
    # each quantize what the previous stages left of the whole z_e (still one byte per stage).
    # vae / wasserstein: a Gaussian or MMD-regularised float latent, no codes.
    bottleneck: Bottleneck = "product_vq"
    input_dim: int = Field(384, gt=0)
    hidden_dim: int = Field(1024, gt=0)
    latent_dim: int = Field(512, gt=0)
    num_heads: int = Field(4, gt=0, description="product_vq: heads; residual_vq: stages; one byte each")
    codebook_size: int = Field(256, gt=1, le=256)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    normalize_output: bool = True
    # Each head's slice of z_e (and each code) lies on the unit sphere: the encoder cannot
    # grow its outputs away from the codebooks, and squared L2 becomes 2 − 2·cosine.
    normalize_latent: bool = True

    @model_validator(mode="after")
    def _heads_divide_latent(self) -> ModelConfig:
        if self.bottleneck != "product_vq" and self.architecture != "MonolithWiki":
            raise ValueError(f"bottleneck {self.bottleneck!r} is built on the MonolithWiki layout only")
        if self.bottleneck == "product_vq" and self.latent_dim % self.num_heads:
            raise ValueError(
                f"latent_dim ({self.latent_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        return self

    @property
    def produces_codes(self) -> bool:
        """Whether the model stores a vector as ``num_heads`` one-byte codes (servable)."""
        return self.bottleneck in CODE_BOTTLENECKS

    @property
    def latent_unit_heads(self) -> bool:
        """Every head of z_e and every code has unit length (product_vq with normalize_latent),
        so a latent distance converts to a cosine."""
        return self.normalize_latent and self.bottleneck == "product_vq"

    @property
    def head_dim(self) -> int:
        """Width of one codebook entry: a slice of z_e (product) or all of it (residual)."""
        return self.latent_dim if self.bottleneck == "residual_vq" else self.latent_dim // self.num_heads

    @property
    def bytes_per_vector(self) -> int:
        """One byte per head: codebook_size ≤ 256 keeps every code in a uint8."""
        return self.num_heads


class EncodeConfig(BaseModel):
    """How ``Monolith.encode`` picks codes (``vqvae.refine``): the nearest latent code per head, or
    a decoder-aware local search over each head's ``candidates`` nearest codes.

    Stored in a checkpoint as the setting its trainer measured; a user may override it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidates: int = Field(0, ge=0, le=256, description="codes per head tried through the decoder; ≤ 1: nearest")
    sweeps: int = Field(2, ge=1, le=16, description="passes over the heads")
    eta: float = Field(4.0, ge=1.0, description="weight of the error along x (score-aware, as in training)")

    @property
    def refines(self) -> bool:
        return self.candidates > 1

    @classmethod
    def from_spec(cls, spec: str) -> EncodeConfig:
        """``CANDIDATES:SWEEPS`` (e.g. ``8:2``), as the eval and benchmark command lines take it;
        ValueError naming the form otherwise."""
        candidates, colon, sweeps = spec.partition(":")
        try:
            if not colon:
                raise ValueError(spec)
            return cls(candidates=int(candidates), sweeps=int(sweeps))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise ValueError(f"an encoding is CANDIDATES:SWEEPS (e.g. 8:2, 0 ≤ CANDIDATES ≤ 256, 1 ≤ SWEEPS ≤ 16), "
                             f"got {spec!r}") from exc

    @property
    def label(self) -> str:
        """``nearest`` or ``CxS``: how reports name the setting."""
        return f"{self.candidates}x{self.sweeps}" if self.refines else "nearest"

"""Model configuration: the one place that fixes the shapes a checkpoint must match."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    """Shapes and switches of a Monolith model.

    Stored as JSON inside every checkpoint, so a loader can rebuild the exact
    architecture without guessing from tensor shapes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: Literal["MonolithWiki", "MonolithV13"] = "MonolithWiki"
    input_dim: int = Field(384, gt=0)
    hidden_dim: int = Field(1024, gt=0)
    latent_dim: int = Field(512, gt=0)
    num_heads: int = Field(4, gt=0)
    codebook_size: int = Field(256, gt=1, le=256)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    normalize_output: bool = True
    # Each head's slice of z_e (and each code) lies on the unit sphere: the encoder cannot
    # grow its outputs away from the codebooks, and squared L2 becomes 2 − 2·cosine.
    normalize_latent: bool = True

    @model_validator(mode="after")
    def _heads_divide_latent(self) -> ModelConfig:
        if self.latent_dim % self.num_heads:
            raise ValueError(
                f"latent_dim ({self.latent_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.latent_dim // self.num_heads

    @property
    def bytes_per_vector(self) -> int:
        """One byte per head: codebook_size ≤ 256 keeps every code in a uint8."""
        return self.num_heads

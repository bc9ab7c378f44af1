"""Training configuration, validated by pydantic: unknown keys and negative weights are errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vqvae.config import ModelConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    train: list[Path] = Field(..., min_length=1, description="float32 .npy files [N, 384]")
    val: list[Path] = Field(default_factory=list, description="held-out .npy files for model selection")
    max_val: int = Field(3000, gt=0, description="validation vectors used from each val file (the first)")


class OptimConfig(Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(1024, ge=2)
    epochs: float = Field(20, gt=0, description="passes over the training set (VQ phase)")
    warmup_steps: int = Field(500, ge=0, description="autoencoder steps without quantizer before k-means init")
    lr_min_ratio: float = Field(0.05, ge=0, le=1, description="cosine decay floor, as a share of lr")
    grad_clip: float = Field(1.0, gt=0)


class QuantizerTrainConfig(Strict):
    init: Literal["kmeans", "random"] = "kmeans"
    kmeans_samples: int = Field(65536, ge=256)
    kmeans_iters: int = Field(25, ge=1)
    ema: bool = True
    ema_decay: float = Field(0.99, gt=0, lt=1)
    reseed_every: int = Field(100, ge=0, description="steps between dead-code re-seeding (0: never)")
    dead_fraction: float = Field(0.03, ge=0, description="a code is dead below this share of its fair usage")


class LossConfig(Strict):
    """Weights (≥ 0; 0 switches a term off) and the parameters of each term."""

    cosine: float = Field(1.0, ge=0)
    mse: float = Field(0.0, ge=0)
    score_aware: float = Field(1.0, ge=0)
    score_aware_eta: float = Field(4.0, ge=1)
    codebook: float = Field(1.0, ge=0, description="codebook + β·commitment; the codebook part is idle with EMA")
    commitment_beta: float = Field(0.25, ge=0)
    orthogonal: float = Field(0.0, ge=0)
    head_balance: float = Field(0.0, ge=0)
    entropy: float = Field(0.0, ge=0)
    entropy_target: float = Field(0.8, ge=0, le=1)
    assignment_temperature: float = Field(1.0, gt=0)
    load_balance: float = Field(0.0, ge=0)
    info_nce: float = Field(0.0, ge=0)
    info_nce_temperature: float = Field(0.07, gt=0)
    distill: float = Field(0.0, ge=0)
    distill_temperature: float = Field(0.05, gt=0)


class TrainConfig(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    quantizer: QuantizerTrainConfig = Field(default_factory=QuantizerTrainConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    out_dir: Path = Path("runs/monolith")
    seed: int = 0
    eval_every: int = Field(500, ge=1, description="steps between validation and best-checkpoint checks")
    checkpoint_every: int = Field(500, ge=1, description="steps between resumable state saves")
    max_steps: int | None = Field(None, ge=1, description="stop early after this many steps (both phases)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message says where."""


def load_config(path: Path, overrides: dict | None = None) -> TrainConfig:
    """Read YAML or JSON; relative data paths are taken relative to the current directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) if path.suffix in {".yaml", ".yml"} else json.loads(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.update(overrides or {})
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: invalid config:\n" + "\n".join(lines)) from exc

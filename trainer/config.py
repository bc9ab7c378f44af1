"""Training configuration, validated by pydantic: unknown keys and negative weights are errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vqvae.config import EncodeConfig, ModelConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    train: list[Path] = Field(..., min_length=1, description="float32 .npy files [N, 384]")
    val: list[Path] = Field(default_factory=list, description="held-out .npy files for model selection")
    max_val: int = Field(3000, gt=0, description="validation vectors used from each val file (the first)")
    noise: float = Field(0.0, ge=0, description="augmentation: rows jittered on their sphere by this relative "
                         "noise (trainer.data.jitter; cosine to the row ≈ 1/√(1+noise²)); 0: none")
    noise_share: float = Field(0.5, ge=0, le=1, description="share of each batch's rows jittered when noise > 0")
    mix: float = Field(0.0, ge=0, le=1, description="augmentation: share of each batch's rows replaced by a blend "
                       "with their nearest neighbour in the batch (trainer.data.mix_neighbours); 0: none")
    mix_min: float = Field(0.5, ge=0, le=1, description="least weight a blended row keeps on itself (uniform to 1)")


class OptimConfig(Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(1024, ge=2)
    epochs: float = Field(20, gt=0, description="passes over the training set (VQ phase)")
    warmup_steps: int = Field(500, ge=0, description="autoencoder steps without quantizer before k-means init")
    lr_warmup_steps: int = Field(100, ge=0, description="first steps of the run over which the learning rate "
                                 "rises linearly to lr before its cosine decay (0: none); not warmup_steps")
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


class ScheduleConfig(Strict):
    """How the weight of one term (by default the bottleneck's KL or MMD) moves over the steps.

    The scheduled weight is ``weight × m(step)``; ``m`` runs from ``start`` to ``end``.
    """

    kind: Literal["constant", "linear", "cyclical_linear", "cosine", "adaptive"] = "constant"
    term: str | None = Field(None, description="term to schedule (default: kl for vae, mmd for wasserstein)")
    start: float = Field(0.0, ge=0, description="multiplier at step 0")
    end: float = Field(1.0, ge=0, description="multiplier once the ramp is over")
    steps: int = Field(1000, ge=1, description="ramp length (linear, cosine) or cycle length (cyclical)")
    ramp_fraction: float = Field(0.5, gt=0, le=1, description="cyclical: share of a cycle spent rising")
    target: float = Field(1.0, gt=0, description="adaptive: the value of the term to hold")
    window: int = Field(50, ge=1, description="adaptive: steps averaged before each adjustment")
    rate: float = Field(0.05, gt=0, lt=1, description="adaptive: relative change per adjustment")
    min_multiplier: float = Field(1e-3, gt=0, description="adaptive: lower bound of m")
    max_multiplier: float = Field(1e3, gt=0, description="adaptive: upper bound of m")


class BalancingConfig(Strict):
    """``manual``: the configured weights. ``uncertainty``: Σ exp(−s_i)·w_i·L_i + s_i with a learned
    log-variance s_i per term (Kendall et al. 2018), clamped to [log_var_min, log_var_max]."""

    method: Literal["manual", "uncertainty"] = "manual"
    terms: list[str] | None = Field(None, description="terms to balance (default: every active term)")
    log_var_min: float = -3.0
    log_var_max: float = 3.0
    lr: float | None = Field(None, gt=0, description="learning rate of the log-variances (default: optim.lr)")

    @model_validator(mode="after")
    def _range(self) -> BalancingConfig:
        if self.log_var_min > self.log_var_max:
            raise ValueError(f"log_var_min ({self.log_var_min}) must not exceed log_var_max ({self.log_var_max})")
        return self


class AdversarialConfig(Strict):
    """A small MLP critic on embeddings (hinge loss); its generator term is weighted by
    ``weight × λ`` with λ the VQGAN ratio of gradient norms at the decoder's last layer."""

    weight: float = Field(0.0, ge=0, description="0 switches the adversarial term off")
    start_step: int = Field(0, ge=0, description="no adversarial term before this step")
    max_adaptive_weight: float = Field(100.0, gt=0, description="clip of λ")
    hidden_dim: int = Field(256, gt=0)
    lr: float = Field(1e-4, gt=0)


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
    kl: float = Field(1e-6, ge=0, description="vae: KL to N(0, I)")
    free_bits: float = Field(0.0, ge=0, description="vae: nats per latent dim below which KL is not penalised")
    mmd: float = Field(100.0, ge=0, description="wasserstein: MMD to N(0, I)")
    mmd_bandwidth: float | None = Field(None, gt=0, description="RBF σ² (default: the latent dimension)")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    balancing: BalancingConfig = Field(default_factory=BalancingConfig)
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)


class MonitorConfig(Strict):
    """Loss history, plots and the stability monitor."""

    log_every: int = Field(10, ge=1, description="steps averaged into one row of losses.jsonl")
    plots: bool = Field(True, description="PNG plots in out_dir/plots at the end of training")
    tensorboard: bool = Field(True, description="also log to out_dir/tensorboard where tensorboard is installed")
    on_nonfinite: Literal["skip", "stop"] = Field("stop", description="NaN/Inf loss or gradient")
    on_explode: Literal["warn", "skip", "stop"] = Field("warn", description="gradient norm far above its median")
    explode_factor: float = Field(50.0, gt=1, description="exploding: norm > factor × median of the window")
    vanish_below: float = Field(1e-8, ge=0, description="vanishing: gradient norm under this")
    window: int = Field(100, ge=2, description="gradient norms kept for the median")
    max_skips: int = Field(20, ge=1, description="consecutive skipped steps before the run stops")


class TrainConfig(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    quantizer: QuantizerTrainConfig = Field(default_factory=QuantizerTrainConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    encoding: EncodeConfig = Field(
        EncodeConfig(candidates=8, sweeps=2),
        description="how validation (and, from the checkpoint, Monolith.encode) picks codes; candidates 0: nearest")
    out_dir: Path = Path("runs/monolith")
    seed: int = 0
    eval_every: int = Field(500, ge=1, description="steps between validation and best-checkpoint checks")
    checkpoint_every: int = Field(500, ge=1, description="steps between resumable state saves")
    max_steps: int | None = Field(None, ge=1, description="stop early after this many steps (both phases)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message says where."""


def parse_overrides(specs: list[str]) -> dict:
    """``["loss.info_nce=0.1", "optim.epochs=4"]`` → a nested dict; values are read as YAML.

    Lets a user (or an ablation script) change one field of a config file without copying it.
    """
    out: dict = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY.PATH=VALUE, got {spec!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {spec!r}: {part!r} is set to a value and also used as a section")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {spec!r}: cannot parse the value: {exc}") from exc
    return out


def _deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: Path, overrides: dict | None = None) -> TrainConfig:
    """Read YAML or JSON, then merge ``overrides`` (nested, key by key) over it; relative data
    paths are taken relative to the current directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) if path.suffix in {".yaml", ".yml"} else json.loads(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = _deep_merge(raw, overrides or {})
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}{_valid_keys(e)}" for e in exc.errors()]
        raise ConfigError(f"{path}: invalid config:\n" + "\n".join(lines)) from exc


def _valid_keys(error: dict) -> str:
    """For an unknown key, the keys its section accepts (so a typo shows its fix)."""
    if error["type"] != "extra_forbidden":
        return ""
    model: type[BaseModel] = TrainConfig
    for part in error["loc"][:-1]:
        field = model.model_fields.get(str(part))
        inner = getattr(field, "annotation", None) if field else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return ""
        model = inner
    return f" (valid: {', '.join(model.model_fields)})"

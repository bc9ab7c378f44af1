"""The loss landscape around trained weights: a 2-D slice and a sharpness curve.

Slice (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"): two random
directions d₁, d₂, each *filter-normalised* — every row of a weight matrix (every code
vector of a codebook) is rescaled to the norm of the same row of the weights, biases and
LayerNorm parameters are left still — and the training loss L(θ + α d₁ + β d₂) on a grid.
Without the normalisation a layer with small weights would look flat only because the
same step is relatively tiny there.

Sharpness: for radii ε, the largest loss increase found within the relative ball
‖δ_f‖ ≤ ε‖w_f‖ per filter: the best of random filter-normalised perturbations, then a few
projected gradient-ascent steps from it. A flat minimum (small increase up to large ε)
tends to generalise; a sharp one loses much of its quality to any drift of the weights.

Both take minutes on a CPU: with ``progress`` a tqdm bar on stderr counts every loss
evaluated (grid points, then each radius's probes and ascent steps), so results on stdout
stay clean.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from trainer.config import LossConfig
from trainer.loss_factory import LossSuite, build_loss
from vqvae.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """A random direction shaped like the parameters: ‖d_f‖ = ‖w_f‖ per filter, 0 for 1-D params."""
    dirs = []
    for p in model.parameters():
        d = torch.randn(p.shape, generator=generator)
        if p.dim() <= 1:
            d.zero_()
        else:
            rows, w = d.reshape(-1, p.shape[-1]), p.detach().reshape(-1, p.shape[-1])
            rows.mul_(w.norm(dim=1, keepdim=True) / (rows.norm(dim=1, keepdim=True) + 1e-10))
        dirs.append(d)
    return dirs


def _project(delta: list[torch.Tensor], base: list[torch.Tensor], eps: float) -> None:
    """Shrink every filter of δ into ‖δ_f‖ ≤ ε‖w_f‖, in place."""
    for d, w in zip(delta, base, strict=True):
        if d.dim() > 1:
            rows, wr = d.reshape(-1, d.shape[-1]), w.reshape(-1, w.shape[-1])
            limit = eps * wr.norm(dim=1, keepdim=True)
            rows.mul_(torch.clamp(limit / (rows.norm(dim=1, keepdim=True) + 1e-12), max=1.0))


class LossProbe:
    """The suite's total loss of a model at θ₀ + δ on fixed data, with fixed randomness."""

    def __init__(self, model: nn.Module, suite: LossSuite, x: torch.Tensor, seed: int = 0) -> None:
        self.model, self.suite, self.x, self.seed = model.eval(), suite, x, seed
        self.params = list(model.parameters())
        self.base = [p.detach().clone() for p in self.params]

    def _set(self, delta: list[torch.Tensor] | None) -> None:
        with torch.no_grad():
            for p, w, d in zip(self.params, self.base, delta or [None] * len(self.base), strict=True):
                p.copy_(w if d is None else w + d)

    def loss(self, delta: list[torch.Tensor] | None = None, grad: bool = False) -> torch.Tensor:
        self._set(delta)
        torch.manual_seed(self.seed)  # the same prior samples (wasserstein) at every point
        with torch.set_grad_enabled(grad):
            return self.suite(self.model(self.x))["total"]

    def restore(self) -> None:
        self._set(None)


def grid_losses(probe: LossProbe, d1: list[torch.Tensor], d2: list[torch.Tensor],
                steps: int, radius: float, bar: tqdm | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients [steps] and losses [steps, steps] (rows: β along d₂, columns: α along d₁).
    ``bar`` (optional) advances by one per loss evaluated."""
    coeffs = np.linspace(-radius, radius, steps)
    z = np.empty((steps, steps))
    for i, b in enumerate(coeffs):
        for j, a in enumerate(coeffs):
            z[i, j] = float(probe.loss([a * u + b * v for u, v in zip(d1, d2, strict=True)]))
            if bar is not None:
                bar.update(1)
    probe.restore()
    return coeffs, z


def sharpness(probe: LossProbe, radii: list[float], samples: int, ascent_steps: int,
              generator: torch.Generator, bar: tqdm | None = None) -> list[dict[str, float]]:
    """Per radius: the largest increase over ``samples`` random perturbations, then after ascent.
    ``bar`` (optional) advances by one per probe and per ascent step."""
    base_loss = float(probe.loss())
    rows = []
    for eps in radii:
        if bar is not None:
            bar.set_description(f"sharpness ε={eps:g}")
        best, best_delta = -np.inf, None
        for _ in range(samples):
            delta = [eps * d for d in filter_normalized_direction(probe.model, generator)]
            value = float(probe.loss(delta)) - base_loss
            if value > best:
                best, best_delta = value, delta
            if bar is not None:
                bar.update(1)
        ascended = best
        for _ in range(ascent_steps):
            delta = [d.clone().requires_grad_(p.dim() > 1) for d, p in zip(best_delta, probe.base, strict=True)]
            probe.restore()
            total = probe.suite(_forward_with(probe, delta))["total"]
            grads = torch.autograd.grad(total, [d for d in delta if d.requires_grad], allow_unused=True)
            it = iter(grads)
            with torch.no_grad():
                stepped = [d.detach() + (0.5 * eps * _unit_rows(next(it), w) if d.requires_grad else 0.0)
                           for d, w in zip(delta, probe.base, strict=True)]
            _project(stepped, probe.base, eps)
            value = float(probe.loss(stepped)) - base_loss
            if value > ascended:
                ascended, best_delta = value, stepped
            if bar is not None:
                bar.update(1)
        rows.append({"radius": eps, "random": best, "ascent": ascended})
    probe.restore()
    return rows


def _unit_rows(g: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
    """The gradient rescaled per filter to ‖w_f‖ (a filter-normalised ascent direction)."""
    if g is None:
        return torch.zeros_like(w)
    rows, wr = g.reshape(-1, g.shape[-1]), w.reshape(-1, w.shape[-1])
    return (rows * wr.norm(dim=1, keepdim=True) / (rows.norm(dim=1, keepdim=True) + 1e-12)).reshape(g.shape)


def _forward_with(probe: LossProbe, delta: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's output at θ₀ + δ as a differentiable function of δ."""
    params = {name: w + d for (name, _), w, d in zip(probe.model.named_parameters(), probe.base, delta, strict=True)}
    torch.manual_seed(probe.seed)
    return torch.func.functional_call(probe.model, params, (probe.x,))


@dataclass
class LandscapeResult:
    coeffs: np.ndarray
    losses: np.ndarray
    center_loss: float
    sharpness: list[dict[str, float]]
    paths: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "center_loss": self.center_loss,
            "grid_min": float(self.losses.min()),
            "grid_max": float(self.losses.max()),
            "radius": float(self.coeffs[-1]),
            "steps": len(self.coeffs),
            "sharpness": self.sharpness,
            "files": {k: str(v) for k, v in self.paths.items()},
        }


def loss_config_of(meta: dict[str, Any]) -> LossConfig:
    """The loss the checkpoint was trained with (its ``training`` metadata), else the defaults."""
    training = meta.get("training")
    if not isinstance(training, dict) or "loss" not in training:
        log.warning("checkpoint has no training config: using the default loss weights")
        return LossConfig()
    return LossConfig.model_validate(training["loss"])


def run_landscape(checkpoint: Path, x: np.ndarray, out_dir: Path, steps: int = 21, radius: float = 1.0,
                  radii: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), samples: int = 8,
                  ascent_steps: int = 5, seed: int = 0, progress: bool = False) -> LandscapeResult:
    """Compute the slice and the sharpness curve of a checkpoint on x; write PNGs and a JSON summary.
    ``progress``: a tqdm bar on stderr over every loss evaluated."""
    try:  # before minutes of work, not after
        from trainer.plots import plot_landscape, plot_sharpness
    except ImportError as exc:
        raise ImportError(f"the landscape is drawn with matplotlib ({exc}): pip install 'monolith[plots]'") from exc

    ck = load_checkpoint(checkpoint)
    suite = build_loss(loss_config_of(ck.metadata), ck.config, quantize=True)
    probe = LossProbe(ck.model, suite, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), seed)
    gen = torch.Generator().manual_seed(seed)
    d1 = filter_normalized_direction(ck.model, gen)
    d2 = filter_normalized_direction(ck.model, gen)
    total = steps * steps + len(radii) * (samples + ascent_steps)
    with tqdm(total=total, desc="loss grid", unit="loss", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        coeffs, z = grid_losses(probe, d1, d2, steps, radius, bar)
        center = float(probe.loss())
        sharp = sharpness(probe, list(radii), samples, ascent_steps, gen, bar)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = LandscapeResult(coeffs, z, center, sharp)
    title = f"{checkpoint.name} ({ck.config.bottleneck}, {len(x)} vectors)"
    result.paths["landscape"] = plot_landscape(coeffs, z, out_dir / "landscape.png", title)
    result.paths["sharpness"] = plot_sharpness(sharp, center, out_dir / "sharpness.png", title)
    result.paths["summary"] = out_dir / "landscape.json"
    result.paths["summary"].write_text(json.dumps(result.summary(), indent=2))
    return result

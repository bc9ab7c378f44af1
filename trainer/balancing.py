"""Combining weighted loss terms into one total: manual weights, or uncertainty weighting.

Uncertainty weighting (Kendall, Gal & Cipolla 2018) learns a log-variance s_i per term and
minimises Σ_i exp(−s_i)·w_i·L_i + s_i: a term whose loss stays large (noisy, or in conflict
with the others) gets a larger s_i and so a smaller share, and the + s_i keeps every s_i
from growing without end. Unbounded, a term that reaches ~0 drives its s_i to −∞ and its
weight to +∞; clamping s_i to [log_var_min, log_var_max] caps every weight factor within
[exp(−max), exp(−min)].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trainer.config import BalancingConfig


class ManualBalancer(nn.Module):
    """total = Σ_i w_i·L_i with the configured (possibly scheduled) weights."""

    method = "manual"

    def forward(self, weighted: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(weighted.values(), torch.zeros(()))

    def factors(self) -> dict[str, float]:
        return {}

    def clamp_(self) -> None:
        """Nothing to bound."""


class UncertaintyBalancer(nn.Module):
    """total = Σ_{i∈balanced} exp(−s_i)·w_i·L_i + s_i  +  Σ_{others} w_i·L_i, s_i ∈ [lo, hi]."""

    method = "uncertainty"

    def __init__(self, names: Sequence[str], lo: float, hi: float) -> None:
        super().__init__()
        self.names = list(names)
        self.lo, self.hi = lo, hi
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)).clamp(lo, hi))

    def forward(self, weighted: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.log_vars.clamp(self.lo, self.hi)  # bounded even between clamp_ calls
        total = torch.zeros(())
        for name, value in weighted.items():
            if name in self.names:
                i = self.names.index(name)
                total = total + torch.exp(-s[i]) * value + s[i]
            else:
                total = total + value
        return total

    def factors(self) -> dict[str, float]:
        """The current weight factor exp(−s_i) of every balanced term."""
        s = self.log_vars.detach().clamp(self.lo, self.hi)
        return {n: float(torch.exp(-s[i])) for i, n in enumerate(self.names)}

    @torch.no_grad()
    def clamp_(self) -> None:
        """Put s back in range after an optimiser step, so Adam's moments see the bound too."""
        self.log_vars.clamp_(self.lo, self.hi)


def build_balancer(cfg: BalancingConfig, active: Sequence[str]) -> ManualBalancer | UncertaintyBalancer:
    """The configured balancer over the active term names; unknown names are an error that lists them."""
    if cfg.method == "manual":
        return ManualBalancer()
    names = list(active) if cfg.terms is None else cfg.terms
    unknown = [n for n in names if n not in active]
    if unknown:
        raise ValueError(f"loss.balancing.terms: unknown or inactive term(s) {unknown}; active: {list(active)}")
    return UncertaintyBalancer(names, cfg.log_var_min, cfg.log_var_max)

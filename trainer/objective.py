"""The training objective of one step: the loss suite, its schedule, the balancer and the critic.

It is the one place that turns a model output into the scalar to minimise, so the loop
only calls it, and the one place that knows which of those pieces carry state to resume.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from trainer.adversarial import Adversary
from trainer.balancing import build_balancer
from trainer.config import LossConfig
from trainer.distributed import Dist
from trainer.loss_factory import LossSuite, build_loss
from trainer.schedules import build_schedule, default_scheduled_term
from vqvae.config import ModelConfig

log = logging.getLogger(__name__)


class Objective:
    """``objective(out, step, quantize)`` → every component, the adversarial parts, and ``total``."""

    def __init__(self, cfg: LossConfig, model_cfg: ModelConfig, model: nn.Module, dist: Dist | None = None,
                 warmup_steps: int = 0) -> None:
        self.cfg = cfg
        self.dist = dist or Dist()
        self.warmup_steps = warmup_steps  # schedules count from the step the bottleneck switches on
        self.suite: LossSuite = build_loss(cfg, model_cfg, quantize=True)
        self.warmup_suite: LossSuite = build_loss(cfg, model_cfg, quantize=False)
        self.term = self._scheduled_term(cfg, model_cfg)
        self.schedule = build_schedule(cfg.schedule)
        self.balancer = build_balancer(cfg.balancing, self.suite.names)
        self.adversary = Adversary(cfg.adversarial, model_cfg.input_dim, self.dist) if cfg.adversarial.weight else None
        self.last_layer = model.decoder[-1].weight  # where the adaptive adversarial weight compares gradients
        self.multiplier: float | None = None  # the scheduled term's last multiplier

    def _scheduled_term(self, cfg: LossConfig, model_cfg: ModelConfig) -> str | None:
        term = cfg.schedule.term or default_scheduled_term(model_cfg.bottleneck)
        if cfg.schedule.kind == "constant" and cfg.schedule.term is None:
            return term
        if term is None:
            raise ValueError(f"loss.schedule.term: bottleneck {model_cfg.bottleneck!r} has no default term to "
                             f"schedule; name one of {self.suite.names}")
        if term not in self.suite:
            raise ValueError(f"loss.schedule.term: {term!r} is not an active term of bottleneck "
                             f"{model_cfg.bottleneck!r}; active: {self.suite.names}")
        return term

    def parameters(self) -> list[nn.Parameter]:
        """Learnable pieces of the loss itself (uncertainty log-variances), for the main optimiser."""
        return list(self.balancer.parameters())

    def kinds(self) -> dict[str, str]:
        return {**self.suite.kinds(), "adversarial": "adversarial", "critic": "adversarial"}

    def __call__(self, out: dict[str, torch.Tensor], step: int, quantize: bool) -> dict[str, torch.Tensor]:
        suite = self.suite if quantize else self.warmup_suite
        parts = suite.components(out)
        weights = {t.name: t.weight for t in suite.terms}
        if self.term in weights:
            self.multiplier = self.schedule(max(0, step - self.warmup_steps))
            weights[self.term] *= self.multiplier
        weighted = {n: weights[n] * parts[n] for n in parts}
        total = self.balancer(weighted)
        if self.adversary is not None and self.adversary.active(step):
            rec = sum(v for n, v in weighted.items() if suite[n].kind == "reconstruction")
            gen, weight = self.adversary.generator_term(out["x_hat"], rec, self.last_layer)
            parts["adversarial"], parts["adversarial_weight"] = gen, weight
            total = total + weight * gen
        parts["total"] = total
        return parts

    def after_step(self, out: dict[str, torch.Tensor], parts: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """Once the model has stepped: feed the schedule, bound the balancer, train the critic."""
        extra: dict[str, float] = {}
        if self.term in parts:
            self.schedule.observe(float(parts[self.term].detach()))
        self.balancer.clamp_()
        if self.adversary is not None and self.adversary.active(step):
            extra["critic"] = self.adversary.critic_step(out["x"], out["x_hat"])
        return extra

    def weights(self) -> dict[str, float]:
        """Weights that move during training: the scheduled term's and the balancer's factors."""
        w = {f"{self.term}_multiplier": self.multiplier} if self.multiplier is not None else {}
        w.update({f"balance_{n}": f for n, f in self.balancer.factors().items()})
        return w

    # --- resumable state ------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"schedule": self.schedule.state_dict(), "multiplier": self.multiplier}
        if self.balancer.method == "uncertainty":
            tensors["balancer.log_vars"] = self.balancer.log_vars.detach()
        if self.adversary is not None:
            adv_t, meta["adversary_optim"] = self.adversary.state()
            tensors.update(adv_t)
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what ``state`` saved; a state from before schedules existed restores nothing."""
        if "schedule" in meta:
            self.schedule.load_state_dict(meta["schedule"])
            self.multiplier = meta.get("multiplier")
        if self.balancer.method == "uncertainty":
            if "balancer.log_vars" not in tensors:
                raise ValueError("the saved state has no uncertainty-balancer weights; resume with the same config")
            self.balancer.log_vars.data.copy_(tensors["balancer.log_vars"])
        if self.adversary is not None:
            if "adversary_optim" not in meta:
                raise ValueError("the saved state has no adversarial critic; resume with the same config")
            self.adversary.load_state(tensors, meta["adversary_optim"])

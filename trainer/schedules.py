"""Weight schedules for the KL / β term: linear, cyclical linear, cosine, adaptive; and free bits.

A schedule gives a multiplier m(step) of one term's configured weight. Annealing the KL
from (near) zero lets the decoder learn to use the latent before the prior pulls it
away (Bowman et al. 2016); cyclical annealing repeats that so a collapsed latent gets
another chance (Fu et al. 2019); the adaptive schedule holds the term near a target
value instead of following a fixed curve. Free bits (``free_bits``, re-exported from
``vqvae.losses``) leave each latent dimension's first λ nats unpenalised.

Every schedule's state is a JSON-able dict (``state_dict`` / ``load_state_dict``), saved in
the resumable training state, so ``--resume`` continues the same curve.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from trainer.config import ScheduleConfig
from vqvae.losses import free_bits, kl_divergence

__all__ = ["Schedule", "build_schedule", "default_scheduled_term", "free_bits", "kl_divergence"]


class Schedule:
    """Constant multiplier ``end``; subclasses override ``multiplier``."""

    kind = "constant"

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg
        self.last_step = -1

    def multiplier(self, step: int) -> float:
        return self.cfg.end

    def __call__(self, step: int) -> float:
        self.last_step = step
        return self.multiplier(step)

    def observe(self, value: float) -> None:
        """The scheduled term's value at the last step (only the adaptive schedule uses it)."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"saved schedule is {state.get('kind')!r}, the config asks for {self.kind!r}")
        self.last_step = int(state.get("last_step", -1))

    def _between(self, fraction: float) -> float:
        c = self.cfg
        return c.start + (c.end - c.start) * min(1.0, max(0.0, fraction))


class Linear(Schedule):
    """m = start + (end − start)·min(1, step / steps)."""

    kind = "linear"

    def multiplier(self, step: int) -> float:
        return self._between(step / self.cfg.steps)


class CyclicalLinear(Schedule):
    """Linear rise over the first ``ramp_fraction`` of every cycle of ``steps``, then flat at ``end``."""

    kind = "cyclical_linear"

    def multiplier(self, step: int) -> float:
        c = self.cfg
        phase = (step % c.steps) / c.steps
        return self._between(phase / c.ramp_fraction)


class Cosine(Schedule):
    """m = start + (end − start)·½(1 − cos(π·min(1, step / steps))): slow, fast, slow."""

    kind = "cosine"

    def multiplier(self, step: int) -> float:
        t = min(1.0, step / self.cfg.steps)
        return self._between(0.5 * (1.0 - math.cos(math.pi * t)))


class Adaptive(Schedule):
    """Holds the term near ``target``: after each full window of observed values, m grows by
    (1 + rate) if their mean is above the target and shrinks by it if below, within bounds.

    A larger weight pushes the term down, so this is a slow proportional-sign controller.
    """

    kind = "adaptive"

    def __init__(self, cfg: ScheduleConfig) -> None:
        super().__init__(cfg)
        self.value = min(max(cfg.start if cfg.start > 0 else 1.0, cfg.min_multiplier), cfg.max_multiplier)
        self.window: deque[float] = deque(maxlen=cfg.window)

    def multiplier(self, step: int) -> float:
        return self.value

    def observe(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.window.append(value)
        if len(self.window) < self.cfg.window:
            return
        c = self.cfg
        mean = sum(self.window) / len(self.window)
        factor = 1.0 + c.rate if mean > c.target else 1.0 / (1.0 + c.rate)
        self.value = min(max(self.value * factor, c.min_multiplier), c.max_multiplier)
        self.window.clear()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "value": self.value, "window": list(self.window)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.value = float(state["value"])
        self.window = deque((float(v) for v in state["window"]), maxlen=self.cfg.window)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.kind: cls for cls in (Schedule, Linear, CyclicalLinear, Cosine, Adaptive)
}


def build_schedule(cfg: ScheduleConfig) -> Schedule:
    return SCHEDULES[cfg.kind](cfg)


def default_scheduled_term(bottleneck: str) -> str | None:
    """The term a schedule moves when the config names none: the bottleneck's divergence."""
    return {"vae": "kl", "wasserstein": "mmd"}.get(bottleneck)

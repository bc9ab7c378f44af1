"""Bottleneck → named, weighted loss terms that read their inputs from the model output by key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.config import LossConfig
from vqvae import losses as L

Output = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: float
    fn: Callable[[Output], torch.Tensor]
    kind: str  # reconstruction | quantizer | regulariser: how monitors group it


class LossSuite:
    """The active terms of one bottleneck; ``__call__`` gives every component and the total."""

    def __init__(self, terms: list[LossTerm]) -> None:
        self.terms = [t for t in terms if t.weight > 0]

    def __call__(self, out: Output) -> dict[str, torch.Tensor]:
        parts = {t.name: t.fn(out) for t in self.terms}
        parts["total"] = sum(t.weight * parts[t.name] for t in self.terms)
        return parts

    def __getitem__(self, name: str) -> LossTerm:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"no active loss term {name!r}; active: {[t.name for t in self.terms]}")

    @property
    def total_weight(self) -> float:
        return sum(t.weight for t in self.terms)

    def describe(self) -> list[tuple[str, float, str]]:
        return [(t.name, t.weight, t.kind) for t in self.terms]


def reconstruction_terms(c: LossConfig) -> list[LossTerm]:
    """Terms on x̂ alone: valid with or without the quantizer (the warm-up uses only these)."""
    return [
        LossTerm("cosine", c.cosine, lambda o: L.cosine_loss(o["x_hat"], o["x"]), "reconstruction"),
        LossTerm("mse", c.mse, lambda o: L.reconstruction_mse(o["x_hat"], o["x"]), "reconstruction"),
        LossTerm("score_aware", c.score_aware,
                 lambda o: L.score_aware_loss(o["x_hat"], o["x"], c.score_aware_eta), "reconstruction"),
        LossTerm("info_nce", c.info_nce,
                 lambda o: L.info_nce_loss(o["x_hat"], o["x"], c.info_nce_temperature), "reconstruction"),
        LossTerm("distill", c.distill,
                 lambda o: L.similarity_distillation_loss(o["x_hat"], o["x"], c.distill_temperature),
                 "reconstruction"),
    ]


def product_vq_terms(c: LossConfig, num_heads: int) -> list[LossTerm]:
    def probs(o: Output) -> torch.Tensor:
        return L.soft_assignments(o["distances"], c.assignment_temperature)

    return reconstruction_terms(c) + [
        LossTerm("codebook", c.codebook,
                 lambda o: L.codebook_commitment_loss(o["z_e"], o["z_q_raw"], c.commitment_beta), "quantizer"),
        LossTerm("orthogonal", c.orthogonal, lambda o: L.orthogonal_loss(o["codebooks"]), "regulariser"),
        LossTerm("head_balance", c.head_balance,
                 lambda o: L.head_balance_loss(o["z_q_raw"], num_heads), "regulariser"),
        LossTerm("entropy", c.entropy, lambda o: L.entropy_loss(probs(o), c.entropy_target), "regulariser"),
        LossTerm("load_balance", c.load_balance, lambda o: L.load_balance_loss(probs(o)), "regulariser"),
    ]


def build_loss(c: LossConfig, num_heads: int, quantize: bool = True) -> LossSuite:
    return LossSuite(product_vq_terms(c, num_heads) if quantize else reconstruction_terms(c))

"""Bottleneck → named, weighted loss terms that read their inputs from the model output by key.

``build_loss(loss_config, model_config)`` gives a :class:`LossSuite`: every active term
(weight > 0) with its name, weight, kind (how monitors group it) and the output keys it
reads. Which terms exist depends on the bottleneck:

- every bottleneck: the reconstruction terms (cosine, mse, score_aware, info_nce, distill);
- product_vq: codebook + β·commitment, orthogonal, head_balance, entropy, load_balance;
- residual_vq: codebook + β·commitment per stage (``stage0`` …), entropy, load_balance;
- vae: kl (free bits); wasserstein: mmd.

The warm-up before the bottleneck switches on (``quantize=False``) uses the
reconstruction terms only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.config import LossConfig, TrainConfig
from vqvae import losses as L
from vqvae.config import BOTTLENECKS, ModelConfig

Output = dict[str, torch.Tensor]
KINDS = ("reconstruction", "quantizer", "regulariser", "kl", "adversarial")


@dataclass(frozen=True)
class LossTerm:
    """``fn(*[out[k] for k in keys])``, weighted by ``weight``; ``kind`` is one of KINDS."""

    name: str
    weight: float
    kind: str
    keys: tuple[str, ...]
    fn: Callable[..., torch.Tensor]

    def __call__(self, out: Output) -> torch.Tensor:
        missing = [k for k in self.keys if k not in out]
        if missing:
            raise KeyError(f"loss term {self.name!r} reads model output {missing[0]!r}, which this model "
                           f"does not give; it gives: {sorted(out)}")
        return self.fn(*(out[k] for k in self.keys))


class LossSuite:
    """The active terms of one bottleneck; ``__call__`` gives every component and the weighted total."""

    def __init__(self, terms: list[LossTerm], bottleneck: str = "product_vq") -> None:
        self.bottleneck = bottleneck
        self.terms = [t for t in terms if t.weight > 0]

    def components(self, out: Output) -> dict[str, torch.Tensor]:
        """Unweighted value of every active term."""
        return {t.name: t(out) for t in self.terms}

    def __call__(self, out: Output) -> dict[str, torch.Tensor]:
        parts = self.components(out)
        parts["total"] = sum((t.weight * parts[t.name] for t in self.terms), torch.zeros(()))
        return parts

    def __getitem__(self, name: str) -> LossTerm:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"no active loss term {name!r} for bottleneck {self.bottleneck!r}; "
                       f"active: {self.names}")

    def __contains__(self, name: str) -> bool:
        return name in self.names

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def kinds(self) -> dict[str, str]:
        return {t.name: t.kind for t in self.terms}


def reconstruction_terms(c: LossConfig) -> list[LossTerm]:
    """Terms on x̂ alone: valid for every bottleneck and during the warm-up."""
    xx = ("x_hat", "x")
    return [
        LossTerm("cosine", c.cosine, "reconstruction", xx, L.cosine_loss),
        LossTerm("mse", c.mse, "reconstruction", xx, L.reconstruction_mse),
        LossTerm("score_aware", c.score_aware, "reconstruction", xx,
                 lambda xh, x: L.score_aware_loss(xh, x, c.score_aware_eta)),
        LossTerm("info_nce", c.info_nce, "reconstruction", xx,
                 lambda xh, x: L.info_nce_loss(xh, x, c.info_nce_temperature)),
        LossTerm("distill", c.distill, "reconstruction", xx,
                 lambda xh, x: L.similarity_distillation_loss(xh, x, c.distill_temperature)),
    ]


def usage_terms(c: LossConfig) -> list[LossTerm]:
    """Terms on the soft code assignments softmax(−d/T): any quantizer with ``distances`` [B, H, K]."""
    def probs(d: torch.Tensor) -> torch.Tensor:
        return L.soft_assignments(d, c.assignment_temperature)

    return [
        LossTerm("entropy", c.entropy, "regulariser", ("distances",),
                 lambda d: L.entropy_loss(probs(d), c.entropy_target)),
        LossTerm("load_balance", c.load_balance, "regulariser", ("distances",),
                 lambda d: L.load_balance_loss(probs(d))),
    ]


def product_vq_terms(c: LossConfig, m: ModelConfig) -> list[LossTerm]:
    return reconstruction_terms(c) + [
        LossTerm("codebook", c.codebook, "quantizer", ("z_e", "z_q_raw"),
                 lambda z_e, z_q: L.codebook_commitment_loss(z_e, z_q, c.commitment_beta)),
        LossTerm("orthogonal", c.orthogonal, "regulariser", ("codebooks",), L.orthogonal_loss),
        LossTerm("head_balance", c.head_balance, "regulariser", ("z_q_raw",),
                 lambda z_q: L.head_balance_loss(z_q, m.num_heads)),
    ] + usage_terms(c)


def residual_vq_terms(c: LossConfig, m: ModelConfig) -> list[LossTerm]:
    """One codebook + β·commitment term per stage, on that stage's residual and chosen code."""
    def stage(s: int) -> LossTerm:
        return LossTerm(f"stage{s}", c.codebook, "quantizer", ("stage_inputs", "stage_codes"),
                        lambda r, q: L.codebook_commitment_loss(r[:, s], q[:, s], c.commitment_beta))

    return reconstruction_terms(c) + [stage(s) for s in range(m.num_heads)] + usage_terms(c)


def vae_terms(c: LossConfig, m: ModelConfig) -> list[LossTerm]:
    return reconstruction_terms(c) + [
        LossTerm("kl", c.kl, "kl", ("mu", "logvar"), lambda mu, lv: L.kl_divergence(mu, lv, c.free_bits)),
    ]


def wasserstein_terms(c: LossConfig, m: ModelConfig) -> list[LossTerm]:
    return reconstruction_terms(c) + [
        LossTerm("mmd", c.mmd, "kl", ("z", "z_prior"), lambda z, p: L.mmd_rbf(z, p, c.mmd_bandwidth)),
    ]


FACTORIES: dict[str, Callable[[LossConfig, ModelConfig], list[LossTerm]]] = {
    "product_vq": product_vq_terms,
    "residual_vq": residual_vq_terms,
    "vae": vae_terms,
    "wasserstein": wasserstein_terms,
}
assert set(FACTORIES) == set(BOTTLENECKS)


def build_loss(c: LossConfig, m: ModelConfig, quantize: bool = True) -> LossSuite:
    """The loss suite of a bottleneck; ``quantize=False``: the warm-up's reconstruction terms."""
    factory = FACTORIES.get(m.bottleneck)
    if factory is None:
        raise ValueError(f"unknown bottleneck {m.bottleneck!r}; valid: {list(FACTORIES)}")
    return LossSuite(factory(c, m) if quantize else reconstruction_terms(c), m.bottleneck)


def inert_terms(cfg: TrainConfig) -> list[str]:
    """Switched-on terms that cannot change anything under the rest of the config, each with why.

    Measured in the ablation: such a term leaves training bit-for-bit identical, so a user who
    turns it on to fix something should hear at once that it will not.
    """
    c, m, q = cfg.loss, cfg.model, cfg.quantizer
    notes = []
    if m.bottleneck != "product_vq":
        return notes
    if c.orthogonal > 0 and q.ema:
        notes.append("loss.orthogonal acts on the codebooks, which quantizer.ema updates without gradients: "
                     "it has no effect (set quantizer.ema: false for it to act)")
    if c.head_balance > 0 and m.normalize_latent:
        notes.append("loss.head_balance is always 0 with model.normalize_latent: every head's code has unit "
                     "length, so the heads' energies are equal by construction")
    return notes

"""Distil the decoder-aware code search into the encoder, so the fast path is the good path.

The decoder-aware search (``vqvae.refine``) finds better codes than the encoder's nearest
ones, at 20–30× the cost of a plain encode. Here the search becomes a teacher: the encoder
learns, by cross-entropy of each head's soft assignment (−distance / τ), to put its latent in
the cell of the code the search picked. Once it does, nearest codes *are* the searched codes
and encoding costs one pass of the encoder. Then the decoder is re-fitted to the codes users
actually get (the new nearest codes), which can move the ceiling itself; each round re-runs
the search with the new decoder. Codebooks stay fixed throughout: they are both what the
decoder reads and what the encoder's assignment (and the search kernel's query side) scores
against, so moving them would undo what the other half learnt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm import tqdm

from trainer.data import jitter
from trainer.validation import evaluate_model, load_matrix
from vqvae import losses as L
from vqvae.checkpoint import load_checkpoint, save_checkpoint
from vqvae.config import EncodeConfig
from vqvae.refine import CodeRefiner

log = logging.getLogger(__name__)


class DistillConfig(BaseModel):
    """One distillation run; the defaults are the shipped recipe."""

    model_config = ConfigDict(extra="forbid")

    teacher: EncodeConfig = Field(EncodeConfig(candidates=8, sweeps=2), description="the search the encoder learns")
    rounds: int = Field(2, ge=1, description="teacher search → encoder → decoder, repeated")
    encoder_epochs: float = Field(4, gt=0, description="passes over the (augmented) training set per round (encoder)")
    decoder_epochs: float = Field(2, ge=0, description="passes per round re-fitting the decoder (0: keep it)")
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(1024, ge=2)
    temperature: float = Field(0.05, gt=0, description="τ of the per-head soft assignment")
    soft_targets: float = Field(0.0, ge=0, description="temperature over the teacher's candidate errors: each "
                                "head learns a distribution over its candidates (0: the searched code alone)")
    augment: int = Field(0, ge=0, description="noisy copies of each row per round, labelled by the teacher")
    noise: float = Field(0.25, ge=0, description="relative size of that noise (cosine to the row ≈ 1/√(1+noise²))")
    info_nce: float = Field(0.1, ge=0, description="decoder re-fit: InfoNCE weight beside cosine + score-aware")
    seed: int = 0


def teacher_codes(model: nn.Module, x: torch.Tensor, teacher: EncodeConfig, chunk: int = 4096,
                  progress: bool = True) -> torch.Tensor:
    """The searched codes [N, H] of every row, in chunks under one progress bar."""
    return teacher_targets(model, x, teacher, 0.0, chunk, progress).codes


class Targets(NamedTuple):
    """Per (row, head): candidate codes [N, H, m], the probability the encoder should give each
    [N, H, m] (hard targets: m = 1 with probability 1), and the searched codes [N, H]."""

    ids: torch.Tensor
    probs: torch.Tensor
    codes: torch.Tensor

    def __getitem__(self, i: Any) -> Targets:  # type: ignore[override]
        return Targets(self.ids[i], self.probs[i], self.codes[i])

    @classmethod
    def hard(cls, codes: torch.Tensor) -> Targets:
        """The searched codes alone, each with probability 1."""
        return cls(codes.unsqueeze(-1), torch.ones(codes.shape + (1,)), codes)


def teacher_targets(model: nn.Module, x: torch.Tensor, teacher: EncodeConfig, soft: float, chunk: int = 4096,
                    progress: bool = True) -> Targets:
    """What the search teaches, in chunks under one progress bar.

    With ``soft`` > 0 each head's target is softmax(−error / soft) over its candidates, the other
    heads held at the searched codes: where two codes decode almost equally well the encoder is
    not forced to learn an arbitrary choice between them, which hard codes would make it memorise.
    """
    refiner = CodeRefiner(model, teacher)
    parts: list[Targets] = []
    with torch.inference_mode(), tqdm(total=len(x), desc="teacher search", unit="vec", disable=not progress) as bar:
        for i in range(0, len(x), chunk):
            part = x[i : i + chunk]
            codes, shortlist = refiner.search(part, model.encode_latent(part))
            if soft > 0:
                err = refiner.candidate_errors(part, codes, shortlist)
                t = Targets(shortlist, torch.softmax(-(err - err.amin(-1, keepdim=True)) / soft, -1), codes)
            else:
                t = Targets.hard(codes)
            parts.append(t)
            bar.update(len(part))
    return Targets(*(torch.cat(f) for f in zip(*parts, strict=True)))


def assignment_loss(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | Targets,
                    temperature: float) -> torch.Tensor:
    """Mean over (row, head) of the cross-entropy of softmax(−d/τ) toward the target codes
    (a code tensor [B, H] or soft :class:`Targets`)."""
    if isinstance(targets, torch.Tensor):
        targets = Targets.hard(targets)
    logp = torch.log_softmax(-model.quantizer.distances(model.encode_latent(x)) / temperature, -1)  # [B, H, K]
    return -(targets.probs * logp.gather(-1, targets.ids)).sum(-1).mean()


def augmented(x: torch.Tensor, copies: int, noise: float, gen: torch.Generator) -> torch.Tensor:
    """x and ``copies`` jittered versions of it (``trainer.data.jitter``), so the encoder learns
    the teacher around the data and not only at it."""
    return torch.cat([x] + [jitter(x, noise, gen) for _ in range(copies)]) if copies else x


def decoder_loss(model: nn.Module, x: torch.Tensor, codes: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    x_hat = model.decode(codes)
    loss = L.cosine_loss(x_hat, x) + L.score_aware_loss(x_hat, x)
    return loss + cfg.info_nce * L.info_nce_loss(x_hat, x) if cfg.info_nce else loss


def _fit(params: list[nn.Parameter], n: int, epochs: float, cfg: DistillConfig, desc: str,
         step_loss: Callable[[torch.Tensor], torch.Tensor], progress: bool) -> float:
    """Adam with cosine decay over ``epochs`` passes of shuffled batches; returns the last loss."""
    opt = torch.optim.Adam(params, lr=cfg.lr)
    steps = max(1, math.ceil(epochs * n / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=cfg.lr * 0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm, at, last = torch.randperm(n, generator=gen), 0, float("nan")
    for _ in tqdm(range(steps), desc=desc, unit="step", disable=not progress):
        if at + cfg.batch_size > n:
            perm, at = torch.randperm(n, generator=gen), 0
        idx = perm[at : at + cfg.batch_size]
        at += cfg.batch_size
        loss = step_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        last = float(loss.detach())
    return last


def agreement(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of (row, head) where the encoder's nearest code is the teacher's."""
    with torch.inference_mode():
        nearest = torch.cat([model.encode(x[i : i + 4096]) for i in range(0, len(x), 4096)])
    return float((nearest == targets).float().mean())


def distill(model: nn.Module, train: np.ndarray, cfg: DistillConfig,
            validate: Callable[[nn.Module], dict[str, Any]] | None = None,
            progress: bool = True) -> list[dict[str, Any]]:
    """Run ``cfg.rounds`` rounds on ``model`` in place; one history row per round.

    ``validate(model)`` (optional) adds held-out metrics to each row, so a caller can keep the
    best round; the model's state after the last round is what is left in ``model``.
    """
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32))
    gen = torch.Generator().manual_seed(cfg.seed)
    for p in model.quantizer.parameters():
        p.requires_grad_(False)
    history: list[dict[str, Any]] = []
    for r in range(cfg.rounds):
        model.eval()  # no dropout: the assignment must be the one inference makes
        xa = augmented(x, cfg.augment, cfg.noise, gen)
        targets = teacher_targets(model, xa, cfg.teacher, cfg.soft_targets, progress=progress)
        row: dict[str, Any] = {"round": r + 1, "agreement_before": agreement(model, x, targets.codes[: len(x)])}
        row["encoder_loss"] = _fit(list(model.encoder.parameters()), len(xa), cfg.encoder_epochs, cfg,
                                   f"round {r + 1}: encoder",
                                   lambda i, a=xa, t=targets: assignment_loss(model, a[i], t[i], cfg.temperature),
                                   progress)
        row["agreement_after"] = agreement(model, x, targets.codes[: len(x)])
        del xa, targets
        if cfg.decoder_epochs:
            with torch.inference_mode():
                codes = torch.cat([model.encode(x[i : i + 4096]) for i in range(0, len(x), 4096)])
            row["decoder_loss"] = _fit(list(model.decoder.parameters()), len(x), cfg.decoder_epochs, cfg,
                                       f"round {r + 1}: decoder",
                                       lambda i, c=codes: decoder_loss(model, x[i], c[i], cfg), progress)
        model.eval()
        if validate is not None:
            row.update(validate(model))
        log.info("distill round %d: %s", r + 1, row)
        history.append(row)
    for p in model.quantizer.parameters():
        p.requires_grad_(True)
    return history


def _judge(model: nn.Module, val: np.ndarray, teacher: EncodeConfig) -> dict[str, Any]:
    """Held-out recall of the fast path (nearest codes) and of the teacher's search."""
    nearest = evaluate_model(model, val)
    searched = evaluate_model(model, val, encoding=teacher)["metrics"]
    return {"val_nearest_recall_10@10": nearest["metrics"]["recall_10@10"],
            "val_searched_recall_10@10": searched["recall_10@10"],
            "_report": nearest}


def run_distillation(checkpoint: Path, train_files: list[Path], val_files: list[Path], out: Path,
                     cfg: DistillConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Distil ``checkpoint`` and save, at ``out``, the round whose nearest codes recall best on
    the validation files; the saved checkpoint encodes with nearest codes by default (the
    teacher's search stays available as an opt-in mode). Round 0 in the history is the input
    checkpoint, so a caller sees whether the fast path now matches the old search."""
    ckpt = load_checkpoint(checkpoint)
    if not ckpt.produces_codes:
        raise ValueError(f"{checkpoint} keeps a float latent: there are no codes to distil")
    model, dim = ckpt.model, ckpt.config.input_dim
    train = load_matrix(train_files, dim)
    val = load_matrix(val_files, dim, limit_each=3000)
    start = _judge(model, val, cfg.teacher)
    best = {"score": -1.0, "state": None, "report": None, "round": 0}

    def validate(m: nn.Module) -> dict[str, Any]:
        row = _judge(m, val, cfg.teacher)
        report = row.pop("_report")
        if row["val_nearest_recall_10@10"] > best["score"]:
            best.update(score=row["val_nearest_recall_10@10"], report=report, round=len(history) + 1,
                        state={k: v.detach().clone() for k, v in m.state_dict().items()})
        return row

    history: list[dict[str, Any]] = [{"round": 0, **{k: v for k, v in start.items() if k != "_report"}}]
    history += distill(model, train, cfg, validate=validate, progress=progress)
    model.load_state_dict(best["state"])
    counts = best["report"]["counts"]
    provenance = {**ckpt.metadata.get("provenance", {}),
                  "distilled_from": ckpt.sha256, "distill": cfg.model_dump(mode="json"),
                  "distill_train_files": [str(p) for p in train_files],
                  "distill_val_files": [str(p) for p in val_files],
                  "distill_history": history, "distill_round": best["round"]}
    save_checkpoint(model, out, provenance=provenance, metrics=best["report"]["metrics"],
                    reference_counts=counts.tolist(), training=ckpt.metadata.get("training"),
                    encoding=EncodeConfig(candidates=0, sweeps=cfg.teacher.sweeps, eta=cfg.teacher.eta).model_dump())
    return history

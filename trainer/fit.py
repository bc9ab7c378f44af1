"""Fit a checkpoint's codes to one collection: fine-tune it on the collection's own rows, offline.

A vector database fits its quantizer on each collection; the generic shipped checkpoint does not,
and loses to faiss LSQ4x8 fitted on the collection's rows. :func:`fit` starts from a checkpoint and
runs the training loop (``trainer.loop.Trainer``, unchanged) on the rows, with the shipped recipe's
losses and codebook upkeep (EMA moves, dead-code re-seeding) but no warm-up and the codebooks kept
as they are (no k-means restart). A held-out share of the rows picks the best state (validation
checks on it, patience, a CPU-time budget); the start itself is one of the candidates, so what
comes back is never worse than the checkpoint on the held-out rows. Weights that are not finite,
and codebooks that collapsed, are refused with the reason.

    model, report = fit("monolith-wiki", rows, FitRecipe(epochs=20))
    save_fitted(model, report, "collection.safetensors")  # MONOLITH_CHECKPOINT=… serves it
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainer.config import LossConfig, MonitorConfig, OptimConfig, QuantizerTrainConfig, TrainConfig
from trainer.evaluate import PRIMARY, monolith_method, quality_report, split_queries
from trainer.loop import Trainer
from trainer.monitor import TrainingDiverged
from trainer.validation import evaluate_model
from vqvae.api import Monolith, check_embeddings, checkpoint_encoding, resolve_checkpoint
from vqvae.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, tensors_sha256
from vqvae.config import EncodeConfig
from vqvae.health import CodebookHealth, HealthThresholds, codebook_health, count_codes

log = logging.getLogger(__name__)

# Fewest rows :func:`fit` accepts (docs/training.md, "Fitting codes to a collection"; measured on
# pydoc subsets, docs/results/2026-12-04-fit-min-rows.jsonl): from 1,000 rows the fit gained
# +0.055 ± 0.005 recall 10@10 over the generic checkpoint on 1,000 unseen queries, from 500 only
# +0.015 ± 0.005, with a held-out check of 20 queries that can tell nothing.
MIN_ROWS = 1_000


class FitError(ValueError):
    """Rows or a recipe :func:`fit` cannot work with; the message says what to change."""


class FitRejected(FitError):
    """The fitted weights failed a check (non-finite, collapsed codebooks); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FitRecipe(BaseModel):
    """How :func:`fit` fine-tunes; the defaults are the measured recipe (docs/training.md)."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(20, gt=0, description="passes over the training rows (at most; see patience, budget)")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW, cosine decay to 5%)")
    lr_warmup: float = Field(0.05, ge=0, lt=1, description="share of the steps over which lr rises to its peak")
    batch_size: int = Field(256, ge=2, description="rows per step (at most the training rows)")
    parts: Literal["all", "decoder_codebooks"] = Field(
        "all", description="what moves: every weight, or the decoder and (by EMA) the codebooks, encoder kept")
    held_out: float = Field(0.2, gt=0, lt=1, description="share of the rows held out to pick the best state")
    max_held_out: int = Field(2000, ge=100, description="held-out rows at most (the rest train)")
    select_on: Literal["recall", "cosine"] = Field(
        "recall", description="held-out score that picks the best state: recall 10@10 or reconstruction cosine")
    select_encoding: Literal["checkpoint", "nearest"] = Field(
        "nearest", description="encoding of the held-out checks: the checkpoint's own, or nearest codes (fast)")
    checks: int = Field(12, ge=1, description="held-out checks spread over the run")
    patience: int = Field(0, ge=0, description="checks without a better held-out score before stopping (0: never)")
    budget_seconds: float | None = Field(None, gt=0, description="CPU seconds of this process for the "
                                         "training, checks included, before it stops (None: no limit)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    min_rows: int = Field(MIN_ROWS, ge=50, description="fewest rows accepted (the measured minimum by default)")
    seed: int = 0


class FitReport(BaseModel):
    """What a fit did and what it bought, on its held-out rows, against the checkpoint it started from."""

    model_config = ConfigDict(extra="forbid")

    base: str
    base_sha256: str
    base_weights_sha256: str
    rows: int
    train_rows: int
    held_out_rows: int
    recipe: FitRecipe
    threads: int
    fit_seconds: float = Field(description="wall seconds of the training, held-out checks included")
    fit_cpu_seconds: float = Field(description="CPU seconds of this process for the same")
    steps: int
    epochs_run: float
    best_step: int = Field(description="step of the state kept; 0: the checkpoint itself was best")
    stopped: Literal["epochs", "patience", "budget"]
    kept_generic: bool
    checks: list[dict[str, float]]
    generic_recall: float = Field(description="held-out recall 10@10 of the checkpoint (fair protocol)")
    adapted_recall: float
    diff_recall: float | None
    diff_se_recall: float | None
    held_out_report: list[dict[str, Any]] = Field(description="trainer.evaluate.quality_report rows")
    health: CodebookHealth | None = Field(None, description="the fitted codes over every row (nearest codes)")
    created: str

    def summary(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("rows", "train_rows", "held_out_rows", "fit_seconds", "steps",
                                               "best_step", "stopped", "kept_generic", "generic_recall",
                                               "adapted_recall", "diff_recall", "diff_se_recall")}


def _base(base: Monolith | Checkpoint | str | Path | None) -> Checkpoint:
    """The checkpoint to start from, as a private copy (fitting never moves the caller's weights)."""
    if isinstance(base, Monolith):
        base = base.checkpoint
    if isinstance(base, Checkpoint):
        return Checkpoint(
            model=copy.deepcopy(base.model), config=base.config, path=base.path, sha256=base.sha256,
            metadata=base.metadata, weights_sha256=base.weights_sha256, earlier_sha256=base.earlier_sha256)
    path = resolve_checkpoint(base) if base is not None else resolve_checkpoint("monolith-wiki")
    return load_checkpoint(path)


def _section(training: Any, key: str, cls: type[BaseModel]) -> Any:
    """One section of the checkpoint's recorded training config, or the defaults where it holds none
    this version can read."""
    raw = training.get(key) if isinstance(training, Mapping) else None
    try:
        return cls.model_validate(raw) if isinstance(raw, Mapping) else cls()
    except ValidationError:
        log.warning("the checkpoint's training.%s does not validate here; using the defaults", key)
        return cls()


def train_config(ckpt: Checkpoint, recipe: FitRecipe, train_rows: int, out_dir: Path) -> TrainConfig:
    """The checkpoint's own training recipe (losses, quantizer upkeep), re-timed for fine-tuning:
    no autoencoder warm-up, codebooks kept (``init: random`` keeps the loaded ones), the recipe's
    lr, batch and epochs, ``checks`` validations spread over the run."""
    training = ckpt.metadata.get("training")
    loss = _section(training, "loss", LossConfig)
    quant = _section(training, "quantizer", QuantizerTrainConfig).model_copy(update={"init": "random"})
    batch = max(2, min(recipe.batch_size, train_rows))
    steps = max(1, math.ceil(recipe.epochs * max(1, train_rows // batch)))
    optim = OptimConfig(lr=recipe.lr, batch_size=batch, epochs=recipe.epochs, warmup_steps=0,
                        lr_warmup_steps=int(recipe.lr_warmup * steps),
                        weight_decay=_section(training, "optim", OptimConfig).weight_decay)
    every = max(1, steps // recipe.checks)
    encoding = checkpoint_encoding(ckpt) if recipe.select_encoding == "checkpoint" else EncodeConfig()
    return TrainConfig(
        model=ckpt.config, data={"train": [Path("<collection rows, in memory>")]}, optim=optim, quantizer=quant,
        loss=loss, monitor=MonitorConfig(plots=False, tensorboard=False, log_every=max(1, min(10, steps))),
        encoding=encoding, out_dir=out_dir, seed=recipe.seed, eval_every=every, checkpoint_every=steps + 1,
        threads=recipe.threads)


class _FitTrainer(Trainer):
    """The loop with the best state kept in memory, patience and a CPU budget; nothing on disk."""

    def __init__(self, cfg: TrainConfig, recipe: FitRecipe, model: torch.nn.Module, train: np.ndarray,
                 val: np.ndarray, start: dict[str, float], progress: bool,
                 on_check: Callable[[float], None] | None = None) -> None:
        if recipe.parts == "decoder_codebooks":  # before the optimiser is built from what requires grad
            for p in model.encoder.parameters():
                p.requires_grad_(False)
        super().__init__(cfg, progress=progress, model=model, data=(train, val))
        self.recipe = recipe
        self.key = "recall_10@10" if recipe.select_on == "recall" else "cosine"
        self.best = start[self.key]
        self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.best_step = 0
        self.since_best = 0
        self.stopped = "epochs"
        self.checks: list[dict[str, float]] = [{"step": 0, **start}]
        self.cpu0 = time.process_time()
        self.validated_at = 0
        self.on_check = on_check

    def save_resumable(self) -> None:  # a fit is minutes, not hours: no resumable state
        pass

    def save_model(self, name: str, report: dict[str, Any] | None) -> Path:
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.best_step = self.step
        return Path(name)

    def validate(self) -> dict[str, Any] | None:
        report = evaluate_model(self.model, self.val, encoding=self.cfg.encoding)
        m = report["metrics"]
        self.validated_at = self.step
        if self.on_check is not None:
            self.on_check(min(1.0, self.step / max(1, self.total_steps)))
        self.checks.append({"step": self.step, "recall_10@10": m["recall_10@10"], "cosine": m["cosine"],
                            "cpu_seconds": time.process_time() - self.cpu0})
        if math.isfinite(m[self.key]) and m[self.key] > self.best:
            self.best, self.since_best = m[self.key], 0
            self.save_model("best", report)
        else:
            self.since_best += 1
        return report

    def should_stop(self) -> bool:
        r = self.recipe
        if r.patience and self.since_best >= r.patience:
            self.stopped = "patience"
        elif r.budget_seconds and time.process_time() - self.cpu0 > r.budget_seconds:
            self.stopped = "budget"
        else:
            return False
        return True

    def _report(self, bar: Any, report: dict[str, Any] | None) -> None:
        if self.progress:
            super()._report(bar, report)

    def _finish(self, values: dict[str, float]) -> dict[str, Any]:
        if self.validated_at != self.step:  # stopped by the budget between checks
            self.validate()
        self.history.flush(self.step)
        self.history.close()
        return {"step": self.step}


def check_fitted(model: torch.nn.Module, codes: np.ndarray | None = None,
                 start_codes: np.ndarray | None = None) -> CodebookHealth | None:
    """Refuse weights that are not finite, and codebooks that collapsed on ``codes`` (the fitted
    model's codes of the collection): :class:`FitRejected` with the reason. Where ``start_codes``
    (the checkpoint's codes of the same rows) collapsed as well, the rows themselves hold few kinds
    of vector, and the fit is not blamed. Returns the health."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise FitRejected(f"the fitted weights are not finite ({name}: {bad} NaN or Inf of {t.numel()}): "
                              "the fit diverged; lower the learning rate (--lr)")
    if codes is None:
        return None
    k = model.config.codebook_size
    # judged at any count: a collection may hold fewer than 20 rows per code, and a real collapse
    # (under 10% of a head's codes used, or under half its entropy) shows at any size
    lenient = HealthThresholds(min_counts_per_code=0)
    health = codebook_health(count_codes(codes, k), lenient)
    start = codebook_health(count_codes(start_codes, k), lenient) if start_codes is not None else None
    if health.status == "collapsed" and (start is None or start.status != "collapsed"):
        raise FitRejected("the fitted codebooks collapsed: " + "; ".join(health.reasons)
                          + ". Fit with fewer epochs, a lower --lr, or --parts decoder_codebooks")
    return health


def split_rows(n: int, recipe: FitRecipe) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) row ids: a seeded random held-out share, at most ``max_held_out`` rows."""
    n_val = min(recipe.max_held_out, max(1, int(round(recipe.held_out * n))))
    perm = np.random.default_rng(recipe.seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fit(
    base: Monolith | Checkpoint | str | Path | None,
    vectors: np.ndarray,
    recipe: FitRecipe | None = None,
    progress: bool = True,
    on_check: Callable[[float], None] | None = None,
) -> tuple[Monolith, FitReport]:
    """Fine-tune ``base`` (a Monolith, a checkpoint, a path or a shipped name; None: monolith-wiki)
    on the collection ``vectors`` [N, 384]; returns the fitted model (encoding as the base's) and
    the report. :class:`FitError` for rows it cannot fit on, :class:`FitRejected` for a failed fit.
    ``on_check``: called with the share of the steps done at each held-out check (a job's progress)."""
    recipe = recipe or FitRecipe()
    ckpt = _base(base)
    if not ckpt.produces_codes:
        raise FitError(f"{ckpt.path} keeps a float latent: there are no codes to fit")
    try:
        x = check_embeddings(vectors, ckpt.config.input_dim)
    except ValueError as exc:
        raise FitError(f"cannot fit on these vectors: {exc}") from None
    if len(x) < recipe.min_rows:
        raise FitError(f"{len(x):,} rows are too few to fit codes to: fitting needs at least {recipe.min_rows:,} "
                       "(below that the held-out check cannot tell a better model from noise); "
                       "keep the generic checkpoint")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    tr, va = split_rows(len(x), recipe)
    train, val = x[tr], x[va]
    generic = Monolith(ckpt, encoding=checkpoint_encoding(ckpt))
    start_model = copy.deepcopy(ckpt.model)
    with tempfile.TemporaryDirectory(prefix="monolith-fit-") as tmp:
        cfg = train_config(ckpt, recipe, len(train), Path(tmp))
        start = evaluate_model(start_model, val, encoding=cfg.encoding)["metrics"]
        t0, c0 = time.perf_counter(), time.process_time()
        trainer = _FitTrainer(cfg, recipe, start_model, train, val,
                              {"recall_10@10": start["recall_10@10"], "cosine": start["cosine"]}, progress,
                              on_check)
        try:
            trainer.run()
        except TrainingDiverged as exc:
            raise FitRejected(f"the fit diverged: {exc}") from None
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model = trainer.model
    for p in model.parameters():
        p.requires_grad_(True)
    model.load_state_dict(trainer.best_state)
    model.eval()
    kept = trainer.best_step == 0
    adapted = _fitted_monolith(ckpt, model)
    nearest = EncodeConfig()
    health = check_fitted(model, None if kept else Monolith(adapted.checkpoint, encoding=nearest).encode(x),
                          None if kept else Monolith(ckpt, encoding=nearest).encode(x))
    counts = count_codes(adapted.encode(val), ckpt.config.codebook_size)  # as traffic is encoded: drift's reference
    nq = min(1000, len(val) // 5)
    rows = quality_report([monolith_method("generic", generic), monolith_method("adapted", adapted)],
                          [split_queries("held-out", val, nq, seed=recipe.seed)], progress=progress)
    gen_row, ad_row = rows[0], rows[1]
    report = FitReport(
        base=str(ckpt.path), base_sha256=ckpt.sha256, base_weights_sha256=ckpt.weights_sha256,
        rows=len(x), train_rows=len(train), held_out_rows=len(val), recipe=recipe,
        threads=torch.get_num_threads(), fit_seconds=wall, fit_cpu_seconds=cpu, steps=trainer.step,
        epochs_run=trainer.step / trainer.steps_per_epoch, best_step=trainer.best_step, stopped=trainer.stopped,
        kept_generic=kept, checks=trainer.checks, generic_recall=float(gen_row[PRIMARY]),
        adapted_recall=float(ad_row[PRIMARY]), diff_recall=ad_row.get(f"diff_{PRIMARY}"),
        diff_se_recall=ad_row.get(f"diff_se_{PRIMARY}"), held_out_report=rows, health=health,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    adapted.checkpoint.metadata.update(_metadata(ckpt, trainer.cfg, report), reference_counts=counts.tolist())
    return adapted, report


def _fitted_monolith(base: Checkpoint, model: torch.nn.Module) -> Monolith:
    state = model.state_dict()
    ckpt = Checkpoint(model=model, config=base.config, path=Path(f"<fitted from {Path(base.path).name}>"),
                      sha256="", metadata={"encoding": base.metadata.get("encoding")},
                      weights_sha256=tensors_sha256(state))
    return Monolith(ckpt, encoding=checkpoint_encoding(base))


def _metadata(base: Checkpoint, cfg: TrainConfig, report: FitReport) -> dict[str, Any]:
    """What the saved file records: where it came from (the base's sha256, rows, recipe, time) and
    how it did on its held-out rows."""
    adapted = report.held_out_report[1]
    provenance = {
        "fitted_from": Path(base.path).name, "fitted_from_sha256": base.sha256,
        "fitted_from_weights_sha256": base.weights_sha256,
        "base_provenance": base.metadata.get("provenance"),
        "train_vectors": report.train_rows,
        "fit": {"rows": report.rows, "train_rows": report.train_rows, "held_out_rows": report.held_out_rows,
                "recipe": report.recipe.model_dump(mode="json"), "fit_seconds": report.fit_seconds,
                "fit_cpu_seconds": report.fit_cpu_seconds, "threads": report.threads, "steps": report.steps,
                "best_step": report.best_step, "stopped": report.stopped, "kept_generic": report.kept_generic,
                "checks": report.checks, "created": report.created},
    }
    metrics = {k: v for k, v in adapted.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics.update(fit_generic_recall_10_10=report.generic_recall, fit_diff_se_recall_10_10=report.diff_se_recall)
    return {"provenance": provenance, "metrics": metrics, "training": cfg.model_dump(mode="json"),
            "encoding": base.metadata.get("encoding")}


def save_fitted(model: Monolith, path: Path | str) -> Path:
    """Write a fitted model (from :func:`fit`) as a checkpoint the usual loader reads, with its
    provenance and reference code counts (the codes of its held-out check); returns the path."""
    meta = model.checkpoint.metadata
    if "provenance" not in meta or "fit" not in (meta.get("provenance") or {}):
        raise FitError("save_fitted writes models that fit() returned")
    return save_checkpoint(model.model, Path(path), provenance=meta["provenance"], metrics=meta.get("metrics"),
                           reference_counts=meta.get("reference_counts"), training=meta.get("training"),
                           encoding=meta.get("encoding"))

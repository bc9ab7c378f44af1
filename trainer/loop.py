"""The training loop: autoencoder warm-up, bottleneck on (k-means codebook init), training.

Every step is a pure function of (config, step, saved state): the batch order comes from
the seed and the epoch, and the RNG, optimizer, codebook statistics, schedule, balancer,
critic and best score are saved, so ``--resume`` continues exactly where a run stopped.
Under ``torchrun`` the same loop runs on every rank (see ``trainer.distributed``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer.codebook_init import CodebookKeeper
from trainer.config import TrainConfig
from trainer.data import jitter, mix_neighbours
from trainer.distributed import init_from_env
from trainer.loss_factory import inert_terms
from trainer.monitor import LossHistory, StabilityMonitor
from trainer.objective import Objective
from trainer.state import flatten_optimizer, load_state, save_state, unflatten_optimizer
from trainer.validation import evaluate_model, load_matrix
from vqvae.checkpoint import save_checkpoint
from vqvae.registry import build_model

__all__ = ["Trainer", "evaluate_model", "load_matrix"]

log = logging.getLogger(__name__)


class Trainer:
    """The loop over ``cfg``. ``model`` starts from given weights (fine-tuning, ``trainer.fit``) instead
    of a fresh model; its config must be ``cfg.model``. ``data`` gives the (train, val) rows in memory
    instead of ``cfg.data``'s files. Subclasses may end a run early through :meth:`should_stop`."""

    def __init__(self, cfg: TrainConfig, progress: bool = True, model: torch.nn.Module | None = None,
                 data: tuple[np.ndarray, np.ndarray | None] | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.dist = init_from_env()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        if data is not None:
            self.x, val = data
            self.val = val if self.dist.is_main else None
        else:
            self.x = load_matrix(cfg.data.train, cfg.model.input_dim)
            main_val = cfg.data.val and self.dist.is_main  # only rank 0 validates
            self.val = load_matrix(cfg.data.val, cfg.model.input_dim, cfg.data.max_val) if main_val else None
        if model is not None and getattr(model, "config", None) != cfg.model:
            raise ValueError("the model to start from is not the architecture cfg.model describes")
        self.model = model if model is not None else build_model(cfg.model)
        bs = min(cfg.optim.batch_size, len(self.x))
        self.batch_size = bs
        self.codebooks = CodebookKeeper(self.model, cfg.quantizer, bs, self.dist) if self.model.produces_codes else None
        self.objective = Objective(cfg.loss, cfg.model, self.model, self.dist, cfg.optim.warmup_steps)
        for note in inert_terms(cfg) if self.dist.is_main else []:
            log.warning(note)
        self.net = self.dist.wrap(self.model, find_unused=bool(self.codebooks) and not cfg.quantizer.ema)
        self.opt = self._optimizer()
        self.steps_per_epoch = max(1, len(self.x) // bs)
        self.vq_steps = max(1, math.ceil(cfg.optim.epochs * self.steps_per_epoch))
        self.total_steps = cfg.optim.warmup_steps + self.vq_steps
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.step = 0
        self.best = -1.0
        self.out = Path(cfg.out_dir)
        self.history = LossHistory(cfg.monitor, self.out, self.objective.kinds(), enabled=self.dist.is_main)
        self.stability = StabilityMonitor(cfg.monitor)
        self._codes: np.ndarray | None = None

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW on the model; the balancer's log-variances in their own group, without decay."""
        o = self.cfg.optim
        groups: list[dict[str, Any]] = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        extra = self.objective.parameters()
        if extra:
            scale = (self.cfg.loss.balancing.lr or o.lr) / o.lr
            groups.append({"params": extra, "weight_decay": 0.0, "lr_scale": scale})
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)

    @property
    def recent_counts(self) -> torch.Tensor | None:
        return self.codebooks.recent_counts if self.codebooks else None

    # --- data and schedule -------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        """This rank's share of the global batch of a step: a fixed permutation per epoch, seeded by
        (seed, epoch); one process takes the whole batch."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.x))
        idx = self.dist.shard(np.sort(perm[pos * self.batch_size : (pos + 1) * self.batch_size]))
        x = torch.from_numpy(np.ascontiguousarray(self.x[idx]))
        d = self.cfg.data
        if not (d.mix > 0 or (d.noise > 0 and d.noise_share > 0)):
            return x
        # augmentation, seeded by (seed, step, rank): resumes alike
        gen = torch.Generator().manual_seed(hash((self.cfg.seed, step, self.dist.rank)) & 0x7FFFFFFF)
        if d.mix > 0:
            x = mix_neighbours(x, torch.rand(len(x), generator=gen) < d.mix, d.mix_min, gen)
        if d.noise > 0 and d.noise_share > 0:
            pick = torch.rand(len(x), generator=gen) < d.noise_share
            x[pick] = jitter(x[pick], d.noise, gen)
        return x

    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        warm = o.lr_warmup_steps
        if step < warm:
            return o.lr * (step + 1) / warm
        frac = (step - warm) / max(1, self.total_steps - warm)
        return o.lr * (o.lr_min_ratio + (1 - o.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    # --- phases ------------------------------------------------------------
    def init_codebooks(self) -> None:
        """k-means codebooks from the warmed-up encoder (rank 0, broadcast); nothing without codes."""
        if self.codebooks:
            self.codebooks.init(self.x, self.cfg.seed)

    def train_step(self, step: int) -> dict[str, float]:
        """One step; returns every loss component, the total, the gradient norm and the moving weights."""
        self.net.train()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(step) * g.get("lr_scale", 1.0)
        quantize = step >= self.cfg.optim.warmup_steps
        out = self.net(self.batch(step), quantize=quantize)
        parts = self.objective(out, step, quantize)
        self.opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        self.dist.average_grads_(self.objective.parameters())
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip))
        loss = float(parts["total"].detach())
        loss = math.nan if self.dist.any(not math.isfinite(loss)) else loss  # every rank decides alike
        values = {k: float(v.detach()) for k, v in parts.items()}
        values.update(grad_norm=norm, **self.objective.weights())
        self._codes = out["codes"].detach().numpy() if quantize and "codes" in out else None
        if self.stability.check(step, loss, norm) == "skip":
            self.opt.zero_grad(set_to_none=True)
            self._codes = None
            return {**values, "skipped": 1.0}
        self.opt.step()
        values.update(self.objective.after_step(out, parts, step))
        if quantize and self.codebooks:
            self.codebooks.update(step, out)
        return values

    # --- persistence -------------------------------------------------------
    def save_resumable(self) -> None:
        """Rank 0 writes out_dir/last.state.safetensors: everything ``restore`` needs."""
        if not self.dist.is_main:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_t, opt_meta = flatten_optimizer(self.opt.state_dict())
        tensors.update(opt_t)
        tensors["rng.torch"] = torch.get_rng_state()
        if self.codebooks:
            tensors.update(self.codebooks.state())
        obj_t, obj_meta = self.objective.state()
        tensors.update(obj_t)
        meta = {"step": self.step, "best": self.best, "optim": opt_meta, "objective": obj_meta,
                "skipped": self.stability.skipped_total, "config": self.cfg.model_dump(mode="json")}
        save_state(self.out / "last.state.safetensors", tensors, meta)

    def restore(self) -> None:
        tensors, meta = load_state(self.out / "last.state.safetensors")
        if meta["config"] != self.cfg.model_dump(mode="json"):
            log.warning("resuming with a config that differs from the saved one")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.objective.load_state(tensors, meta.get("objective", {}))  # first: its errors say what differs
        self.opt.load_state_dict(unflatten_optimizer(
            {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optim"]))
        torch.set_rng_state(tensors["rng.torch"])
        if self.codebooks:
            self.codebooks.load_state(tensors)
        self.stability.skipped_total = int(meta.get("skipped", 0))
        self.step, self.best = int(meta["step"]), float(meta["best"])
        self.history.reload(self.step)
        log.info("resumed at step %d of %d", self.step, self.total_steps)

    def save_model(self, name: str, report: dict[str, Any] | None) -> Path:
        provenance = {
            "train_files": [str(p) for p in self.cfg.data.train],
            "val_files": [str(p) for p in self.cfg.data.val],
            # every file was read (and checked) at start-up; rank 0 alone saves and holds the val files
            "rows": {str(p): int(np.load(p, mmap_mode="r").shape[0])
                     for p in [*self.cfg.data.train, *self.cfg.data.val]},
            "split": "by text: SHA-1 bucket < 90 train, < 95 val, else test (trainer.data.split_of)",
            "train_vectors": int(len(self.x)),
            "step": self.step,
            "seed": self.cfg.seed,
            "world_size": self.dist.world,
        }
        counts = report["counts"] if report else None
        return save_checkpoint(
            self.model, self.out / f"{name}.safetensors",
            provenance=provenance,
            metrics=report["metrics"] if report else None,
            reference_counts=counts.tolist() if counts is not None else None,
            training=self.cfg.model_dump(mode="json"),
            encoding=self.cfg.encoding.model_dump() if self.model.produces_codes else None,
        )

    def validate(self) -> dict[str, Any] | None:
        if self.val is None or self.step <= self.cfg.optim.warmup_steps:
            return None
        report = evaluate_model(self.model, self.val, encoding=self.cfg.encoding)
        self.history.record_validation(self.step, report["metrics"])
        score = report["metrics"]["recall_10@10"]
        if score > self.best:
            self.best = score
            self.save_model("best", report)
        return report

    # --- the run -------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        if resume:
            self.restore()
        warm = self.cfg.optim.warmup_steps
        if self.step == 0 and warm == 0:
            self.init_codebooks()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.progress and main))
        values: dict[str, float] = {}
        while self.step < self.total_steps:
            values = self.train_step(self.step)
            self.history.record(self.step, values, self._codes, self.cfg.model.codebook_size)
            self.step += 1
            if self.step == warm:
                self.init_codebooks()
            bar.update(1)
            bar.set_postfix(loss=f"{values['total']:.4f}", phase="vq" if self.step > warm else "ae")
            if self.step % self.cfg.eval_every == 0 or self.step == self.total_steps:
                self._report(bar, self.validate())
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps:
                self.save_resumable()
            if self.should_stop():
                break
        bar.close()
        return self._finish(values)

    def should_stop(self) -> bool:
        """Whether to end the run before ``total_steps`` (checked after every step); never, here."""
        return False

    def _report(self, bar: tqdm, report: dict[str, Any] | None) -> None:
        if report:
            m = report["metrics"]
            codes = f" codes {m['codes_used']} H {m['norm_entropy_min']:.3f}" if "codes_used" in m else ""
            bar.write(f"step {self.step}: recall10@10 {m['recall_10@10']:.3f} cos {m['cosine']:.3f}{codes}")

    def _finish(self, values: dict[str, float]) -> dict[str, Any]:
        """Final evaluation, checkpoints, history and plots (rank 0), then every rank meets."""
        self.history.flush(self.step)
        result: dict[str, Any] = {"step": self.step, "best_recall_10@10": self.best,
                                  "skipped_steps": self.stability.skipped_total}
        if self.dist.is_main:
            final = evaluate_model(self.model, self.val, encoding=self.cfg.encoding) if self.val is not None else None
            self.save_model("last", final)
            if self.val is None or self.best < 0:
                self.save_model("best", final)
            result["plots"] = [str(p) for p in self.history.plot()]
            result["last"] = final["metrics"] if final else values
        self.history.close()
        result["ranks_in_sync"] = self.dist.params_in_sync(self.model)
        self.dist.barrier()
        return result

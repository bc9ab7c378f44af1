"""The training loop: autoencoder warm-up, k-means codebook init, VQ training with EMA codebooks.

Every step is a pure function of (config, step, saved state): the batch order comes from
the seed and the epoch, and the RNG, optimizer, EMA and best score are saved, so
``--resume`` continues exactly where a run stopped.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer.codebook_init import EMACodebook, kmeans_codebooks, reseed_dead_plain
from trainer.config import TrainConfig
from trainer.data import load_embeddings
from trainer.loss_factory import build_loss
from trainer.state import flatten_optimizer, load_state, save_state, unflatten_optimizer
from vqvae.checkpoint import save_checkpoint
from vqvae.losses import code_histogram
from vqvae.metrics import reconstruction_stats, retrieval_stats, usage_stats
from vqvae.model import MonolithWiki, build_model

log = logging.getLogger(__name__)


def load_matrix(paths: list[Path], dim: int, limit_each: int | None = None) -> np.ndarray:
    """Concatenate .npy files; ``limit_each`` keeps the first rows of each, so every source counts."""
    parts = [load_embeddings(p, dim)[:limit_each] for p in paths]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


@torch.inference_mode()
def evaluate_model(model: MonolithWiki, x: np.ndarray, n_queries: int = 1000) -> dict[str, Any]:
    """Recall and reconstruction on held-out vectors: the first rows query the rest."""
    model.eval()
    t = torch.from_numpy(x)
    codes = torch.cat([model.encode(t[i : i + 4096]) for i in range(0, len(t), 4096)])
    x_hat = torch.cat([model.decode(codes[i : i + 4096]) for i in range(0, len(codes), 4096)]).numpy()
    nq = min(n_queries, len(x) // 5)
    stats: dict[str, Any] = reconstruction_stats(x, x_hat)
    stats.update(retrieval_stats(x[nq:], x_hat[nq:], x[:nq]))
    stats.update(usage_stats(codes.numpy(), model.config.codebook_size))
    counts = code_histogram(codes, model.config.codebook_size).numpy()
    return {"metrics": stats, "counts": counts}


class Trainer:
    def __init__(self, cfg: TrainConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.x = load_matrix(cfg.data.train, cfg.model.input_dim)
        self.val = load_matrix(cfg.data.val, cfg.model.input_dim, cfg.data.max_val) if cfg.data.val else None
        self.model = build_model(cfg.model)
        q = cfg.quantizer
        self.model.quantizer.codebooks.requires_grad_(not q.ema)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        bs = min(cfg.optim.batch_size, len(self.x))
        self.batch_size = bs
        self.steps_per_epoch = max(1, len(self.x) // bs)
        self.vq_steps = max(1, math.ceil(cfg.optim.epochs * self.steps_per_epoch))
        self.total_steps = cfg.optim.warmup_steps + self.vq_steps
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.ema = EMACodebook(self.model.quantizer, q.ema_decay, bs / cfg.model.codebook_size) if q.ema else None
        self.recent_counts = torch.zeros(cfg.model.num_heads, cfg.model.codebook_size)
        self.ae_loss = build_loss(cfg.loss, cfg.model.num_heads, quantize=False)
        self.vq_loss = build_loss(cfg.loss, cfg.model.num_heads, quantize=True)
        self.step = 0
        self.best = -1.0
        self.out = Path(cfg.out_dir)

    # --- data and schedule -------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        """Batch of a global step: a fixed permutation per epoch, seeded by (seed, epoch)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.x))
        idx = np.sort(perm[pos * self.batch_size : (pos + 1) * self.batch_size])
        return torch.from_numpy(np.ascontiguousarray(self.x[idx]))

    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        warm = 100
        if step < warm:
            return o.lr * (step + 1) / warm
        frac = (step - warm) / max(1, self.total_steps - warm)
        return o.lr * (o.lr_min_ratio + (1 - o.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    # --- phases ------------------------------------------------------------
    @torch.no_grad()
    def init_codebooks(self) -> None:
        q = self.cfg.quantizer
        if q.init == "kmeans":
            rng = np.random.default_rng(self.cfg.seed)
            n = min(q.kmeans_samples, len(self.x))
            sample = torch.from_numpy(self.x[np.sort(rng.choice(len(self.x), n, replace=False))])
            self.model.eval()
            z = torch.cat([self.model.encode_latent(sample[i : i + 4096]) for i in range(0, n, 4096)])
            self.model.train()
            centres = kmeans_codebooks(z.numpy(), self.cfg.model.num_heads, self.cfg.model.codebook_size,
                                       q.kmeans_iters, self.cfg.seed)
            self.model.quantizer.codebooks.data.copy_(torch.from_numpy(centres))
            log.info("codebooks initialised by k-means on %d encoder outputs", n)
        self.model.renormalize_codebooks()
        if self.ema:
            self.ema.reset_from_codebooks()

    def train_step(self, step: int) -> dict[str, float]:
        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(step)
        x = self.batch(step)
        quantize = step >= self.cfg.optim.warmup_steps
        out = self.model(x, quantize=quantize)
        parts = (self.vq_loss if quantize else self.ae_loss)(out)
        self.opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        if quantize:
            self.update_codebooks(step, out)
        return {k: float(v.detach()) for k, v in parts.items()}

    def update_codebooks(self, step: int, out: dict[str, torch.Tensor]) -> None:
        q = self.cfg.quantizer
        codes = out["codes"]
        if self.ema:
            self.ema.update(out["z_e"], codes)
        else:
            self.recent_counts += code_histogram(codes, self.cfg.model.codebook_size).float()
        if q.reseed_every and (step + 1) % q.reseed_every == 0:
            if self.ema:
                self.ema.reseed_dead(out["z_e"], q.dead_fraction)
            else:
                fair = q.reseed_every * self.batch_size / self.cfg.model.codebook_size
                reseed_dead_plain(self.model.quantizer, self.recent_counts, out["z_e"], q.dead_fraction * fair)
                self.recent_counts.zero_()
        self.model.renormalize_codebooks()

    # --- persistence -------------------------------------------------------
    def save_resumable(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_t, opt_meta = flatten_optimizer(self.opt.state_dict())
        tensors.update(opt_t)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["recent_counts"] = self.recent_counts
        if self.ema:
            tensors["ema.count"], tensors["ema.sum"] = self.ema.count, self.ema.sum
        meta = {"step": self.step, "best": self.best, "optim": opt_meta, "config": self.cfg.model_dump(mode="json")}
        save_state(self.out / "last.state.safetensors", tensors, meta)

    def restore(self) -> None:
        tensors, meta = load_state(self.out / "last.state.safetensors")
        if meta["config"] != self.cfg.model_dump(mode="json"):
            log.warning("resuming with a config that differs from the saved one")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.opt.load_state_dict(unflatten_optimizer(
            {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optim"]))
        torch.set_rng_state(tensors["rng.torch"])
        self.recent_counts = tensors["recent_counts"].clone()
        if self.ema:
            self.ema.count, self.ema.sum = tensors["ema.count"].clone(), tensors["ema.sum"].clone()
        self.step, self.best = int(meta["step"]), float(meta["best"])
        log.info("resumed at step %d of %d", self.step, self.total_steps)

    def save_model(self, name: str, report: dict[str, Any] | None) -> Path:
        provenance = {
            "train_files": [str(p) for p in self.cfg.data.train],
            "val_files": [str(p) for p in self.cfg.data.val],
            "train_vectors": int(len(self.x)),
            "step": self.step,
            "seed": self.cfg.seed,
        }
        return save_checkpoint(
            self.model, self.out / f"{name}.safetensors",
            provenance=provenance,
            metrics=report["metrics"] if report else None,
            reference_counts=report["counts"].tolist() if report else None,
            training=self.cfg.model_dump(mode="json"),
        )

    def validate(self) -> dict[str, Any] | None:
        if self.val is None or self.step <= self.cfg.optim.warmup_steps:
            return None
        report = evaluate_model(self.model, self.val)
        with (self.out / "history.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": self.step, "val": report["metrics"]}) + "\n")
        score = report["metrics"]["recall_10@10"]
        if score > self.best:
            self.best = score
            self.save_model("best", report)
        return report

    # --- the run -------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.restore()
        warm = self.cfg.optim.warmup_steps
        if self.step == 0 and warm == 0:
            self.init_codebooks()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not self.progress)
        parts: dict[str, float] = {}
        while self.step < self.total_steps:
            parts = self.train_step(self.step)
            if not all(math.isfinite(v) for v in parts.values()):
                raise FloatingPointError(f"non-finite loss at step {self.step}: {parts}")
            self.step += 1
            if self.step == warm:
                self.init_codebooks()
            bar.update(1)
            bar.set_postfix(loss=f"{parts['total']:.4f}", phase="vq" if self.step > warm else "ae")
            if self.step % self.cfg.eval_every == 0 or self.step == self.total_steps:
                report = self.validate()
                if report:
                    m = report["metrics"]
                    bar.write(f"step {self.step}: recall10@10 {m['recall_10@10']:.3f} cos {m['cosine']:.3f} "
                              f"codes {m['codes_used']} H {m['norm_entropy_min']:.3f}")
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps:
                self.save_resumable()
        bar.close()
        final = evaluate_model(self.model, self.val) if self.val is not None else None
        self.save_model("last", final)
        if self.val is None or self.best < 0:
            self.save_model("best", final)
        return {"step": self.step, "best_recall_10@10": self.best, "last": final["metrics"] if final else parts}

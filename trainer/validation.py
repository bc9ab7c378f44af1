"""Held-out quality during training, for every bottleneck (codes or a float latent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.data import load_embeddings
from vqvae.config import EncodeConfig
from vqvae.health import count_codes
from vqvae.metrics import reconstruction_stats, retrieval_stats, usage_stats
from vqvae.refine import CodeRefiner


def load_matrix(paths: list[Path], dim: int, limit_each: int | None = None) -> np.ndarray:
    """Concatenate .npy files; ``limit_each`` keeps the first rows of each, so every source counts."""
    parts = [load_embeddings(p, dim)[:limit_each] for p in paths]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


@torch.inference_mode()
def evaluate_model(
    model: nn.Module, x: np.ndarray, n_queries: int = 1000, encoding: EncodeConfig | None = None
) -> dict[str, Any]:
    """Recall and reconstruction on held-out vectors: the first rows query the rest.

    Code-producing models are judged through their codes (x → codes → x̂), chosen as
    ``encoding`` says (nearest codes by default), and also report code usage and the counts
    [H, K]; float-latent models (vae, wasserstein) through x̂ of the deterministic latent,
    with ``counts`` None.
    """
    model.eval()
    t = torch.from_numpy(x)
    chunks = range(0, len(t), 4096)
    codes = None
    if getattr(model, "produces_codes", True):
        if encoding is not None and encoding.refines:
            refiner = CodeRefiner(model, encoding)
            codes = torch.cat([refiner(t[i : i + 4096], model.encode_latent(t[i : i + 4096])) for i in chunks])
        else:
            codes = torch.cat([model.encode(t[i : i + 4096]) for i in chunks])
        x_hat = torch.cat([model.decode(codes[i : i + 4096]) for i in chunks]).numpy()
    else:
        x_hat = torch.cat([model.reconstruct(t[i : i + 4096]) for i in chunks]).numpy()
    nq = min(n_queries, len(x) // 5)
    stats: dict[str, Any] = reconstruction_stats(x, x_hat)
    stats.update(retrieval_stats(x[nq:], x_hat[nq:], x[:nq]))
    counts = None
    if codes is not None:
        stats.update(usage_stats(codes.numpy(), model.config.codebook_size))
        counts = count_codes(codes, model.config.codebook_size)
    return {"metrics": stats, "counts": counts}

"""Quality metrics, defined once (DESIGN.md): recall against exact search, reconstruction cosine."""

from __future__ import annotations

import faiss
import numpy as np


def exact_topk(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids [Q, k] of the top-k rows of ``db`` by inner product with each query (faiss flat)."""
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(db)))
    return ids


def recall(truth: np.ndarray, retrieved: np.ndarray, n_true: int, n_retrieved: int) -> float:
    """mean |true top-n_true ∩ retrieved top-n_retrieved| / n_true (so 1@10, 10@10, 10@100)."""
    t = truth[:, :n_true]
    r = retrieved[:, :n_retrieved]
    hits = [np.intersect1d(a, b).size for a, b in zip(t, r, strict=True)]
    return float(np.mean(hits)) / n_true


def reconstruction_stats(x: np.ndarray, x_hat: np.ndarray) -> dict[str, float]:
    """Mean cosine(x, x̂), mean ‖x − x̂‖²/‖x‖² and per-element MSE."""
    num = (x * x_hat).sum(1)
    cos = num / (np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1) + 1e-12)
    err = ((x - x_hat) ** 2).sum(1)
    return {
        "cosine": float(cos.mean()),
        "rel_sq_error": float((err / ((x**2).sum(1) + 1e-12)).mean()),
        "mse": float(err.mean() / x.shape[1]),
    }


def retrieval_stats(db: np.ndarray, db_hat: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """Recall of exact inner-product search over reconstructions, against search over the originals."""
    truth = exact_topk(db, queries, 10)
    got = exact_topk(db_hat, queries, 100)
    return {
        "recall_10@10": recall(truth, got, 10, 10),
        "recall_1@10": recall(truth, got, 1, 10),
        "recall_10@100": recall(truth, got, 10, 100),
    }


def usage_stats(codes: np.ndarray, codebook_size: int = 256) -> dict[str, float]:
    """Codes used (all heads) and the mean normalised entropy of each head's usage."""
    used, ent = 0, []
    for h in range(codes.shape[1]):
        counts = np.bincount(codes[:, h].astype(np.int64), minlength=codebook_size)
        used += int((counts > 0).sum())
        p = counts[counts > 0] / counts.sum()
        ent.append(float(-(p * np.log2(p)).sum() / np.log2(codebook_size)))
    return {"codes_used": used, "norm_entropy_min": min(ent), "norm_entropy_mean": float(np.mean(ent))}

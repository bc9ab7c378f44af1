"""Quality metrics, defined once: recall against exact search, reconstruction cosine.

Definitions: docs/architecture.md, "Quality metrics".

Ground truth is the exact top-k by inner product over the float vectors (:func:`exact_topk`).
Every method, Monolith and each baseline, is searched the same way (docs/architecture.md, "Fair
comparison"): its reconstructions are scaled to unit length and ranked by cosine with the
query (:func:`cosine_topk`). Differences between two methods are judged per query, with
:func:`paired_difference` (mean and its paired standard error).
"""

from __future__ import annotations

import faiss
import numpy as np

from vqvae.health import count_codes


def exact_topk(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids [Q, k] of the top-k rows of ``db`` by inner product with each query (faiss flat)."""
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(db)))
    return ids


# name → (true neighbours n_true, retrieved depth n_retrieved)
RECALLS: dict[str, tuple[int, int]] = {"recall_10@10": (10, 10), "recall_1@10": (1, 10), "recall_10@100": (10, 100)}
DEPTH = max(n for _, n in RECALLS.values())  # ranks a search must return for every recall
TRUTH = max(n for n, _ in RECALLS.values())  # true neighbours needed


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_topk(db_hat: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids [Q, k] of the rows of ``db_hat`` ranked by cosine with each query: the reconstructions
    are normalised, then searched by inner product (the query's norm does not change its ranking)."""
    return exact_topk(unit_rows(db_hat), queries, k)


def recall_per_query(truth: np.ndarray, retrieved: np.ndarray, n_true: int, n_retrieved: int) -> np.ndarray:
    """|true top-n_true ∩ retrieved top-n_retrieved| / n_true for each query: float64 [Q].

    Ids < 0 (faiss's padding) never count; a retrieved id listed twice counts once. Where the
    database holds fewer than ``n_true`` rows, the denominator is the true neighbours there are.
    """
    t = np.asarray(truth)[:, :n_true]
    r = np.asarray(retrieved)[:, :n_retrieved]
    if len(t) != len(r):
        raise ValueError(f"{len(t)} queries in truth but {len(r)} retrieved")
    valid = t >= 0
    hits = ((t[:, :, None] == r[:, None, :]).any(axis=2) & valid).sum(axis=1)
    return hits / np.maximum(valid.sum(axis=1), 1)


def recall(truth: np.ndarray, retrieved: np.ndarray, n_true: int, n_retrieved: int) -> float:
    """mean |true top-n_true ∩ retrieved top-n_retrieved| / n_true (so 1@10, 10@10, 10@100)."""
    per_query = recall_per_query(truth, retrieved, n_true, n_retrieved)
    return float(per_query.mean()) if per_query.size else 0.0


def recalls_per_query(truth: np.ndarray, retrieved: np.ndarray) -> dict[str, np.ndarray]:
    """Every recall of :data:`RECALLS`, per query (``truth`` ≥ 10 ranks, ``retrieved`` ≥ 100)."""
    return {name: recall_per_query(truth, retrieved, n, m) for name, (n, m) in RECALLS.items()}


def recalls(truth: np.ndarray, retrieved: np.ndarray) -> dict[str, float]:
    """Recall 10@10, 1@10 and 10@100 of ``retrieved`` ids against ``truth`` ids (means over queries)."""
    return {name: recall(truth, retrieved, n, m) for name, (n, m) in RECALLS.items()}


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of the per-query difference a − b and its paired standard error, sd(a − b) / √Q.

    Both methods answered the same queries, so the difference is judged query by query; call it
    real only beyond two standard errors (docs/architecture.md). The error is NaN below two queries.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"per-query values must be 1-D, got shape {list(d.shape)}")
    if d.size == 0:
        return float("nan"), float("nan")
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return float(d.mean()), se


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """The paired standard error of the mean per-query difference a − b (see :func:`paired_difference`)."""
    return paired_difference(a, b)[1]


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


def retrieval_stats(
    db: np.ndarray, db_hat: np.ndarray, queries: np.ndarray, ranking: str = "cosine"
) -> dict[str, float]:
    """Recall of exact search over the reconstructions against exact search over the originals.

    ``ranking="cosine"`` (the fair comparison): reconstructions normalised, then inner product;
    ``"ip"``: raw inner product with the reconstructions as they are.
    """
    if ranking not in ("cosine", "ip"):
        raise ValueError(f"ranking must be 'cosine' or 'ip', got {ranking!r}")
    truth = exact_topk(db, queries, TRUTH)
    got = (cosine_topk if ranking == "cosine" else exact_topk)(db_hat, queries, DEPTH)
    return recalls(truth, got)


def usage_stats(codes: np.ndarray, codebook_size: int = 256) -> dict[str, float]:
    """Codes used (all heads) and the mean normalised entropy of each head's usage."""
    used, ent = 0, []
    for counts in count_codes(codes, codebook_size):
        used += int((counts > 0).sum())
        p = counts[counts > 0] / counts.sum()
        ent.append(float(-(p * np.log2(p)).sum() / np.log2(codebook_size)))
    return {"codes_used": used, "norm_entropy_min": min(ent), "norm_entropy_mean": float(np.mean(ent))}

"""Quality report: a checkpoint side by side with faiss quantizers at the same bytes per vector.

Every method is judged the same way: encode the database, decode it, and run exact
inner-product search of the float queries over the reconstructions, against exact search
over the originals (for faiss PQ that search is exactly its ADC).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from vqvae.api import Monolith
from vqvae.metrics import reconstruction_stats, retrieval_stats, usage_stats

log = logging.getLogger(__name__)

Codec = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # x → (codes, x_hat)


@dataclass
class EvalSet:
    name: str
    db: np.ndarray
    queries: np.ndarray


def split_queries(name: str, x: np.ndarray, n_queries: int = 1000, seed: int = 0) -> EvalSet:
    """Held-out vectors as one set: a seeded random subset queries the rest (no vector queries
    itself). Random, not the first rows: corpus files are ordered (WordNet nouns come first)."""
    nq = min(n_queries, len(x) // 5)
    is_query = np.zeros(len(x), dtype=bool)
    is_query[np.random.default_rng(seed).choice(len(x), nq, replace=False)] = True
    return EvalSet(name, x[~is_query], x[is_query])


def _faiss_codec(encode: Callable, decode: Callable) -> Codec:
    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = encode(np.ascontiguousarray(x, dtype=np.float32))
        return codes, decode(codes)

    return run


def fit_baseline(name: str, train: np.ndarray, seed: int = 0) -> Codec:
    """Fit a 4-byte faiss quantizer on ``train``: PQ4x8, OPQ4,PQ4, RQ4x8 or LSQ4x8."""
    d = train.shape[1]
    train = np.ascontiguousarray(train, dtype=np.float32)
    if name == "PQ4x8":
        q = faiss.ProductQuantizer(d, 4, 8)
        q.train(train)
        return _faiss_codec(q.compute_codes, q.decode)
    if name == "OPQ4,PQ4":
        index = faiss.index_factory(d, "OPQ4,PQ4")
        index.train(train)
        return _faiss_codec(index.sa_encode, index.sa_decode)
    if name in ("RQ4x8", "LSQ4x8"):
        q = faiss.ResidualQuantizer(d, 4, 8) if name == "RQ4x8" else faiss.LocalSearchQuantizer(d, 4, 8)
        q.train(train)
        return _faiss_codec(q.compute_codes, q.decode)
    raise ValueError(f"unknown baseline {name!r}; valid: PQ4x8, OPQ4,PQ4, RQ4x8, LSQ4x8")


def monolith_codec(model: Monolith) -> Codec:
    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = model.encode(x)
        return codes, model.decode(codes)

    return run


def evaluate_codec(codec: Codec, s: EvalSet) -> dict[str, float]:
    codes, x_hat = codec(s.db)
    row = retrieval_stats(s.db, x_hat, s.queries)
    row.update(reconstruction_stats(s.db, x_hat))
    if codes.dtype == np.uint8 and codes.ndim == 2 and codes.shape[1] == 4:
        row.update(usage_stats(codes))
    return row


def quality_report(
    methods: dict[str, Codec], sets: list[EvalSet]
) -> list[dict[str, object]]:
    """One row per (set, method)."""
    rows = []
    for s in sets:
        for name, codec in methods.items():
            t0 = time.perf_counter()
            row = evaluate_codec(codec, s)
            rows.append({"set": s.name, "method": name, "n_db": len(s.db), "n_queries": len(s.queries),
                         **row, "seconds": time.perf_counter() - t0})
    return rows

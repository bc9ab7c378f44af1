"""Quality report: checkpoints side by side with faiss baselines, judged the same way.

Every method (each checkpoint, its nearest-code variant, each faiss baseline of
``vqvae.baselines``) encodes the set's database in this process, with the same thread
settings, and decodes it; its reconstructions are scaled to unit length and ranked by cosine
with the float queries, against exact inner-product search over the originals (docs/architecture.md,
"Fair comparison"; metrics from ``vqvae.metrics``). Raw inner-product recall 10@10 is kept as
an extra column. Each method's recall 10@10 is compared with the first checkpoint's, query by
query, with the paired standard error of the difference.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm import tqdm

from vqvae.api import Monolith
from vqvae.baselines import Baseline, build_index, fit_baseline
from vqvae.metrics import (
    DEPTH,
    TRUTH,
    cosine_topk,
    exact_topk,
    paired_difference,
    recall_per_query,
    recalls_per_query,
    reconstruction_stats,
    usage_stats,
)

log = logging.getLogger(__name__)

MIN_BASELINE_TRAIN = 50_000  # docs/architecture.md: baselines are fitted on at least this many vectors
PRIMARY = "recall_10@10"  # the recall the differences are reported for


@dataclass
class EvalSet:
    name: str
    db: np.ndarray
    queries: np.ndarray


@dataclass
class Method:
    """One row family of the report: a codec and what it costs."""

    name: str
    encode: Callable[[np.ndarray], np.ndarray]  # float32 [N, d] → codes [N, bytes]
    decode: Callable[[np.ndarray], np.ndarray]  # codes → float32 [N, d]
    bytes_per_vector: int
    kind: str  # "monolith" or "faiss"
    codebook_size: int | None = None  # codes per head where each code is one byte (code usage is reported)
    train_vectors: int | None = None  # vectors it was fitted on, where known


def split_queries(name: str, x: np.ndarray, n_queries: int = 1000, seed: int = 0) -> EvalSet:
    """Held-out vectors as one set: a seeded random subset queries the rest (no vector queries
    itself). Random, not the first rows: corpus files are ordered (WordNet nouns come first)."""
    nq = min(n_queries, len(x) // 5)
    is_query = np.zeros(len(x), dtype=bool)
    is_query[np.random.default_rng(seed).choice(len(x), nq, replace=False)] = True
    return EvalSet(name, x[~is_query], x[is_query])


def monolith_method(name: str, model: Monolith) -> Method:
    rows = model.metadata.get("provenance", {})
    train_vectors = rows.get("train_vectors") if isinstance(rows, dict) else None
    return Method(name, model.encode, model.decode, model.config.bytes_per_vector, "monolith",
                  model.config.codebook_size, int(train_vectors) if train_vectors else None)


def baseline_method(baseline: Baseline) -> Method:
    return Method(baseline.spec, baseline.encode, baseline.decode, baseline.bytes_per_vector, "faiss",
                  baseline.codebook_size, baseline.train_vectors)


def fit_baselines(
    specs: Sequence[str], train: np.ndarray, progress: bool = True, cache: Path | None = None
) -> list[Baseline]:
    """Fit every spec on the same ``train`` vectors, with a progress bar on stderr."""
    for spec in specs:  # every spec checked before minutes go into fitting the first
        build_index(spec, train.shape[1])
    fitted = []
    bar = tqdm(specs, desc=f"fitting baselines on {len(train)} vectors", unit="baseline", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec)
        fitted.append(fit_baseline(spec, train, cache=cache))
    bar.close()
    return fitted


def fairness_notes(models: dict[str, Monolith], train_files: Sequence[Path], n_train: int) -> list[str]:
    """Where this run departs from the fair comparison of docs/architecture.md (said on stderr, not fatal)."""
    notes = []
    if n_train < MIN_BASELINE_TRAIN:
        notes.append(f"baselines fitted on {n_train:,} vectors; the fair comparison wants ≥ {MIN_BASELINE_TRAIN:,}")
    given = {Path(p).resolve() for p in train_files}
    for name, m in models.items():
        prov = m.metadata.get("provenance", {})
        files = prov.get("train_files") if isinstance(prov, dict) else None
        if files and {Path(p).resolve() for p in files} != given:
            notes.append(f"{name} was trained on {', '.join(map(str, files))}, not on the --train files")
    return notes


def _timed(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = fn(x)
    return out, time.perf_counter() - t0


def _rate(n: int, seconds: float) -> float | None:
    return n / seconds if seconds > 0 else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def evaluate_method(method: Method, s: EvalSet, truth: np.ndarray) -> tuple[dict[str, object], np.ndarray]:
    """One row for ``method`` on ``s`` and its per-query recall 10@10 (for paired differences)."""
    method.encode(s.db[: min(256, len(s.db))])  # warm-up, not timed (lazy set-up, first-call costs)
    codes, enc_s = _timed(method.encode, s.db)
    x_hat, dec_s = _timed(method.decode, codes)
    x_hat = np.asarray(x_hat, dtype=np.float32)
    per_query = recalls_per_query(truth, cosine_topk(x_hat, s.queries, DEPTH))
    ip = recall_per_query(truth, exact_topk(x_hat, s.queries, 10), 10, 10)  # raw inner product, for reference
    row: dict[str, object] = {name: float(v.mean()) if v.size else 0.0 for name, v in per_query.items()}
    row["ip_recall_10@10"] = float(ip.mean()) if ip.size else 0.0
    row.update(reconstruction_stats(s.db, x_hat))
    if method.codebook_size and codes.ndim == 2 and codes.dtype == np.uint8:
        row.update(usage_stats(codes, method.codebook_size))
    row.update({"encode_per_s": _rate(len(s.db), enc_s), "encode_seconds": enc_s,
                "decode_per_s": _rate(len(s.db), dec_s)})
    return row, per_query[PRIMARY]


def quality_report(
    methods: Sequence[Method], sets: Sequence[EvalSet], progress: bool = True
) -> list[dict[str, object]]:
    """One row per (set, method); the first ``monolith`` method is the reference of the differences.

    torch and faiss run with the same number of threads (torch's), so encode throughputs compare.
    """
    threads = torch.get_num_threads()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    ref = next((i for i, m in enumerate(methods) if m.kind == "monolith"), 0)
    rows: list[dict[str, object]] = []
    bar = tqdm(total=len(sets) * len(methods), desc="evaluating", unit="method", disable=not progress)
    try:
        for s in sets:
            truth = exact_topk(s.db, s.queries, TRUTH)
            per_query: list[np.ndarray] = []
            set_rows = []
            for m in methods:
                bar.set_postfix_str(f"{s.name}: encoding {len(s.db)} with {m.name}")
                t0 = time.perf_counter()
                row, hits = evaluate_method(m, s, truth)
                per_query.append(hits)
                set_rows.append({"set": s.name, "method": m.name, "kind": m.kind,
                                 "bytes_per_vector": m.bytes_per_vector, "train_vectors": m.train_vectors,
                                 "n_db": len(s.db), "n_queries": len(s.queries), "ranking": "cosine",
                                 **row, "threads": threads, "seconds": time.perf_counter() - t0})
                bar.update(1)
            for row, hits in zip(set_rows, per_query, strict=True):
                diff, se = paired_difference(hits, per_query[ref])
                row.update({"reference": methods[ref].name, f"diff_{PRIMARY}": _finite(diff),
                            f"diff_se_{PRIMARY}": _finite(se)})
            rows.extend(set_rows)
    finally:
        bar.close()
        faiss.omp_set_num_threads(before)
    return rows

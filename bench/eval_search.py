"""Search quality on held-out real embeddings: Monolith collections vs faiss OPQ4,PQ4 (4 bytes).

For each source the queries are the first ``--queries`` rows of ``<source>.val.npy`` and the
database is ``<source>.test.npy`` (float32 [N, 384], unit norm); for the out-of-domain sources
(pydoc and changelog, which no shipped model trains on) their train split joins the database,
so that it is not a few hundred rows. Ground truth is the exact top-k by inner product of the
float query against the float database (DESIGN.md).

Rows (all 4 bytes per stored vector):

* ``monolith ADC``: CodeIndex, candidates=0 (latent ADC order).
* ``monolith rerank C``: top-C ADC candidates re-ranked by cosine(query, decoded codes).
* ``monolith decoded, exhaustive``: cosine against every decoded vector (re-ranking's ceiling).
* ``faiss OPQ4,PQ4``: fitted on the training splits of the training sources (the data the
  model saw), L2 ADC (unit vectors: same ranking as inner product).
* ``faiss OPQ4,PQ4 rerank C``: its top-C re-ranked by cosine with its own reconstructions
  (``sa_decode``), the refinement faiss can do without storing floats.
* ``faiss PQ4``: the same without the rotation.
* ``faiss LSQ4x8, decoded, exhaustive``: faiss's best 4-byte quantizer (additive, local search
  encoding); exact search over its reconstructions (it has no plain ADC without extra bytes).

Metrics: recall 10@10, 1@10 and 10@100 as defined in DESIGN.md.

    python bench/eval_search.py --checkpoint X [--emb-dir data/emb] [--faiss-cache DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import faiss
import numpy as np

from vqvae.api import Monolith
from vqvae.search import CodeDecoder, CodeIndex

log = logging.getLogger("eval_search")
TRAIN_SOURCES = ("wordnet", "debian")
SOURCES = ("wordnet", "debian", "pydoc", "changelog")
DEPTH = 100  # ranks kept per query (for recall 10@100)


def exact_topk(db: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    return index.search(q, k)[1]


def recalls(found: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """DESIGN.md: 10@10 = |top-10 ∩ true top-10|/10; 1@10 = true top-1 in top-10; 10@100."""
    r1010 = np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)])
    r110 = np.mean([t[0] in set(f[:10]) for f, t in zip(found, truth, strict=True)])
    r10100 = np.mean([len(set(f[:100]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)])
    return {"recall_10@10": float(r1010), "recall_1@10": float(r110), "recall_10@100": float(r10100)}


def rerank_by_cosine(q: np.ndarray, cand: np.ndarray, recon: np.ndarray, depth: int) -> np.ndarray:
    """Re-order each query's candidate rows by cosine(query, reconstruction)."""
    recon = recon / np.maximum(np.linalg.norm(recon, axis=1, keepdims=True), 1e-12)
    sims = np.einsum("qcd,qd->qc", recon[np.maximum(cand, 0)], q)
    sims[cand < 0] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :depth]
    return np.take_along_axis(cand, order, axis=1)


def load_split(emb_dir: Path, source: str, split: str) -> np.ndarray | None:
    path = emb_dir / f"{source}.{split}.npy"
    if not path.is_file():
        return None
    x = np.load(path).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_faiss(train: np.ndarray, spec: str, opq_iters: int, cache: Path | None) -> faiss.Index:
    """Fit (or read back) a baseline; it depends on the training data only, not the checkpoint."""
    digest = hashlib.sha256(train[:: max(1, len(train) // 1000)].tobytes()).hexdigest()[:12]
    path = cache / f"{spec.replace(',', '_')}-{len(train)}-{opq_iters}-{digest}.faiss" if cache else None
    if path is not None and path.is_file():
        log.info("%s read from %s", spec, path)
        return faiss.read_index(str(path))
    t0 = time.perf_counter()
    if spec == "LSQ4x8":
        index = faiss.IndexLocalSearchQuantizer(train.shape[1], 4, 8)
    else:
        index = faiss.index_factory(train.shape[1], spec)
    if spec.startswith("OPQ"):
        faiss.downcast_VectorTransform(index.chain.at(0)).niter = opq_iters
    index.train(train)
    log.info("%s fitted on %d vectors in %.1fs", spec, len(train), time.perf_counter() - t0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(path))
    return index


def evaluate_source(
    monolith: Monolith,
    decoder: CodeDecoder,
    baselines: dict[str, faiss.Index],
    db: np.ndarray,
    q: np.ndarray,
    candidates: list[int],
) -> dict[str, dict[str, float]]:
    truth = exact_topk(db, q, 10)
    rows: dict[str, dict[str, float]] = {}
    depth = min(DEPTH, len(db))

    index = CodeIndex.from_model(monolith.model)
    index.add(monolith.encode(db))
    z = monolith.encode_latent(q)
    for c in candidates:
        name = "monolith ADC" if c == 0 else f"monolith rerank {c}"
        found = index.search(z, depth, candidates=c, queries=q, decoder=decoder).rows
        rows[name] = recalls(found, truth)
    decoded = decoder(index.codes)
    rows["monolith decoded, exhaustive"] = recalls(exact_topk(decoded, q, depth), truth)

    for spec, fitted in baselines.items():
        if spec.startswith("LSQ"):
            recon = fitted.sa_decode(fitted.sa_encode(db))
            rows[f"faiss {spec}, decoded, exhaustive"] = recalls(exact_topk(recon, q, depth), truth)
            continue
        base = faiss.clone_index(fitted)
        base.add(db)
        _, adc = base.search(q, max([depth, *candidates]))
        rows[f"faiss {spec}"] = recalls(adc[:, :depth], truth)
        if spec.startswith("OPQ"):
            recon = base.sa_decode(base.sa_encode(db))
            for c in candidates:
                if c > 0:
                    rows[f"faiss {spec} rerank {c}"] = recalls(rerank_by_cosine(q, adc[:, :c], recon, depth), truth)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped checkpoint")
    ap.add_argument("--emb-dir", type=Path, default=Path("data/emb"))
    ap.add_argument("--sources", nargs="+", default=list(SOURCES))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--candidates", type=int, nargs="+", default=[0, 100, 1000])
    ap.add_argument("--train-max", type=int, default=100_000, help="training vectors for the faiss baselines")
    ap.add_argument("--opq-iters", type=int, default=25, help="OPQ rotation iterations (faiss default 50)")
    ap.add_argument("--faiss-cache", type=Path, default=None,
                    help="keep fitted baselines here: they do not depend on the checkpoint, so reruns skip fitting")
    ap.add_argument("--no-lsq", dest="lsq", action="store_false", help="skip LSQ4x8 (a minute or two to fit)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    monolith = Monolith.load(args.checkpoint)
    decoder = CodeDecoder(monolith.model)
    train_parts = [t for s in TRAIN_SOURCES if (t := load_split(args.emb_dir, s, "train")) is not None]
    if not train_parts:
        raise SystemExit(f"no training split in {args.emb_dir} to fit the faiss baselines")
    train = np.concatenate(train_parts)
    rng = np.random.default_rng(0)
    if len(train) > args.train_max:
        train = train[rng.choice(len(train), args.train_max, replace=False)]
    specs = ("OPQ4,PQ4", "PQ4", "LSQ4x8") if args.lsq else ("OPQ4,PQ4", "PQ4")
    baselines = {spec: fit_faiss(train, spec, args.opq_iters, args.faiss_cache) for spec in specs}

    report: dict[str, object] = {"checkpoint": str(monolith.checkpoint.path), "sha256": monolith.sha256,
                                 "faiss_train_vectors": len(train), "sources": {}}
    for source in args.sources:
        db, val = load_split(args.emb_dir, source, "test"), load_split(args.emb_dir, source, "val")
        if db is None or val is None:
            log.warning("%s: %s.test.npy or %s.val.npy missing in %s; skipped", source, source, source, args.emb_dir)
            continue
        extra = load_split(args.emb_dir, source, "train") if source not in TRAIN_SOURCES else None
        db_name = f"{source}.test" if extra is None else f"{source}.train+test"
        if extra is not None:
            db = np.concatenate([extra, db])
        q = val[: args.queries]
        rows = evaluate_source(monolith, decoder, baselines, db, q, args.candidates)
        report["sources"][source] = {"db": len(db), "queries": len(q), "rows": rows}  # type: ignore[index]
        domain = "in-domain" if source in TRAIN_SOURCES else "out-of-domain"
        print(f"\n{source} ({domain}): db = {db_name} ({len(db)}), queries = first {len(q)} of {source}.val")
        print(f"{'method':<32} {'10@10':>7} {'1@10':>7} {'10@100':>7}")
        for name, r in rows.items():
            print(f"{name:<32} {r['recall_10@10']:>7.3f} {r['recall_1@10']:>7.3f} {r['recall_10@100']:>7.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

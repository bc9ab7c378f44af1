"""Search quality on held-out real embeddings: Monolith collections vs faiss OPQ4,PQ4 (4 bytes).

For each source the queries are the first ``--queries`` rows of ``<source>.val.npy`` and the
database is ``<source>.test.npy`` (float32 [N, 384], unit norm); for the out-of-domain sources
(pydoc and changelog, which no shipped model trains on) their train split joins the database,
so that it is not a few hundred rows. Ground truth is the exact top-k by inner product of the
float query against the float database (docs/architecture.md).

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
  encoding); cosine against every reconstruction (it has no plain ADC without extra bytes).

Metrics (``vqvae.metrics``), baselines (``vqvae.baselines``) and the re-ranking step
(``vqvae.search.rerank_by_cosine``) are the library's own, shared with ``monolith-train eval``:
recall 10@10, 1@10 and 10@100 as defined in docs/architecture.md; every "decoded" or "rerank" row ranks
unit-length reconstructions by cosine with the query.

    python bench/eval_search.py --checkpoint X [--emb-dir data/emb] [--faiss-cache DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import faiss
import numpy as np

from vqvae.api import Monolith
from vqvae.baselines import fit_baseline
from vqvae.decoding import CodeDecoder
from vqvae.metrics import DEPTH, TRUTH, cosine_topk, exact_topk, recalls
from vqvae.search import CodeIndex, rerank_by_cosine

log = logging.getLogger("eval_search")
TRAIN_SOURCES = ("wordnet", "debian")
SOURCES = ("wordnet", "debian", "pydoc", "changelog")


def load_split(emb_dir: Path, source: str, split: str) -> np.ndarray | None:
    path = emb_dir / f"{source}.{split}.npy"
    if not path.is_file():
        return None
    x = np.load(path).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def evaluate_source(
    monolith: Monolith,
    decoder: CodeDecoder,
    baselines: dict[str, faiss.Index],
    db: np.ndarray,
    q: np.ndarray,
    candidates: list[int],
) -> dict[str, dict[str, float]]:
    truth = exact_topk(db, q, TRUTH)
    rows: dict[str, dict[str, float]] = {}
    depth = min(DEPTH, len(db))

    index = CodeIndex.from_model(monolith.model)
    index.add(monolith.encode(db))
    z = monolith.search_latent(q)
    for c in candidates:
        name = "monolith ADC" if c == 0 else f"monolith rerank {c}"
        found = index.search(z, depth, candidates=c, queries=q, decoder=decoder).rows
        rows[name] = recalls(truth, found)
    decoded = decoder(index.codes)
    rows["monolith decoded, exhaustive"] = recalls(truth, cosine_topk(decoded, q, depth))

    for spec, fitted in baselines.items():
        if spec.startswith("LSQ"):
            recon = fitted.sa_decode(fitted.sa_encode(db))
            rows[f"faiss {spec}, decoded, exhaustive"] = recalls(truth, cosine_topk(recon, q, depth))
            continue
        base = faiss.clone_index(fitted)
        base.add(db)
        _, adc = base.search(q, max([depth, *candidates]))
        rows[f"faiss {spec}"] = recalls(truth, adc[:, :depth])
        if spec.startswith("OPQ"):
            recon = base.sa_decode(base.sa_encode(db))
            for c in candidates:
                if c > 0:
                    found = rerank_by_cosine(q, adc[:, :c], depth, lambda r, recon=recon: recon[r]).rows
                    rows[f"faiss {spec} rerank {c}"] = recalls(truth, found)
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
    baselines = {spec: fit_baseline(spec, train, opq_iters=args.opq_iters, cache=args.faiss_cache).index
                 for spec in specs}

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

"""Exact rescoring from kept vectors: recall@10 and single-query latency of a real collection.

Each unseen set (text the shipped model never trained on: pydoc, changelog, info, man) becomes a
collection of the service's own kind (``service.collections``, int8 kept vectors, the checkpoint's
default encoding): 1,000 random rows are held out as queries, every other row of the set's splits
is an item. Ground truth is the exact top-10 by inner product of the float query with the float
items (docs/architecture.md, "Quality metrics"). For the flat collection and an IVF one (default
lists and probe), each row is a way to search:

* ``codes only``: ADC order (candidates 0);
* ``decoded 100``: the top 100 ADC candidates re-ranked by cosine with their decoded codes (the
  default before kept vectors);
* ``rescore K``: the top K ADC candidates ranked by exact cosine with their kept vectors.

recall@10 is over all queries (one batched search); p50/p99 are per single-query search on one
thread, through ``Collection.search`` (the SQLite reads of the kept vectors included). For IVF the
``flat overlap`` column is the share of the flat search's top 10 that the IVF search returns too.
A last table times reading K kept vectors from SQLite blobs (what collections do) against a
memory-mapped int8 array of the same rows, to show what the choice of SQLite costs.

    python bench/bench_rescore.py [--emb-dir data/emb] [--sets pydoc changelog info man] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import pin_threads, timed_runs  # noqa: E402

pin_threads(1)

import numpy as np  # noqa: E402

from service.collections.binding import StoreModel  # noqa: E402
from service.collections.store import Store  # noqa: E402
from service.collections.vectors import pack  # noqa: E402
from vqvae.api import Monolith  # noqa: E402
from vqvae.metrics import exact_topk  # noqa: E402

SPLITS = ("train", "val", "test")
WAYS: list[tuple[str, int, bool]] = [("codes only", 0, False), ("decoded 100", 100, False)] + [
    (f"rescore {k}", k, True) for k in (100, 300, 1000, 2000, 3000)]


def load_set(emb_dir: Path, name: str, limit: int | None) -> np.ndarray:
    parts = [np.load(p) for s in SPLITS if (p := emb_dir / f"{name}.{s}.npy").is_file()]
    if not parts:
        raise SystemExit(f"no {name}.*.npy in {emb_dir}: build them with scripts/build_data.sh")
    x = np.concatenate(parts).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x[:limit] if limit else x


def build(store: Store, name: str, codes: np.ndarray, db: np.ndarray, index: dict | None) -> object:
    from service.collections.partitions import IndexSpec

    col, _ = store.create(name, index=IndexSpec(**index) if index else None)
    for start in range(0, len(db), 8192):
        part = slice(start, start + 8192)
        col.upsert([str(i) for i in range(part.start, min(part.stop, len(db)))], codes[part], inputs=db[part])
    if index:
        col.train()
    return col


def recall(found: list[list[str]], truth: np.ndarray) -> float:
    return float(np.mean([len({int(i) for i in f} & set(t[:10].tolist())) / 10 for f, t in zip(found, truth,
                                                                                                  strict=True)]))


def run_way(col, monolith: Monolith, q: np.ndarray, cand: int, rescore: bool, lat_queries: int):
    z = monolith.search_latent(q)
    hits, _ = col.search(z, q, 10, cand, rescore=rescore)
    ids = [[h.id for h in row] for row in hits]
    times = []
    for i in range(lat_queries):
        times += timed_runs(lambda i=i: col.search(z[i : i + 1], q[i : i + 1], 10, cand, rescore=rescore),
                            0.0, min_runs=1, max_runs=1, warmup=0 if i else 3)
    ms = np.asarray(times) * 1000
    return ids, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def blob_vs_mmap(col, db: np.ndarray, tmp: Path, k: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(len(db), min(k, len(db)), replace=False))
    arr = np.frombuffer(b"".join(pack("int8", db)), np.uint8).reshape(len(db), -1)
    path = tmp / "kept.int8"
    arr.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=arr.shape)
    sqlite = np.median(timed_runs(lambda: col.kept_vectors(rows), 0.5, min_runs=10))

    def from_mmap() -> np.ndarray:
        block = np.asarray(mm[rows])
        return block[:, 4:].view(np.int8).astype(np.float32) * block[:, :4].copy().view(np.float32)

    return {"sqlite_ms": float(sqlite * 1000), "mmap_ms": float(np.median(timed_runs(from_mmap, 0.5, 10)) * 1000)}


def bench_set(name: str, x: np.ndarray, monolith: Monolith, args: argparse.Namespace, tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    q, db = x[perm[: args.queries]], x[perm[args.queries :]]
    truth = exact_topk(db, q, 10)
    store = Store(tmp / name, StoreModel.from_monolith(monolith), synchronous="NORMAL")
    out: dict = {"items": len(db), "queries": len(q), "rows": {}}
    flat_ids: dict[str, list[list[str]]] = {}
    codes = monolith.encode(db)
    for kind, spec in (("flat", None), ("ivf", {"kind": "ivf"})):
        col = build(store, f"{name}-{kind}", codes, db, spec)
        if kind == "ivf":
            out["ivf"] = col.info().index
        for label, cand, rescore in WAYS:
            ids, p50, p99 = run_way(col, monolith, q, cand, rescore, args.latency_queries)
            row = {"recall_10@10": recall(ids, truth), "p50_ms": p50, "p99_ms": p99}
            if kind == "flat":
                flat_ids[label] = ids
            else:
                row["flat_overlap"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in
                                                     zip(ids, flat_ids[label], strict=True)]))
            out["rows"][f"{kind} {label}"] = row
        if kind == "flat":
            out["bytes_per_item"] = col.info().bytes_per_item
            out["read_kept"] = {k: blob_vs_mmap(col, db, tmp, k) for k in (300, 3000)}
    store.close()
    return out


def print_set(name: str, r: dict) -> None:
    print(f"\n{name}: {r['items']} items, {r['queries']} queries; bytes per item {r['bytes_per_item']}; "
          f"IVF lists {r['ivf'].get('lists')}, default probe {r['ivf'].get('default_probe')}")
    print(f"{'search':<26} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8} {'flat overlap':>12}")
    for label, row in r["rows"].items():
        overlap = f"{row['flat_overlap']:12.3f}" if "flat_overlap" in row else " " * 12
        print(f"{label:<26} {row['recall_10@10']:9.3f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {overlap}")
    for k, t in r["read_kept"].items():
        print(f"read {k} kept vectors: SQLite blobs {t['sqlite_ms']:.2f} ms, memory-mapped array {t['mmap_ms']:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emb-dir", type=Path, default=Path("data/emb"))
    ap.add_argument("--sets", nargs="+", default=["pydoc", "changelog", "info", "man"])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--limit", type=int, default=None, help="at most this many rows per set")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    monolith = Monolith.load(args.checkpoint)
    report = {"checkpoint": monolith.checkpoint.path.name, "weights_sha256": monolith.weights_sha256, "sets": {}}
    with tempfile.TemporaryDirectory(prefix="monolith-rescore-") as tmp:
        for name in args.sets:
            report["sets"][name] = bench_set(name, load_set(args.emb_dir, name, args.limit), monolith, args, Path(tmp))
            print_set(name, report["sets"][name])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Filtered search speed: a collection of N items with metadata, searched with and without filters.

Builds one collection (random codes under the checkpoint's codebooks, metadata
``{"lang": 5 values, "year": 75 values, "tag": 1000 values, "ts": a distinct number per item}``)
in a temporary data dir, then times ``Collection.search`` (what the server runs, minus HTTP and
query encoding) for single queries, k=10, ADC only and with 100 re-ranked candidates:

* unfiltered, then filters of decreasing selectivity, then ``$or`` / ``$not`` combinations (the
  percentages are those at 1M items); ``matches`` is how many items pass;
* ``build s``: the one-time cost of the first filter on a key (its column is read from SQLite).

Cells are measured round-robin (``--rounds``), so load from other work on a shared machine
falls on every row alike.

    python bench/bench_filter.py [--n 1000000] [--seconds 2] [--rounds 5] [--threads 1]

Bounded: building 1M items takes about a minute, the table about 2 minutes more.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from timing import pin_threads, timed_runs

FILTERS: list[tuple[str, dict | None]] = [
    ("none", None),
    ("tag = t7 (0.1%)", {"tag": "t7"}),
    ("ts in [0, 2000) (0.2%)", {"ts": {"gte": 0, "lt": 2000}}),
    ("tag in 3 values (0.3%)", {"tag": {"in": ["t1", "t2", "t3"]}}),
    ("lang=de & year≥2020 (1.3%)", {"lang": "de", "year": {"gte": 2020}}),
    ("year ≥ 2020 (6.7%)", {"year": {"gte": 2020}}),
    ("lang = en (20%)", {"lang": "en"}),
    ("lang ≠ en (80%)", {"lang": {"ne": "en"}}),
    ("$or tag=t7 | ts<2000 (0.3%)", {"$or": [{"tag": "t7"}, {"ts": {"lt": 2000}}]}),
    ("$or en | de | yr≥2020 (44%)", {"$or": [{"lang": "en"}, {"lang": "de"}, {"year": {"gte": 2020}}]}),
    ("de & $not yr≥2020 (18.7%)", {"lang": "de", "$not": {"year": {"gte": 2020}}}),
    ("$not lang = en (80%)", {"$not": {"lang": "en"}}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", type=int, nargs="+", default=[0, 100])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per cell, over all rounds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="passes over every cell, to spread out other load")
    args = ap.parse_args()
    pin_threads(args.threads)
    import faiss
    import numpy as np
    import torch

    from service.collections.binding import StoreModel
    from service.collections.collection import Collection
    from service.collections.filters import parse_filter
    from service.collections.store import Store
    from vqvae.api import Monolith

    monolith = Monolith.load(args.checkpoint)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp, StoreModel.from_monolith(monolith), synchronous="OFF")  # type: ignore[arg-type]
        col: Collection = store.create("bench")[0]
        t0 = time.perf_counter()
        langs = ["en", "de", "fr", "es", "it"]
        step = 50_000
        for start in range(0, args.n, step):
            idx = range(start, min(args.n, start + step))
            codes = rng.integers(0, monolith.config.codebook_size, (len(idx), monolith.config.num_heads))
            metas = [f'{{"lang":"{langs[i % 5]}","year":{1950 + i % 75},"tag":"t{i % 1000}","ts":{i}}}'
                     for i in idx]
            col.upsert([f"doc{i}" for i in idx], codes.astype(np.uint8), metas)
        print(f"built {len(col)} items in {time.perf_counter() - t0:.0f} s; threads: torch {torch.get_num_threads()}, "
              f"faiss {faiss.omp_get_max_threads()}; k={args.k}; checkpoint {monolith.sha256[:12]}")
        x = rng.standard_normal((64, monolith.config.input_dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        z = monolith.search_latent(x)
        header = f"{'filter':<28} {'matches':>8} {'build s':>8} " + " ".join(
            f"{f'p50 ms c={c}':>12} {f'p99 ms c={c}':>12}" for c in args.candidates)
        print(header)
        print("-" * len(header))
        rows = []
        for label, raw in FILTERS:
            flt = parse_filter(raw)
            t = time.perf_counter()
            col.prepare_filter(flt)  # first use of a key: its column is built
            build = time.perf_counter() - t
            with col._lock:
                matches = len(col.columns.rows(flt, col.conn)) if flt is not None else len(col)
            rows.append((label, flt, matches, build))
        # Round-robin over every cell, so that load from other work spreads over all of them.
        samples: dict[tuple[str, int], list[float]] = {(r[0], c): [] for r in rows for c in args.candidates}
        i = iter(range(10**9))
        for _ in range(args.rounds):
            for label, flt, _, _ in rows:
                for cand in args.candidates:

                    def one(cand: int = cand, flt=flt) -> object:
                        j = next(i) % len(z)
                        return col.search(z[j : j + 1], x[j : j + 1], args.k, cand, flt)

                    samples[(label, cand)] += timed_runs(one, args.seconds / args.rounds)
        for label, _, matches, build in rows:
            cells = []
            for cand in args.candidates:
                lat = np.asarray(samples[(label, cand)]) * 1e3
                cells.append(f"{np.percentile(lat, 50):>12.2f} {np.percentile(lat, 99):>12.2f}")
            print(f"{label:<28} {matches:>8} {build:>8.2f} " + " ".join(cells), flush=True)
        store.close()


if __name__ == "__main__":
    main()

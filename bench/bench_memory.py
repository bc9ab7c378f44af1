"""Resident memory per stored vector: CodeIndex alone, and a served collection with its ids.

1. Builds a collection of ``--n`` items (default 1M; ids like ``item-0000042``, no metadata
   or text: payload is excluded by design) under a temporary data dir, with random codes and,
   unless ``--vectors none``, random unit vectors kept on disk (``--vectors``, default int8).
2. In a fresh process: loads the model, measures RSS, opens the collection the way the
   server does at start-up (rebuilding the index from SQLite), measures again, runs a few
   searches (rescored from the kept vectors where there are some; SQLite's page cache warms up),
   measures again. Bytes per vector =
   RSS growth / n; the model is excluded because it is loaded before the first reading.
3. For scale, the RSS of a plain ``dict[str, int]`` over the same ids, which is what keeping
   ids in Python would cost.

    python bench/bench_memory.py [--n 1000000] [--vectors int8|float16|none] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAME = "membench"


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident bytes from /proc/self/status: ``VmRSS`` (all), ``RssAnon`` (the process's own
    memory) or ``RssFile`` (mapped file pages: the OS page cache, shared and evictable; SQLite's
    memory map of the collection file shows here, not in RssAnon)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def build(data_dir: Path, n: int, checkpoint: str | None, kept: str) -> float:
    from service.collections.binding import StoreModel
    from service.collections.store import Store
    from vqvae.api import Monolith

    t0 = time.perf_counter()
    store = Store(data_dir, StoreModel.from_monolith(Monolith.load(checkpoint)), synchronous="NORMAL")
    col, _ = store.create(NAME, kept=kept)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    step = 100_000
    for start in range(0, n, step):
        stop = min(n, start + step)
        x = rng.standard_normal((stop - start, 384)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = [f"item-{i:07d}" for i in range(start, stop)]
        col.upsert(ids, rng.integers(0, 256, (stop - start, 4)), inputs=x)
    store.close()
    return time.perf_counter() - t0


def measure(data_dir: Path, n: int, checkpoint: str | None) -> dict[str, float]:
    from service.collections.binding import StoreModel
    from service.collections.store import Store
    from vqvae.api import Monolith
    from vqvae.search import CodeIndex

    monolith = Monolith.load(checkpoint)
    model = StoreModel.from_monolith(monolith)
    q = np.random.default_rng(1).standard_normal((8, 384)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    z = monolith.search_latent(q)
    # Warm-up: one-off per-process costs (BLAS/OpenMP buffers and threads, SQLite, faiss tables)
    # must not be charged to the vectors.
    warm = CodeIndex(model.codebooks)
    warm.add(np.zeros((1000, 4), np.uint8))
    warm.search(z, 10)
    del warm
    gc.collect()

    base, base_anon, base_file = rss_bytes(), rss_bytes("RssAnon"), rss_bytes("RssFile")
    t0 = time.perf_counter()
    col = Store(data_dir, model).get(NAME)
    load_s = time.perf_counter() - t0
    assert len(col) == n
    gc.collect()
    opened = rss_bytes() - base
    rescore = col.vector_kind != "none"
    for _ in range(20):
        col.search(z, q, 10, 3000 if rescore else 0, rescore=rescore)
    for i in range(0, n, max(1, n // 200)):
        col.get(f"item-{i:07d}")
    gc.collect()
    warmed = rss_bytes() - base
    warmed_anon, warmed_file = rss_bytes("RssAnon") - base_anon, rss_bytes("RssFile") - base_file

    base = rss_bytes()
    index = CodeIndex(model.codebooks)
    index.add(np.random.default_rng(2).integers(0, 256, (n, 4), dtype=np.uint8))
    index.search(z, 10)
    gc.collect()
    index_only = rss_bytes() - base
    del index
    gc.collect()

    base = rss_bytes()
    ids = {f"item-{i:07d}": i for i in range(n)}
    gc.collect()
    as_dict = rss_bytes() - base
    del ids
    return {"index_only": index_only / n, "collection_open": opened / n, "collection_after_queries": warmed / n,
            "python_dict_ids": as_dict / n, "open_seconds": load_s, "after_queries_anon": warmed_anon / n,
            "after_queries_file": warmed_file / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--vectors", default="int8", choices=["int8", "float16", "none"])
    ap.add_argument("--keep", type=Path, default=None, help="build (or reuse) the collection here")
    ap.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.n, args.checkpoint)))
        return
    data_dir = args.keep or Path(tempfile.mkdtemp(prefix="monolith-mem-"))
    try:
        if not (data_dir / "collections" / f"{NAME}.sqlite3").exists():
            print(f"building {args.n} items in {data_dir} ...", flush=True)
            print(f"  built in {build(data_dir, args.n, args.checkpoint, args.vectors):.1f}s")
        cmd = [sys.executable, __file__, "--measure", str(data_dir), "--n", str(args.n)]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        db = data_dir / "collections" / f"{NAME}.sqlite3"
        per_item = db.stat().st_size / args.n
        print(f"items: {args.n}; kept vectors: {args.vectors}; database on disk: {per_item:.1f} B/item")
        print("resident bytes per stored vector (model excluded, ids included, no payload):")
        print(f"  CodeIndex alone (codes only)            {out['index_only']:6.2f}")
        print(f"  collection opened (index rebuilt)       {out['collection_open']:6.2f}")
        print(f"  collection after searches and gets      {out['collection_after_queries']:6.2f}")
        print(f"    of which the process's own (RssAnon)  {out['after_queries_anon']:6.2f}")
        print(f"    of which mapped file pages (RssFile)  {out['after_queries_file']:6.2f}")
        print(f"  for scale: Python dict[str, int] of ids {out['python_dict_ids']:6.2f}")
        grown = (out["collection_after_queries"] - out["collection_open"]) * args.n / 2**20
        print(f"searches and gets added {grown:.1f} MiB in all: a working set (SQLite's page cache, the allocator's "
              "retained buffers of rescoring) that does not grow with the items; compare two --n")
        print(f"collection opened (index rebuilt from SQLite) in {out['open_seconds']:.2f}s")
    finally:
        if args.keep is None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

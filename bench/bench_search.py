"""Search speed: queries/s and latency of CodeIndex (numpy and faiss kernels) vs faiss IndexPQ.

Stores N random codes (100k and 1M by default) under the checkpoint's real codebooks and
searches them with k=10 and 0, 100 or 1000 re-ranked candidates:

* latency: single queries one after another, p50 / p99 in ms;
* throughput: batches of ``--batch`` queries, queries per second.

The faiss IndexPQ baseline holds the same codes (``add_sa_codes``) and the same centroids,
so it computes the same distances; it has no re-ranking. Query encoding (the encoder
forward pass) is excluded everywhere: latents are computed once up front.

    python bench/bench_search.py [--checkpoint X] [--sizes 100000 1000000] [--seconds 1.5]

Bounded: each cell runs for about ``--seconds`` twice (latency, throughput), ~1-2 min total.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from timing import pin_threads, timed_runs


def make_indexpq(codebooks, codes):  # numpy and faiss load after the thread settings
    """faiss IndexPQ holding ``codes`` under ``codebooks``: the same distances, faiss's scanner."""
    import faiss
    import numpy as np

    h, k, d = codebooks.shape
    index = faiss.IndexPQ(h * d, h, 8)
    padded = np.zeros((h, 256, d), np.float32)
    padded[:, :k] = codebooks
    faiss.copy_array_to_vector(padded.ravel(), index.pq.centroids)
    index.is_trained = True
    index.add_sa_codes(codes)
    return index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", type=int, nargs="+", default=[0, 100, 1000])
    ap.add_argument("--batch", type=int, default=32, help="queries per call in the throughput runs")
    ap.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and faiss (OpenMP) threads; 1 by default: on a shared or loaded machine "
                    "OpenMP barriers make multi-threaded single queries 10x slower")
    args = ap.parse_args()
    pin_threads(args.threads)  # before numpy loads its thread pool
    import faiss
    import numpy as np
    import torch

    from vqvae.api import Monolith
    from vqvae.decoding import CodeDecoder
    from vqvae.search import CodeIndex

    monolith = Monolith.load(args.checkpoint)
    model = monolith.model
    codebooks = model.quantizer.codebooks.detach().numpy()
    h, k_codes, _ = codebooks.shape
    decoder = CodeDecoder(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((max(args.batch, 256), monolith.config.input_dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    z = monolith.search_latent(x)
    print(f"threads: torch {torch.get_num_threads()}, faiss {faiss.omp_get_max_threads()}; k={args.k}; "
          f"checkpoint {monolith.sha256[:12]}")
    header = f"{'N':>9} {'engine':<16} {'cand':>5} {'p50 ms':>8} {'p99 ms':>8} {'1-q q/s':>8} {'batch q/s':>10}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        codes = rng.integers(0, k_codes, (n, h)).astype(np.uint8)
        engines: dict[str, Callable[[np.ndarray, np.ndarray, int], object]] = {}
        for backend in ("numpy", "faiss"):
            index = CodeIndex.from_model(model, backend=backend)
            index.add(codes)
            engines[f"CodeIndex/{backend}"] = (
                lambda zq, xq, c, index=index: index.search(zq, args.k, candidates=c, queries=xq, decoder=decoder)
            )
        pq = make_indexpq(codebooks, codes)
        engines["faiss IndexPQ"] = lambda zq, xq, c, pq=pq: pq.search(zq, args.k)
        for name, run in engines.items():
            for cand in args.candidates if name.startswith("CodeIndex") else [0]:
                i = iter(range(10**9))

                def one(run=run, cand=cand, i=i) -> object:
                    j = next(i) % len(z)
                    return run(z[j : j + 1], x[j : j + 1], cand)

                lat = np.asarray(timed_runs(one, args.seconds))
                bat = np.asarray(timed_runs(lambda run=run, cand=cand: run(z[: args.batch], x[: args.batch], cand),
                                            args.seconds, min_runs=3))
                print(f"{n:>9} {name:<16} {cand:>5} {np.percentile(lat, 50) * 1e3:>8.2f} "
                      f"{np.percentile(lat, 99) * 1e3:>8.2f} {1 / lat.mean():>8.0f} "
                      f"{args.batch / bat.mean():>10.0f}", flush=True)


if __name__ == "__main__":
    main()

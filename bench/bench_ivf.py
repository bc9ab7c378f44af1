"""Partitioned (IVF) search at scale: flat vs IVF vs faiss IndexIVFPQ at 1M and 10M codes.

    python bench/bench_ivf.py [--sizes 1000000 10000000] [--threads 1 0] [--queries 200]

Codes are drawn from the real code distribution of the shipped checkpoint (not uniform bytes):

1. *base*: ``--base`` vectors made from tests/data/real_sample.npy (1,024 real MiniLM
   embeddings): each is a real vector moved part of the way towards another and perturbed
   (cos ≈ 0.85 to its source), run through the real encoder; its nearest codes are the base codes;
2. *noise*: each stored vector is a base latent plus Gaussian noise (τ = 0.04 per dimension,
   every head renormalised), quantised exactly to its nearest codes: what encoding noisy copies
   of the base vectors gives, without running the encoder's MLP 10M times (the one-time cost is
   the nearest-code search, ~1-5 min for 10M on 2 cores; the codes are cached).

The per-head code usage it produces is printed next to the checkpoint's reference counts (both
≈ 7.8 bits of the 8 possible). Queries are held-out perturbations of the real vectors, through the
encoder. Everything is seeded and cached under ``--cache`` (40 MB at 10M).

Engines, all over the same stored codes and the checkpoint's codebooks:

* ``flat``: CodeIndex (faiss PQ scanner over every code);
* ``ivf``: vqvae.ivf.IVFCodeIndex with k-means lists (centroids are codes, coarse step by ADC);
* ``imi``: the same with inverted multi-index lists on the first two heads' codes (no training);
* ``IndexIVFPQ``: stock faiss IndexIVFPQ holding the same codes in the *same lists* (its float
  IndexFlatL2 coarse quantizer holds the centroids' decoded latents), by_residual off.

Per cell: batch q/s (``--batch`` queries a call), single-query p50/p99, recall@10 against the
flat search's own top-10 with the same re-ranking (tie-aware: a hit scoring at least flat's 10th
counts, since identical codes tie), and resident memory per stored vector (RSS growth while the
index was built, and the bytes the structure accounts for: codes, 8-byte ids, lists).
``--threads 0`` means all cores. Bounded: ~1 s per measurement; the 10M build dominates.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

from timing import timed_runs

ROOT = Path(__file__).resolve().parents[1]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    """Return freed heap pages to the OS, so that RSS counts what the index holds."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def make_data(monolith, n_max: int, base: int, queries: int, cache: Path, tau: float = 0.04):
    """(codes [n_max, H] uint8, query embeddings, query latents); cached."""
    import numpy as np

    cache.mkdir(parents=True, exist_ok=True)
    tag = f"{monolith.sha256[:12]}-b{base}-t{tau}-exact"
    f_codes, f_q = cache / f"codes-{tag}-{n_max}.npy", cache / f"queries-{tag}-{queries}.npy"
    x = np.load(ROOT / "tests/data/real_sample.npy")
    cb = monolith.model.quantizer.codebooks.detach().numpy()
    h, k, d = cb.shape

    def inputs(rng, n):
        i, j = rng.integers(0, len(x), n), rng.integers(0, len(x), n)
        y = x[i] + rng.uniform(0, 0.5, (n, 1)).astype(np.float32) * (x[j] - x[i])
        y += 0.03 * rng.standard_normal((n, x.shape[1])).astype(np.float32)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    def quantize(z):
        z = z.reshape(len(z), h, d)
        return np.stack([np.argmax(z[:, j] @ cb[j].T, 1) for j in range(h)], 1).astype(np.uint8)

    if f_q.exists():
        xq = np.load(f_q)
    else:
        xq = inputs(np.random.default_rng(99), queries)
        np.save(f_q, xq)
    zq = monolith.search_latent(xq)
    if f_codes.exists():
        return np.load(f_codes, mmap_mode="r"), xq, zq
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    zb = monolith.search_latent(inputs(rng, base)).reshape(base, h, d)
    codes = np.empty((n_max, h), np.uint8)
    step = 1 << 16
    for s in range(0, n_max, step):  # each stored vector: a base latent plus noise, quantised exactly
        b = min(step, n_max - s)
        z = zb[rng.integers(0, base, b)] + tau * rng.standard_normal((b, h, d), dtype=np.float32)
        z /= np.linalg.norm(z, axis=-1, keepdims=True)
        codes[s : s + b] = quantize(z)
    np.save(f_codes, codes)
    print(f"# generated {n_max:,} codes in {time.perf_counter() - t0:.0f}s (cached in {cache})", flush=True)
    return np.load(f_codes, mmap_mode="r"), xq, zq


def entropy_bits(counts):
    import numpy as np

    p = np.asarray(counts, float)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


def peer_index(ivf, codebooks):
    """Stock faiss IndexIVFPQ over the same lists: float coarse quantizer, same entries."""
    import faiss
    import numpy as np

    from vqvae.ivf import ROW_SHIFT

    h, k, d = ivf.codebooks.shape
    cent = ivf.centroids
    zc = np.concatenate([ivf.codebooks[j][cent[:, j]] for j in range(h)], 1).astype(np.float32)
    quantizer = faiss.IndexFlatL2(h * d)
    quantizer.add(zc)
    peer = faiss.IndexIVFPQ(quantizer, h * d, len(cent), h, 8)
    faiss.copy_array_to_vector(ivf.codebooks.ravel(), peer.pq.centroids)
    peer.by_residual = False
    peer.is_trained = True
    for lst in range(ivf.lists):
        ids = ivf._ids(lst)
        if len(ids):
            rows = np.ascontiguousarray(ids >> ROW_SHIFT)
            codes = np.ascontiguousarray(ivf._codes(lst))
            peer.invlists.add_entries(lst, len(rows), faiss.swig_ptr(rows), faiss.swig_ptr(codes))
    peer.ntotal = len(ivf)
    return peer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0: all cores")
    ap.add_argument("--lists", type=int, nargs="+", default=None, help="k-means lists per size (default ≈ 2√N/2)")
    ap.add_argument("--queries", type=int, default=200, help="queries for recall (and timing)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--candidates", type=int, default=100, help="re-ranked candidates of the 'rerank' rows")
    ap.add_argument("--base", type=int, default=131_072)
    ap.add_argument("--seconds", type=float, default=1.0, help="timing per cell, split over --rounds turns")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("MONOLITH_BENCH_CACHE", "/tmp/monolith-bench")))
    ap.add_argument("--no-imi", action="store_true", help="skip the multi-index lists")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(t or cores for t in args.threads)))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: the box is shared
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS: its spinning threads only slow a busy box
    import faiss
    import numpy as np
    import torch

    from vqvae.api import Monolith
    from vqvae.decoding import CodeDecoder
    from vqvae.ivf import IVFCodeIndex
    from vqvae.search import CodeIndex

    monolith = Monolith.load()
    model = monolith.model
    cb = model.quantizer.codebooks.detach().numpy()
    unit = bool(monolith.config.latent_unit_heads)
    dec = CodeDecoder(model)
    n_max = max(args.sizes)
    codes_all, xq, zq = make_data(monolith, n_max, args.base, args.queries, args.cache)
    ref = monolith.metadata.get("reference_counts")
    use = [entropy_bits(np.bincount(codes_all[: min(n_max, 2_000_000), j], minlength=256)) for j in range(4)]
    print(f"# machine: {cores} cores; load average {os.getloadavg()[0]:.1f}; faiss {faiss.__version__}")
    print("# code usage bits/head: generated " + " ".join(f"{u:.2f}" for u in use)
          + ("; reference " + " ".join(f"{entropy_bits(r):.2f}" for r in ref) if ref else ""))
    head = (f"{'N':>10} {'thr':>3} {'engine':<11} {'lists':>6} {'probe':>5} {'cand':>4} {'scan%':>6} "
            f"{'q/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'recall':>6} {'B/vec':>6} {'RSS B/vec':>9} {'build s':>7}")
    print(head)
    print("-" * len(head), flush=True)
    for si, n in enumerate(args.sizes):
        codes = np.ascontiguousarray(codes_all[:n])
        lists = args.lists[si] if args.lists else (512 if n <= 2_000_000 else 1024)
        gc.collect()
        trim()
        r0 = rss()
        flat = CodeIndex(cb, latent_unit_heads=unit)
        flat.add(codes)
        flat_rss = (rss() - r0) / n
        t0 = time.perf_counter()
        r0 = rss()
        ivf = IVFCodeIndex(cb, latent_unit_heads=unit)
        ivf.add(codes)  # untrained: one list, then trained: every list allocated once at its size
        ivf.train(lists=lists)
        gc.collect()
        trim()
        ivf_build, ivf_rss = time.perf_counter() - t0, (rss() - r0) / n
        engines: list[tuple[str, object, float, float, float]] = [("flat", flat, flat.nbytes / n, flat_rss, 0.0)]
        engines.append(("ivf", ivf, ivf.nbytes / n, ivf_rss, ivf_build))
        t0 = time.perf_counter()
        r0 = rss()
        peer = peer_index(ivf, cb)
        gc.collect()
        trim()
        engines.append(("IndexIVFPQ", peer, (n * 12 + lists * (48 + 512 * 4)) / n, (rss() - r0) / n,
                        time.perf_counter() - t0))
        if not args.no_imi:
            t0 = time.perf_counter()
            r0 = rss()
            imi = IVFCodeIndex(cb, latent_unit_heads=unit, coarse="imi")
            imi.add(codes)
            imi.compact()
            gc.collect()
            trim()
            engines.append(("imi", imi, imi.nbytes / n, (rss() - r0) / n, time.perf_counter() - t0))
        sizes = ivf.list_sizes()
        default = ivf.default_probe()
        probes = sorted({max(1, default // 2), default, min(ivf.lists, 2 * default)})
        for threads in args.threads:
            t = threads or cores
            faiss.omp_set_num_threads(t)
            torch.set_num_threads(t)
            truth = {c: flat.search(zq, 10, candidates=c, queries=xq, decoder=dec).scores for c in (0, args.candidates)}
            cells = []
            for name, index, bvec, rvec, build in engines:
                for cand in (0, args.candidates) if name != "IndexIVFPQ" else (0,):
                    if name == "flat":
                        plan = [(None, 100.0)]
                    elif name == "imi":
                        p = index.default_probe()
                        _, lq = index._probe_lists(zq, p)
                        plan = [(p, 100.0 * index.list_sizes()[lq].sum(1).mean() / n)]
                    else:
                        _, lq = ivf._probe_lists(zq, max(probes))
                        d_all, _ = ivf._probe_lists(zq, ivf.lists)
                        order = np.argsort(d_all, axis=1)
                        plan = [(p, 100.0 * sizes[order[:, :p]].sum(1).mean() / n) for p in probes]
                    for probe, scan in plan:
                        if name == "IndexIVFPQ":
                            params = faiss.SearchParametersIVF()
                            params.nprobe = probe

                            def run(z, x, c, index=index, params=params):
                                return index.search(z, 10, params=params)

                            def scores(z, x, c, run=run):
                                d, lab = run(z, x, c)
                                return np.where(lab >= 0, 1.0 - d / 8.0 if unit else -d, -np.inf)
                        else:
                            extra = {} if probe is None else {"probe": probe}

                            def run(z, x, c, index=index, extra=extra):
                                return index.search(z, 10, candidates=c, queries=x, decoder=dec, **extra)

                            def scores(z, x, c, run=run):
                                return run(z, x, c).scores
                        recall = float((scores(zq, xq, cand) >= truth[cand][:, -1:] - 1e-5).mean())
                        cells.append({"name": name, "lists": getattr(index, "lists", getattr(index, "nlist", "-")),
                                      "probe": probe, "cand": cand, "scan": scan, "recall": recall, "bvec": bvec,
                                      "rvec": rvec, "build": build, "run": run, "lat": [], "bat": []})
            # time every cell in turns (rounds), so that a busy moment of a shared machine is spread
            # over all of them instead of falling on one
            for r in range(args.rounds):
                for cell in cells:
                    run, cand = cell["run"], cell["cand"]
                    j0 = r * 7
                    it = iter(range(j0, 10**9))

                    def one(run=run, cand=cand, it=it):
                        j = next(it) % len(zq)
                        return run(zq[j : j + 1], xq[j : j + 1], cand)

                    cell["lat"] += timed_runs(one, args.seconds / args.rounds, min_runs=3)
                    cell["bat"] += timed_runs(lambda run=run, cand=cand: run(zq[: args.batch], xq[: args.batch], cand),
                                         args.seconds / args.rounds, min_runs=1)
            for c in cells:
                lat, bat = np.asarray(c["lat"]), np.asarray(c["bat"])
                print(f"{n:>10} {t:>3} {c['name']:<11} {c['lists']:>6} "
                      f"{c['probe'] if c['probe'] is not None else '-':>5} {c['cand']:>4} {c['scan']:>6.2f} "
                      f"{args.batch / np.median(bat):>8.0f} {np.percentile(lat, 50) * 1e3:>7.2f} "
                      f"{np.percentile(lat, 99) * 1e3:>7.2f} {c['recall']:>6.3f} {c['bvec']:>6.2f} {c['rvec']:>9.2f} "
                      f"{c['build']:>7.1f}", flush=True)
        del engines, flat, ivf, peer, codes
        gc.collect()


if __name__ == "__main__":
    main()

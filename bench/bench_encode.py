"""Bulk encoding speed (``monolith-train encode``): vectors/s of one process on one thread, one
process on every core, one worker process per core, and a local Ray cluster.

    python bench/bench_encode.py [--rows 4096] [--candidates N] [--no-ray]

Input: ``--rows`` perturbed copies of tests/data/real_sample.npy in a temporary ``.npy``. Each
configuration runs the whole job (``trainer.bulk``: start-up, model loads in the workers,
chunked writes, the progress record; "steady" is the rate between the first and the last
finished chunk) and is checked against ``Monolith.encode`` of the same rows, so a fast wrong
answer cannot win. ``--candidates 0`` measures nearest-code encoding (the fast path) instead of
the checkpoint's decoder-aware default.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def steady(marks: list[tuple[float, int]]) -> float:
    """Rows/s between the first and the last finished chunk: the rate once the workers run."""
    if len(marks) < 2:
        return float("nan")
    return sum(r for _, r in marks[1:]) / max(marks[-1][0] - marks[0][0], 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--candidates", type=int, default=None, help="override the checkpoint's encoding")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    import numpy as np
    import torch

    from trainer.bulk import plan, prepare, run_local, run_ray
    from vqvae.api import Monolith

    monolith = Monolith.load(candidates=args.candidates)
    x = np.load(ROOT / "tests/data/real_sample.npy")
    rng = np.random.default_rng(0)
    y = x[rng.integers(0, len(x), args.rows)] + 0.02 * rng.standard_normal((args.rows, x.shape[1])).astype(np.float32)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    torch.set_num_threads(cores)
    reference = monolith.encode(y)
    print(f"# {args.rows} vectors, chunk {args.chunk}, encoding {monolith.encoding.model_dump()}; {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'configuration':<34} {'vectors/s':>10} {'wall s':>7}  equal")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "x.npy"
        np.save(src, y)
        runs = [("1 process, 1 thread", {"workers": 1, "threads": 1}),
                (f"1 process, {cores} torch threads", {"workers": 1, "threads": cores}),
                (f"{cores} worker processes", {"workers": cores})]
        for i, (label, kw) in enumerate(runs):
            out = Path(tmp) / f"o{i}.npy"
            job = plan(src, out, monolith, chunk=args.chunk)
            progress, todo = prepare(job)
            marks: list[tuple[float, int]] = []
            t0 = time.perf_counter()
            run_local(job, todo, progress, monolith=monolith,
                      on_rows=lambda r, marks=marks: marks.append((time.perf_counter(), r)), **kw)
            wall = time.perf_counter() - t0
            print(f"{label:<34} {args.rows / wall:>10.0f} {wall:>7.1f}  {np.array_equal(np.load(out), reference)}"
                  f"   steady {steady(marks):.0f}/s", flush=True)
        if not args.no_ray:
            try:
                import ray
            except ImportError:
                print(f"{'Ray':<34} {'skipped: pip install monolith[ray]':>10}")
                return
            t0 = time.perf_counter()
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
            started = time.perf_counter() - t0
            out = Path(tmp) / "ray.npy"
            job = plan(src, out, monolith, chunk=args.chunk)
            progress, todo = prepare(job)
            marks = []
            t0 = time.perf_counter()
            run_ray(job, todo, progress, replicas=cores, init=False,
                    on_rows=lambda r: marks.append((time.perf_counter(), r)))
            wall = time.perf_counter() - t0
            ray.shutdown()
            print(f"{f'Ray Data, {cores} replicas':<34} {args.rows / wall:>10.0f} {wall:>7.1f}  "
                  f"{np.array_equal(np.load(out), reference)}   steady {steady(marks):.0f}/s "
                  f"(+{started:.1f} s to start the local cluster)")


if __name__ == "__main__":
    main()

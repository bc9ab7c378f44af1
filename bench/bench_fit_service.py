"""Searches while a collection fits: p50/p99 latency of single-query searches before and during a
fit, on a real server process (``python -m service``), and what the fit job reported.

    python bench/bench_fit_service.py --set changelog --rows 20000

The collection is filled from ``data/emb/<set>.train.npy`` (scripts/embed_*.sh build them), the
queries are rows of ``data/emb/<set>.val.npy``; one client sends one search at a time (k=10, the
collection's default exact rescoring), so the numbers are what one user sees while the server's
fit process (lower priority, MONOLITH_FIT_THREADS threads) trains beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(data: Path, env: dict[str, str]) -> object:
    port = free_port()
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("MONOLITH_")},
            "MONOLITH_DATA_DIR": str(data), "MONOLITH_AUTO_FIT_AT": "0", "MONOLITH_LOG_LEVEL": "warning", **env}
    log = open(data.parent / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=full, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((data.parent / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def search_once(http: httpx.Client, q: np.ndarray) -> float:
    t0 = time.perf_counter()
    resp = http.post("/collections/bench/search", json={"embeddings": [q.tolist()], "k": 10})
    resp.raise_for_status()
    return (time.perf_counter() - t0) * 1000


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="changelog")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--idle-searches", type=int, default=300)
    ap.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = ap.parse_args()
    x = np.load(REPO / "data" / "emb" / f"{args.set}.train.npy", mmap_mode="r")[: args.rows].astype(np.float32)
    queries = np.load(REPO / "data" / "emb" / f"{args.set}.val.npy", mmap_mode="r")[:500].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp) / "data", {}) as url, \
            httpx.Client(base_url=url, timeout=120) as http:
        http.put("/collections/bench", json={"auto_fit": False}).raise_for_status()
        for start in range(0, len(x), 2000):
            items = [{"id": f"r{i}", "embedding": x[i].tolist()} for i in range(start, min(start + 2000, len(x)))]
            http.post("/collections/bench/items", json={"items": items}).raise_for_status()
        for q in queries[:20]:
            search_once(http, q)  # warm-up
        idle = [search_once(http, queries[i % len(queries)]) for i in range(args.idle_searches)]
        started = http.post("/collections/bench/fit", json={"baselines": args.baselines})
        started.raise_for_status()
        during: list[float] = []
        while True:
            during.append(search_once(http, queries[len(during) % len(queries)]))
            if len(during) % 20 == 0 and http.get("/collections/bench/fit").json()["status"] != "running":
                break
        job = http.get("/collections/bench/fit").json()
    table = Table("phase", "searches", "p50 ms", "p99 ms", title=f"{args.set}: {len(x):,} items, one search at a time")
    rows = {"idle": percentiles(idle), "during fit": percentiles(during)}
    for name, ms in (("idle", idle), ("during fit", during)):
        table.add_row(name, str(len(ms)), f"{rows[name][0]:.2f}", f"{rows[name][1]:.2f}")
    console = Console()
    console.print(table)
    report = job.get("report") or {}
    fit = Table("method", "held-out recall 10@10", "Δ vs generic ± SE", "fit s", title=(
        f"fit {job['status']} in {job['seconds']} s ({report.get('train_rows')} training rows, "
        f"{report.get('held_out_rows')} held out){': ' + job['reason'] if job.get('reason') else ''}"))
    for m in report.get("methods", []):
        fit.add_row(m["method"], f"{m['recall_10@10']:.3f}",
                    f"{m['diff_recall_10@10']:+.3f} ± {m['diff_se_recall_10@10']:.3f}",
                    "" if m["fit_seconds"] is None else f"{m['fit_seconds']:.1f}")
    console.print(fit)
    if args.out:
        args.out.write_text(json.dumps({"set": args.set, "rows": len(x), "latency_ms": rows, "searches": {
            "idle": len(idle), "during": len(during)}, "job": job}, indent=2, default=float))


if __name__ == "__main__":
    main()

"""Server memory under clients that send maximum-size bodies (docs/service.md, Limits).

Starts the real ``python -m service`` on 127.0.0.1 (or measures one you started, with
``--url`` and ``--pid``), then ``--clients`` threads send, for ``--seconds``, bodies as large as
``MONOLITH_MAX_BODY_BYTES`` allows: JSON ``/encode`` embeddings, JSON collection upserts and
``.npy`` ``/encode`` batches, in turn. The server's resident memory is sampled from
``/proc/<pid>/status`` every 0.1 s. Prints one JSON line: peak and final RSS, the statuses
answered (per kind) and the number of requests.

    python bench/bench_limits.py [--clients 8] [--seconds 60] [--text-model] [--env K=V ...]

Linux only (reads /proc). Sends traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MAX_BODY = 64 * 1024 * 1024  # the default MONOLITH_MAX_BODY_BYTES


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bodies(max_body: int, max_batch: int) -> dict[str, tuple[str, bytes, str]]:
    """Kind → (path, body, content type), each as close to ``max_body`` as its format allows."""
    rng = np.random.default_rng(0)
    row = rng.standard_normal(384)
    row = (row / np.linalg.norm(row)).tolist()
    row_json = json.dumps(row)
    n_rows = (max_body - 64) // (len(row_json) + 2)
    enc = ('{"embeddings": [' + ", ".join([row_json] * n_rows) + "]}").encode()
    item = lambda i: f'{{"id": "item-{i:08d}", "embedding": {row_json}, "metadata": {{"n": "{i:08d}"}}}}'  # noqa: E731
    per_item = len(item(0)) + 2
    n_items = (max_body - 64) // per_item
    ups = ('{"items": [' + ", ".join(item(i) for i in range(n_items)) + "]}").encode()
    x = rng.standard_normal((min(max_batch, max_body // 1536), 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    buf = io.BytesIO()
    np.save(buf, x)
    return {
        "encode_json": ("/encode", enc[:max_body], "application/json"),
        "upsert_json": ("/collections/bench/items", ups[:max_body], "application/json"),
        "encode_npy": ("/encode", buf.getvalue(), "application/x-npy"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--url", help="a server already running on 127.0.0.1 (with --pid)")
    ap.add_argument("--pid", type=int, help="its process id, for RSS")
    ap.add_argument("--text-model", action="store_true", help="start the server with the text model")
    ap.add_argument("--env", action="append", default=[], help="MONOLITH_X=V for the started server")
    ap.add_argument("--max-body", type=int, default=MAX_BODY)
    ap.add_argument("--max-batch", type=int, default=10_000)
    ap.add_argument("--api-key", default=None)
    args = ap.parse_args()

    proc = None
    tmp = tempfile.TemporaryDirectory(prefix="bench-limits-")
    if args.url:
        if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
            raise SystemExit("--url must be a server on 127.0.0.1")
        url, pid = args.url, args.pid
    else:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONOLITH_")}
        env.update({"MONOLITH_DATA_DIR": str(Path(tmp.name) / "data"),
                    "MONOLITH_LOAD_TEXT_MODEL": "true" if args.text_model else "false"})
        env.update(dict(kv.split("=", 1) for kv in args.env))
        if args.api_key:
            env["MONOLITH_API_KEY"] = args.api_key
        log = open(Path(tmp.name) / "server.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        url, pid = f"http://127.0.0.1:{port}", proc.pid
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{(Path(tmp.name) / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    httpx.put(f"{url}/collections/bench", headers=headers, timeout=30)
    kinds = bodies(args.max_body, args.max_batch)
    sizes = {k: len(b) for k, (_, b, _) in kinds.items()}
    rss0 = rss_mib(pid) if pid else None
    statuses: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in kinds}
    peak = [rss0 or 0.0]
    stop = time.monotonic() + args.seconds
    lock = threading.Lock()

    def sampler() -> None:
        while time.monotonic() < stop + 2 and pid:
            try:
                peak[0] = max(peak[0], rss_mib(pid))
            except (OSError, RuntimeError):
                return
            time.sleep(0.1)

    def client(i: int) -> None:
        names = list(kinds)
        with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
            j = i
            while time.monotonic() < stop:
                kind = names[j % len(names)]
                j += 1
                path, body, ctype = kinds[kind]
                try:
                    code = str(c.post(path, content=body, headers={"Content-Type": ctype}).status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with lock:
                    statuses[kind][code] += 1

    threads = [threading.Thread(target=sampler)] + [threading.Thread(target=client, args=(i,))
                                                      for i in range(args.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    final = rss_mib(pid) if pid else None
    if proc is not None:
        proc.terminate()
        proc.wait(30)
    print(json.dumps({
        "clients": args.clients, "seconds": round(elapsed, 1), "body_bytes": sizes,
        "rss_start_mib": rss0 and round(rss0), "rss_peak_mib": round(peak[0]), "rss_end_mib": final and round(final),
        "statuses": {k: dict(v) for k, v in statuses.items()},
        "requests": sum(sum(v.values()) for v in statuses.values()),
    }))


if __name__ == "__main__":
    main()

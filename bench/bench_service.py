"""Service throughput and latency on loopback, in one bounded run (< 2 minutes).

    python bench/bench_service.py [--rows 16384] [--seconds 6] [--candidates N]

``--candidates`` sets the encoding of the in-process model and of every server
(MONOLITH_ENCODE_CANDIDATES): 0 = nearest codes; default: the checkpoint's setting
(decoder-aware refinement for the shipped checkpoint).

Rows measured:
  in-process   Monolith.encode, batch 4096 (the ceiling: no HTTP, no serialisation)
  .npy         POST /encode with float32 .npy bodies of 4096 rows, one client
  JSON         POST /encode with JSON bodies of 4096 rows, one client
  32 × 1 vec   32 concurrent clients, 1 embedding per request, micro-batcher on (server default)
  32 × 1 vec   the same with batching off (MONOLITH_BATCH_WAIT_MS=0, MONOLITH_BATCH_MAX_SIZE=1)
  8 × 1 text   8 concurrent clients, 1 text per request

Each server is a real ``python -m service`` process on 127.0.0.1; the load generator is
this process (httpx for the bulk rows; a minimal asyncio HTTP/1.1 client for the concurrent
ones, so that the client's own CPU cost does not set the pace). Numbers depend on the
machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqvae.api import Monolith  # noqa: E402

BATCH = 4096
NPY = {"Content-Type": "application/x-npy"}
SENTENCES = [
    "the cat sat on the mat", "quarterly revenue grew by four percent", "a storm is moving up the coast",
    "how do I reset my password", "the museum opens at nine", "penguins live in the southern hemisphere",
    "this recipe needs two eggs", "the match ended in a draw",
]


@dataclass
class Row:
    name: str
    throughput: float
    unit: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    rows_per_pass: float | None = None


def unit_rows(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 384)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(env: dict[str, str], tmp: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("MONOLITH_")}
    log = (tmp / f"server-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env={**base, "MONOLITH_DATA_DIR": str(tmp / "data"), **env}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(tmp / f'server-{port}.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready in 120 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


REPEATS = 3  # bulk rows report the best of 3 passes: the machine may be shared, noise only slows


def best_rate(rows: int, run) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return rows / min(times)


def bench_in_process(x: np.ndarray, candidates: int | None) -> Row:
    m = Monolith.load(candidates=candidates)
    m.encode(x[:BATCH])  # warm-up

    def run() -> None:
        for i in range(0, len(x), BATCH):
            m.encode(x[i : i + BATCH])

    return Row(f"in-process Monolith.encode, batch {BATCH}", best_rate(len(x), run), "vectors/s")


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def bench_npy(url: str, x: np.ndarray) -> Row:
    bodies = [npy_bytes(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    with httpx.Client(base_url=url, timeout=120) as http:
        http.post("/encode", content=bodies[0], headers=NPY).raise_for_status()

        def run() -> None:
            for body in bodies:
                http.post("/encode", content=body, headers=NPY).raise_for_status()

        rate = best_rate(len(x), run)
    return Row(f"POST /encode .npy, {BATCH} rows/request", rate, "vectors/s")


def bench_json(url: str, x: np.ndarray) -> Row:
    # Bodies are serialised before the clock starts, as for .npy: this measures the server.
    # (Client-side json.dumps of 4096 float32 rows alone takes seconds: another reason for .npy.)
    bodies = [json.dumps({"embeddings": x[i : i + BATCH].tolist()}).encode() for i in range(0, len(x), BATCH)]
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=120) as http:
        http.post("/encode", json={"embeddings": x[:64].tolist()}).raise_for_status()

        def run() -> None:
            for body in bodies:
                http.post("/encode", content=body, headers=headers).raise_for_status()

        rate = best_rate(len(x), run)
    return Row(f"POST /encode JSON, {BATCH} rows/request", rate, "vectors/s")


def encode_passes(url: str, op: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    values = {}
    for line in text.splitlines():
        for key in ("sum", "count"):
            if line.startswith(f'monolith_batch_size_{key}{{op="{op}"}}'):
                values[key] = float(line.split()[-1])
    return values.get("sum", 0.0), values.get("count", 0.0)


class RawConnection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams.

    httpx costs several ms of CPU per request on a small busy machine (measured: more than
    the server itself), so with it the load generator, not the server, would set the pace.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line, *header_lines = (await self.reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def closed_loop(url: str, clients: int, seconds: float, bodies: list[bytes]) -> tuple[float, np.ndarray]:
    """``clients`` connections each send one request at a time for ``seconds``: req/s, latencies."""
    host, port = url.removeprefix("http://").split(":")
    conns = [RawConnection(host, int(port)) for _ in range(clients)]
    latencies: list[float] = []

    async def worker(conn: RawConnection, k: int, stop: float, record: bool) -> None:
        i = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            status, payload = await conn.post_json("/encode", bodies[i % len(bodies)])
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {payload[:200]!r}")
            if record:
                latencies.append(time.perf_counter() - t)
            i += clients

    try:
        warm = time.perf_counter() + min(1.0, seconds / 4)
        await asyncio.gather(*(worker(c, k, warm, False) for k, c in enumerate(conns)))
        start = time.perf_counter()
        await asyncio.gather(*(worker(c, k, start + seconds, True) for k, c in enumerate(conns)))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return len(latencies) / elapsed, np.asarray(latencies)


def bench_concurrent(url: str, name: str, clients: int, seconds: float, bodies: list[bytes], op: str) -> Row:
    s0, c0 = encode_passes(url, op)
    rps, lat = asyncio.run(closed_loop(url, clients, seconds, bodies))
    s1, c1 = encode_passes(url, op)
    per_pass = (s1 - s0) / (c1 - c0) if c1 > c0 else None
    return Row(name, rps, "requests/s", float(np.percentile(lat, 50) * 1e3), float(np.percentile(lat, 99) * 1e3),
               per_pass)


def print_table(rows: list[Row]) -> None:
    header = f"{'benchmark':<52} {'throughput':>18} {'p50 ms':>8} {'p99 ms':>8} {'rows/pass':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        p50 = f"{r.p50_ms:8.1f}" if r.p50_ms is not None else f"{'':>8}"
        p99 = f"{r.p99_ms:8.1f}" if r.p99_ms is not None else f"{'':>8}"
        per = f"{r.rows_per_pass:9.1f}" if r.rows_per_pass is not None else f"{'':>9}"
        print(f"{r.name:<52} {r.throughput:>9.0f} {r.unit:<8} {p50} {p99} {per}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384, help="vectors for the bulk rows (multiple of 4096)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per concurrency row")
    parser.add_argument("--candidates", type=int, default=None,
                        help="encode candidates per head (0: nearest codes; default: the checkpoint's)")
    args = parser.parse_args()
    enc = {} if args.candidates is None else {"MONOLITH_ENCODE_CANDIDATES": str(args.candidates)}
    started = time.perf_counter()
    x = unit_rows(args.rows)
    print(f"# {platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f}, encoding {Monolith.load(candidates=args.candidates).encoding}", flush=True)
    rows = [bench_in_process(x, args.candidates)]
    one_vec = [json.dumps({"embeddings": [row.tolist()]}).encode() for row in unit_rows(1024, seed=1)]
    one_text = [json.dumps({"texts": [f"{SENTENCES[i % len(SENTENCES)]} ({i})"]}).encode() for i in range(1024)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with server({"MONOLITH_LOAD_TEXT_MODEL": "true", **enc}, tmp) as url:
            rows.append(bench_npy(url, x))
            rows.append(bench_json(url, x))
            rows.append(bench_concurrent(url, "32 clients × 1 embedding, micro-batcher on (2 ms)", 32,
                                         args.seconds, one_vec, "encode"))
            rows.append(bench_concurrent(url, "8 clients × 1 text, micro-batcher on", 8, args.seconds,
                                         one_text, "embed"))
        off = {"MONOLITH_LOAD_TEXT_MODEL": "false", "MONOLITH_BATCH_WAIT_MS": "0", "MONOLITH_BATCH_MAX_SIZE": "1",
               **enc}
        with server(off, tmp) as url:
            rows.insert(4, bench_concurrent(url, "32 clients × 1 embedding, batching off", 32, args.seconds,
                                            one_vec, "encode"))
    print()
    print_table(rows)
    print(f"\n# total {time.perf_counter() - started:.0f} s; bulk rows: best of {REPEATS} passes over "
          f"{args.rows} vectors; rows/pass = mean rows per model forward pass (server's monolith_batch_size)")


if __name__ == "__main__":
    main()

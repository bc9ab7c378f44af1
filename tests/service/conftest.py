"""Fixtures for the service tests.

The Monolith loads once per session and is handed to every in-process app; the text model
loads at most once in this process (``embedder``, only when a test asks for texts) and once
in the real server process (``server``). Every app stores collections under a temporary
folder, never in the working tree.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.batcher import SMALL_BATCH_ROWS
from service.settings import Settings
from vqvae.api import Monolith

REPO = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT = 120.0


def wait_ready(client: TestClient | httpx.Client, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get("/readyz")
        if resp.status_code == 200 or time.monotonic() > deadline:
            return resp
        time.sleep(0.02)


def unit_rows(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def served(fn: Callable[[np.ndarray], np.ndarray], arg: Any) -> np.ndarray:
    """``fn(arg)`` as the server computes it, for bit-exact comparisons: passes of fewer than
    ``SMALL_BATCH_ROWS`` rows run on one torch thread there, and float sums can differ in the
    last bit between thread counts."""
    if len(arg) >= SMALL_BATCH_ROWS:
        return fn(arg)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(arg)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def monolith() -> Monolith:
    return Monolith.load()


@pytest.fixture(scope="session")
def embedder(monolith: Monolith) -> Any:
    from vqvae.embedder import TextEmbedder

    return TextEmbedder(expected_dim=monolith.config.input_dim)


AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(monolith: Monolith, tmp_path: Path) -> Iterator[AppFactory]:
    """``make_client(embedder=None, wait=True, **settings)`` → a started TestClient."""
    stack = contextlib.ExitStack()

    def factory(*, embedder: Any = None, wait: bool = True, inject_model: bool = True, **overrides: Any) -> TestClient:
        # no background fits unless a test asks (tests/service/collections/test_fitting.py)
        fields: dict[str, Any] = {"data_dir": tmp_path / "data", "load_text_model": False, "auto_fit_at": 0}
        fields.update(overrides)
        app = create_app(Settings(**fields), monolith=monolith if inject_model else None, embedder=embedder)
        client = stack.enter_context(TestClient(app))
        if wait:
            assert wait_ready(client).status_code == 200
        return client

    with stack:
        yield factory


@pytest.fixture
def client(make_client: AppFactory) -> TestClient:
    return make_client()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """The real ``python -m service`` on a loopback port, output in a log file."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"server-{self.port}.log"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("MONOLITH_")}
        full_env = {**inherited, "MONOLITH_DATA_DIR": str(tmp / "data"), **(env or {})}
        cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port), *(args or [])]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def run_server(tmp: Path, env: dict[str, str] | None = None, args: list[str] | None = None) -> Iterator[str]:
    """A started server's URL once /readyz is 200; stopped on exit."""
    proc = ServerProcess(tmp, env, args)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


SESSION_SERVER_ENV = {"MONOLITH_LOAD_TEXT_MODEL": "true", "MONOLITH_BATCH_WAIT_MS": "5", "MONOLITH_AUTO_FIT_AT": "0"}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real server with the text model, for the whole session."""
    with run_server(tmp_path_factory.mktemp("server"), SESSION_SERVER_ENV) as url:
        yield url

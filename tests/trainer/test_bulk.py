"""Bulk encoding (trainer.bulk, ``monolith-train encode``): the codes equal ``Monolith.encode``
bit for bit in one process, in worker processes, from Parquet and on a local Ray cluster; a run
killed with SIGKILL resumes where it stopped and ends with the identical file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import real_embeddings
from trainer.bulk import BulkError, encode_file, plan, prepare, run_ray
from vqvae.api import Monolith

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def monolith() -> Monolith:
    return Monolith.load()  # the shipped checkpoint's own (decoder-aware) encoding


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return real_embeddings()[:640]


@pytest.fixture(scope="module")
def reference(monolith: Monolith, x: np.ndarray) -> np.ndarray:
    return monolith.encode(x)


@pytest.fixture
def npy(tmp_path: Path, x: np.ndarray) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path


def test_one_process_and_worker_processes_equal_encode(tmp_path: Path, npy: Path, monolith: Monolith,
                                                       reference: np.ndarray) -> None:
    one = encode_file(npy, tmp_path / "one.npy", monolith, chunk=100, workers=1, progress_bar=False)
    assert one["rows"] == 640 and one["encoded"] == 640
    assert np.array_equal(np.load(tmp_path / "one.npy"), reference)
    encode_file(npy, tmp_path / "two.npy", monolith, chunk=128, workers=2, progress_bar=False)
    assert np.array_equal(np.load(tmp_path / "two.npy"), reference)
    assert not (tmp_path / "one.npy.progress.json").exists()  # removed once complete
    with pytest.raises(BulkError, match="exists"):
        encode_file(npy, tmp_path / "one.npy", monolith, progress_bar=False)


def test_parquet_column(tmp_path: Path, x: np.ndarray, monolith: Monolith, reference: np.ndarray) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet input needs pyarrow (an optional dependency)")
    import pyarrow.parquet as pq

    table = pa.table({"id": np.arange(len(x)), "emb": pa.array(list(x), type=pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=150)
    encode_file(tmp_path / "x.parquet", tmp_path / "p.npy", monolith, column="emb", chunk=100, workers=1,
                progress_bar=False)
    assert np.array_equal(np.load(tmp_path / "p.npy"), reference)
    with pytest.raises(BulkError, match="no column"):
        encode_file(tmp_path / "x.parquet", tmp_path / "q.npy", monolith, column="nope", progress_bar=False)


def test_a_progress_record_of_another_job_is_refused(tmp_path: Path, npy: Path, monolith: Monolith) -> None:
    job = plan(npy, tmp_path / "c.npy", monolith, chunk=64)
    prepare(job)  # an unfinished job: record and preallocated output
    with pytest.raises(BulkError, match="another job"):
        encode_file(npy, tmp_path / "c.npy", monolith, chunk=32, progress_bar=False)


def test_a_resume_follows_the_weights_not_the_checkpoint_file(tmp_path: Path, npy: Path, monolith: Monolith,
                                                              reference: np.ndarray) -> None:
    """Recording a report in the checkpoint mid-job changes its file sha256, not its codes: the job
    resumes. A record from before weights were pinned resumes by the file sha256; another model is refused."""
    import shutil

    from vqvae.checkpoint import record_metadata

    ckpt = shutil.copy(monolith.checkpoint.path, tmp_path / "m.safetensors")
    before = Monolith.load(ckpt)
    out = tmp_path / "c.npy"
    job = plan(npy, out, before, chunk=64)
    progress, _ = prepare(job)
    record = json.loads(job.progress_path.read_text())
    assert record["weights_sha256"] == before.weights_sha256 and "checkpoint_sha256" not in record
    record_metadata(Path(ckpt), metrics={"note": "recorded mid-job"})
    after = Monolith.load(ckpt)
    assert after.sha256 != before.sha256
    assert encode_file(npy, out, after, chunk=64, progress_bar=False)["encoded"] == 640
    assert np.array_equal(np.load(out), reference)

    legacy = plan(npy, tmp_path / "d.npy", after, chunk=64)
    prepare(legacy)
    old = {k: v for k, v in json.loads(legacy.progress_path.read_text()).items() if k != "weights_sha256"}
    legacy.progress_path.write_text(json.dumps({**old, "checkpoint_sha256": before.sha256}))
    assert encode_file(npy, tmp_path / "d.npy", after, chunk=64, progress_bar=False)["encoded"] == 640

    other = plan(npy, tmp_path / "e.npy", after, chunk=64)
    prepare(other)
    with pytest.raises(BulkError, match="model weights"):
        encode_file(npy, tmp_path / "e.npy", Monolith.load("monolith-all"), chunk=64, progress_bar=False)


def test_sigkill_then_resume_gives_the_identical_file(tmp_path: Path, npy: Path, reference: np.ndarray) -> None:
    out = tmp_path / "codes.npy"
    record = out.with_name(out.name + ".progress.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONOLITH_")}
    cmd = [sys.executable, "-m", "trainer.cli", "encode", str(npy), str(out), "--workers", "1", "--chunk", "32"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if record.exists():
            try:
                done = sum(b - a for a, b in json.loads(record.read_text())["done"])
            except (ValueError, KeyError):
                done = 0
            if done >= 3:
                break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    stopped = sum(b - a for a, b in json.loads(record.read_text())["done"])
    assert 3 <= stopped < 20, stopped  # killed mid-run: 20 chunks in all
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    report = json.loads(again.stdout.decode().strip().splitlines()[-1])
    assert report["resumed_chunks"] >= stopped and report["encoded"] <= 640 - 32 * stopped
    assert np.array_equal(np.load(out), reference)
    assert not record.exists()


def test_ray_local_cluster_equals_one_process(tmp_path: Path, npy: Path, monolith: Monolith,
                                              reference: np.ndarray) -> None:
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'monolith[ray]'")
    pytest.importorskip("ray.data", reason="the Ray job needs Ray Data: pip install 'ray[data]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        job = plan(npy, tmp_path / "r.npy", monolith, chunk=80)
        progress, todo = prepare(job)
        run_ray(job, todo, progress, replicas=2, init=False)
        assert np.array_equal(np.load(tmp_path / "r.npy"), reference)
        assert progress.done == set(range(job.chunks))
    finally:
        ray.shutdown()

"""Two CPU processes under torchrun train in lockstep: identical parameters, one loadable checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as td
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import TINY, clustered_embeddings
from trainer.distributed import Dist, init_from_env
from vqvae import Monolith

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")

needs_gloo = pytest.mark.skipif(not (td.is_available() and td.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = init_from_env()
    assert (d.rank, d.world, d.is_main, d.enabled) == (0, 1, True, False)
    t = torch.ones(3)
    d.broadcast_(t)
    d.all_reduce_sum_(t)
    assert torch.equal(t, torch.ones(3)) and d.any(True) and not d.any(False)
    model = torch.nn.Linear(2, 2)
    assert d.wrap(model) is model and d.params_in_sync(model)


def test_shards_are_strided_and_disjoint():
    idx = np.arange(10)
    shards = [Dist(rank, 3).shard(idx) for rank in range(3)]
    assert shards[0].tolist() == [0, 3, 6, 9] and shards[2].tolist() == [2, 5, 8]
    assert sorted(np.concatenate(shards).tolist()) == idx.tolist()


@needs_gloo
def test_two_ranks_end_identical_and_the_checkpoint_loads(tmp_path):
    np.save(tmp_path / "train.npy", clustered_embeddings(512, seed=1))
    np.save(tmp_path / "val.npy", clustered_embeddings(150, seed=2))
    out = tmp_path / "run"
    cfg = {
        "model": {**TINY.model_dump(), "dropout": 0.1},
        "data": {"train": [str(tmp_path / "train.npy")], "val": [str(tmp_path / "val.npy")]},
        "optim": {"batch_size": 64, "epochs": 1, "warmup_steps": 2},
        "quantizer": {"kmeans_samples": 512, "kmeans_iters": 2, "reseed_every": 2},
        "loss": {"load_balance": 0.1, "balancing": {"method": "uncertainty"}},
        "monitor": {"tensorboard": False},
        "max_steps": 6, "eval_every": 3, "checkpoint_every": 3, "out_dir": str(out), "threads": 1,
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(WORKER), str(tmp_path / "c.json")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1])
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # bit for bit, codebooks included
    with safe_open(str(out / "rank1.safetensors"), "pt") as fh:
        assert fh.metadata() == {"in_sync": "True", "world": "2"}
    m = Monolith.load(out / "last.safetensors")
    assert m.metadata["provenance"]["world_size"] == 2
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, ranks[0][k]), k
    assert m.encode(clustered_embeddings(4)).shape == (4, 4)

"""Every bottleneck trains from a config file through the CLI and writes checkpoints that load;
resuming restores the schedule, the balancer and the critic exactly."""

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import TINY, clustered_embeddings, real_embeddings
from trainer.cli import app
from trainer.config import TrainConfig
from trainer.loop import Trainer
from vqvae import CheckpointError, Monolith, load_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real embeddings (WordNet glosses and Debian descriptions), both sources in both splits."""
    d = tmp_path_factory.mktemp("data")
    x = real_embeddings()
    val = np.r_[0:100, 512:612]
    np.save(d / "train.npy", np.delete(x, val, axis=0))
    np.save(d / "val.npy", x[val])
    return d


def raw_config(data, out, bottleneck, **over):
    raw = {
        "model": {**TINY.model_dump(), "bottleneck": bottleneck},
        "data": {"train": [str(data / "train.npy")], "val": [str(data / "val.npy")]},
        "optim": {"batch_size": 64, "epochs": 1, "warmup_steps": 3},
        "quantizer": {"kmeans_samples": 512, "kmeans_iters": 2, "reseed_every": 4},
        "monitor": {"log_every": 2, "tensorboard": False},
        "max_steps": 10, "eval_every": 5, "checkpoint_every": 5, "out_dir": str(out), "threads": 1,
    }
    raw.update(over)
    return raw


@pytest.mark.parametrize("bottleneck", ["product_vq", "residual_vq", "vae", "wasserstein"])
def test_each_bottleneck_trains_from_a_config_file(data, tmp_path, bottleneck):
    loss = {"schedule": {"kind": "cyclical_linear", "steps": 4}} if bottleneck in ("vae", "wasserstein") else {}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw_config(data, tmp_path / "run", bottleneck, loss=loss)))
    res = runner.invoke(app, ["train", str(path)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    for name in ("best", "last"):
        ck = load_checkpoint(out / f"{name}.safetensors")
        assert ck.config.bottleneck == bottleneck
        assert ck.metadata["metrics"]["recall_10@10"] >= 0
    rows = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 10 and "reconstruction" in rows[-1]["losses"]
    assert (out / "plots" / "losses.png").is_file()
    val = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [5, 10] and (out / "plots" / "validation.png").is_file()  # recall over steps
    if bottleneck in ("vae", "wasserstein"):
        assert {"vae": "kl", "wasserstein": "mmd"}[bottleneck] in rows[-1]["losses"]["kl"]
        with pytest.raises(CheckpointError, match="produces no codes"):
            Monolith.load(out / "last.safetensors")
    else:
        assert Monolith.load(out / "last.safetensors").encode(clustered_embeddings(3)).shape == (3, 4)
        assert (out / "plots" / "code_usage.png").is_file()


def test_resume_restores_schedule_balancer_and_critic(data, tmp_path):
    loss = {"schedule": {"kind": "adaptive", "window": 2, "target": 0.01}, "kl": 1e-3,
            "balancing": {"method": "uncertainty"}, "adversarial": {"weight": 0.1, "start_step": 4}}

    def cfg(out, **over):
        return TrainConfig.model_validate(raw_config(data, out, "vae", loss=loss, **over))

    full = Trainer(cfg(tmp_path / "a"), progress=False)
    full.run()
    half = Trainer(cfg(tmp_path / "b", max_steps=5), progress=False)
    half.run()
    resumed = Trainer(cfg(tmp_path / "b"), progress=False)
    resumed.run(resume=True)
    assert resumed.step == full.step == 10
    assert resumed.objective.schedule.state_dict() == full.objective.schedule.state_dict()
    assert full.objective.schedule.value != 1.0  # the adaptive schedule did move
    assert torch.equal(resumed.objective.balancer.log_vars, full.objective.balancer.log_vars)
    for k, v in full.objective.adversary.critic.state_dict().items():
        assert torch.allclose(v, resumed.objective.adversary.critic.state_dict()[k], atol=1e-6), k
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-6), k


def test_resume_with_a_different_balancer_is_a_clear_error(data, tmp_path):
    Trainer(TrainConfig.model_validate(raw_config(data, tmp_path, "product_vq", max_steps=5)), progress=False).run()
    raw = raw_config(data, tmp_path, "product_vq", loss={"balancing": {"method": "uncertainty"}})
    with pytest.raises(ValueError, match="no uncertainty-balancer weights"):
        Trainer(TrainConfig.model_validate(raw), progress=False).run(resume=True)

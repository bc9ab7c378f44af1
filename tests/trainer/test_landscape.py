"""Filter-normalised directions, the loss grid and sharpness, and the CLI that draws them."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import TINY, clustered_embeddings
from trainer.cli import app
from trainer.config import LossConfig
from trainer.landscape import LossProbe, filter_normalized_direction, grid_losses, loss_config_of, sharpness
from trainer.loss_factory import build_loss
from vqvae import ModelConfig, build_model, save_checkpoint


def test_directions_match_every_filter_norm_and_leave_biases_still():
    torch.manual_seed(0)
    m = build_model(TINY)
    for p, d in zip(m.parameters(), filter_normalized_direction(m, torch.Generator().manual_seed(1)), strict=True):
        assert d.shape == p.shape
        if p.dim() == 1:
            assert not d.any()
        else:
            rows_d, rows_w = d.reshape(-1, p.shape[-1]), p.detach().reshape(-1, p.shape[-1])
            assert torch.allclose(rows_d.norm(dim=1), rows_w.norm(dim=1), rtol=1e-4)


@pytest.fixture
def probe():
    torch.manual_seed(0)
    m = build_model(TINY.model_copy(update={"bottleneck": "wasserstein"}))
    suite = build_loss(LossConfig(), m.config)
    return LossProbe(m, suite, torch.from_numpy(clustered_embeddings(64)))


def test_grid_centre_is_the_trained_loss_and_weights_come_back(probe):
    base = [p.detach().clone() for p in probe.model.parameters()]
    centre = float(probe.loss())
    gen = torch.Generator().manual_seed(0)
    d1, d2 = (filter_normalized_direction(probe.model, gen) for _ in range(2))
    coeffs, z = grid_losses(probe, d1, d2, steps=3, radius=0.5)
    assert coeffs.tolist() == [-0.5, 0.0, 0.5] and z.shape == (3, 3)
    assert z[1, 1] == pytest.approx(centre, rel=1e-6)  # fixed prior samples: the same loss at (0, 0)
    for p, b in zip(probe.model.parameters(), base, strict=True):
        assert torch.equal(p, b)


def test_sharpness_grows_with_the_radius(probe):
    rows = sharpness(probe, [1e-3, 0.3], samples=3, ascent_steps=2, generator=torch.Generator().manual_seed(0))
    assert [r["radius"] for r in rows] == [1e-3, 0.3]
    assert all(r["ascent"] >= r["random"] for r in rows)
    assert rows[1]["ascent"] > rows[0]["ascent"] > 0


def test_loss_config_comes_from_the_checkpoint():
    assert loss_config_of({"training": {"loss": {"info_nce": 0.5}}}).info_nce == 0.5
    assert loss_config_of({}) == LossConfig()


def test_cli_writes_contour_and_sharpness_pngs(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(TINY), tmp_path / "m.safetensors",
                           training={"loss": {"info_nce": 0.1}})
    np.save(tmp_path / "x.npy", clustered_embeddings(300))
    args = ["landscape", str(ckpt), "--data", str(tmp_path / "x.npy"), "--samples", "128", "--steps", "3",
            "--probes", "2", "--ascent-steps", "1", "--out", str(tmp_path / "l")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "l" / "landscape.json").read_text())
    assert summary["steps"] == 3 and len(summary["sharpness"]) == 5
    for name in ("landscape.png", "sharpness.png"):
        assert (tmp_path / "l" / name).read_bytes().startswith(b"\x89PNG")


def test_cli_errors_are_clear(tmp_path):
    ckpt = save_checkpoint(build_model(ModelConfig(**TINY.model_dump())), tmp_path / "m.safetensors")
    res = CliRunner().invoke(app, ["landscape", str(ckpt), "--data", str(tmp_path / "none.npy")])
    assert res.exit_code == 2 and "none.npy" in res.output
    res = CliRunner().invoke(app, ["landscape", str(tmp_path / "no.safetensors"), "--data", str(tmp_path / "x.npy")])
    assert res.exit_code == 2 and "not found" in res.output


def test_cli_shows_progress_on_stderr_and_results_on_stdout(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(TINY), tmp_path / "m.safetensors")
    np.save(tmp_path / "x.npy", clustered_embeddings(200))
    args = ["landscape", str(ckpt), "--data", str(tmp_path / "x.npy"), "--samples", "64", "--steps", "3",
            "--probes", "2", "--ascent-steps", "1", "--out", str(tmp_path / "l")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 3  # stdout: the summary and nothing else
    total = 3 * 3 + 5 * (2 + 1)  # grid points, then per radius: probes + ascent steps
    assert f"{total}/{total}" in res.stderr and "sharpness" in res.stderr

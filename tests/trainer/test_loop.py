import numpy as np
import pytest
import torch

from tests.conftest import TINY, clustered_embeddings
from trainer.config import TrainConfig
from trainer.loop import Trainer
from vqvae import Monolith


@pytest.fixture
def data(tmp_path):
    np.save(tmp_path / "train.npy", clustered_embeddings(1024, seed=1))
    np.save(tmp_path / "val.npy", clustered_embeddings(300, seed=2))
    return tmp_path


def config(data, out, **over):
    raw = {
        "model": TINY.model_dump(),
        "data": {"train": [str(data / "train.npy")], "val": [str(data / "val.npy")]},
        "optim": {"batch_size": 128, "epochs": 4, "warmup_steps": 8, "lr": 3e-3},
        "quantizer": {"kmeans_samples": 1024, "kmeans_iters": 5, "reseed_every": 5},
        "loss": {"info_nce": 0.1},
        "eval_every": 16, "checkpoint_every": 16, "out_dir": str(out), "threads": 1,
    }
    raw.update(over)
    return TrainConfig.model_validate(raw)


def test_short_run_lowers_loss_and_writes_loadable_checkpoints(data, tmp_path):
    t = Trainer(config(data, tmp_path / "run"), progress=False)
    t.init_codebooks()
    t.step = t.cfg.optim.warmup_steps
    first = np.mean([t.train_step(s)["cosine"] for s in range(t.step, t.step + 3)])
    t = Trainer(config(data, tmp_path / "run"), progress=False)
    result = t.run()
    last = np.mean([t.train_step(s)["cosine"] for s in range(t.step, t.step + 3)])
    assert last < first
    assert result["last"]["codes_used"] > 32
    for name in ("best", "last"):
        m = Monolith.load(tmp_path / "run" / f"{name}.safetensors")
        assert m.encode(clustered_embeddings(4)).shape == (4, 4)
        assert np.asarray(m.metadata["reference_counts"]).shape == (4, 16)


def test_resume_is_exact(data, tmp_path):
    full = Trainer(config(data, tmp_path / "a"), progress=False)
    full.run()
    half = Trainer(config(data, tmp_path / "b", max_steps=16), progress=False)
    half.run()  # stops at 16 and saves state
    resumed = Trainer(config(data, tmp_path / "b"), progress=False)
    resumed.run(resume=True)
    assert resumed.step == full.step
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-6), k


def test_learning_rate_warmup_is_configured_by_optim_lr_warmup_steps(data, tmp_path):
    optim = {"batch_size": 128, "epochs": 4, "warmup_steps": 8, "lr": 3e-3}
    default = Trainer(config(data, tmp_path / "a", optim=optim), progress=False)
    assert default.cfg.optim.lr_warmup_steps == 100  # the value that used to be hard-coded
    assert default.lr_at(0) == pytest.approx(3e-3 / 100) and default.lr_at(99) == pytest.approx(3e-3)
    short = Trainer(config(data, tmp_path / "b", optim={**optim, "lr_warmup_steps": 4}), progress=False)
    assert [short.lr_at(s) for s in range(4)] == pytest.approx([3e-3 * (s + 1) / 4 for s in range(4)])
    assert short.lr_at(4) == pytest.approx(3e-3)  # the cosine decay starts at the top
    assert short.lr_at(short.total_steps) == pytest.approx(3e-3 * short.cfg.optim.lr_min_ratio)
    none = Trainer(config(data, tmp_path / "c", optim={**optim, "lr_warmup_steps": 0}), progress=False)
    assert none.lr_at(0) == pytest.approx(3e-3)


def augmented_batch(data, tmp_path, step: int, **augmentation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch ``step`` without and with ``augmentation`` (DataConfig fields), and which rows it
    moved, after what every augmentation keeps: about half the rows moved, norms, and the same
    rows for the same step (resumes), other rows for another."""
    cfg = config(data, tmp_path / "b")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=augmentation)})
    augmented = Trainer(cfg, progress=False)
    clean, changed = Trainer(config(data, tmp_path / "a"), progress=False).batch(step), augmented.batch(step)
    moved = ~torch.isclose(clean, changed).all(-1)
    assert 0.3 < float(moved.float().mean()) < 0.7
    assert torch.allclose(clean.norm(dim=-1), changed.norm(dim=-1), rtol=1e-4)
    assert torch.equal(changed, augmented.batch(step)) and not torch.equal(changed, augmented.batch(step + 1))
    return clean, changed, moved


def test_noise_jitters_a_share_of_each_batch_on_its_sphere_reproducibly(data, tmp_path):
    clean, jittered, moved = augmented_batch(data, tmp_path, 5, noise=0.3, noise_share=0.5)
    cos = torch.nn.functional.cosine_similarity(clean[moved], jittered[moved])
    assert abs(float(cos.mean()) - 1 / np.sqrt(1 + 0.3**2)) < 0.03


def test_mix_blends_a_share_of_each_batch_with_its_nearest_neighbour(data, tmp_path):
    clean, blended, moved = augmented_batch(data, tmp_path, 3, mix=0.5, mix_min=0.6)
    unit = torch.nn.functional.normalize(clean, dim=-1)
    sim = unit @ unit.T
    sim.fill_diagonal_(-2)
    partner = unit[sim.argmax(1)]
    for i in moved.nonzero().squeeze(1).tolist():  # in the plane of the row and its neighbour, nearer the row
        b = torch.nn.functional.normalize(blended[i], dim=0)
        basis = torch.linalg.qr(torch.stack([unit[i], partner[i]]).T).Q
        assert torch.allclose(basis @ (basis.T @ b), b, atol=1e-4)
        assert float(b @ unit[i]) >= float(b @ partner[i]) - 1e-5

"""Distilling the decoder-aware search into the encoder (trainer/distill.py)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from trainer.cli import app
from trainer.distill import DistillConfig, agreement, distill, teacher_codes
from vqvae import Monolith
from vqvae.checkpoint import load_checkpoint, read_metadata

CKPT = "vqvae/checkpoints/monolith-wiki.safetensors"
SAMPLE = "tests/data/real_sample.npy"
FAST = DistillConfig(rounds=1, encoder_epochs=3, decoder_epochs=1, batch_size=128)


def test_encoder_learns_the_searched_codes():
    import torch

    model = load_checkpoint(CKPT).model
    x = np.load(SAMPLE)[:512]
    targets = teacher_codes(model, torch.from_numpy(x), FAST.teacher, progress=False)
    codebooks = model.quantizer.codebooks.detach().clone()
    history = distill(model, x, FAST.model_copy(update={"decoder_epochs": 0}), progress=False)
    assert history[0]["agreement_after"] == pytest.approx(agreement(model, torch.from_numpy(x), targets))
    assert history[0]["agreement_after"] > history[0]["agreement_before"] + 0.05
    assert torch.equal(model.quantizer.codebooks, codebooks), "codebooks are what decoder and search share: fixed"
    assert all(p.requires_grad for p in model.quantizer.parameters())


def test_cli_saves_a_checkpoint_whose_default_is_nearest_codes(tmp_path):
    out = tmp_path / "distilled.safetensors"
    result = CliRunner().invoke(app, ["distill", CKPT, str(out), "--train", SAMPLE, "--val", SAMPLE,
                                      "--set", "rounds=1", "--set", "encoder_epochs=2", "--set", "decoder_epochs=0",
                                      "--set", "batch_size=128"])
    assert result.exit_code == 0, result.output
    assert "val recall 10@10, nearest" in result.stdout
    meta = read_metadata(out)
    assert meta["encoding"]["candidates"] == 0
    assert meta["provenance"]["distilled_from"] == load_checkpoint(CKPT).sha256
    assert [r["round"] for r in meta["provenance"]["distill_history"]] == [0, 1]
    m = Monolith.load(out)
    assert not m.encoding.refines
    assert m.encode(np.load(SAMPLE)[:8]).shape == (8, 4)
    report = CliRunner().invoke(app, ["eval", f"d={out}", "--searched", "--train", SAMPLE, "--baselines", "none",
                                      "--data", f"s={SAMPLE}", "--n-queries", "100"])
    assert report.exit_code == 0, report.output
    assert "d (searched)" in report.stdout


def test_cli_refuses_bad_settings(tmp_path):
    result = CliRunner().invoke(app, ["distill", CKPT, str(tmp_path / "o.safetensors"), "--train", SAMPLE,
                                      "--val", SAMPLE, "--set", "roundz=2"])
    assert result.exit_code == 2
    assert "roundz" in result.stderr and "Traceback" not in result.stderr


def test_soft_targets_weigh_the_candidates_by_their_decoded_error():
    import torch

    from trainer.distill import teacher_targets

    model = load_checkpoint(CKPT).model.eval()
    x = torch.from_numpy(np.load(SAMPLE)[:256])
    hard = teacher_codes(model, x, FAST.teacher, progress=False)
    soft = teacher_targets(model, x, FAST.teacher, 0.02, progress=False)
    assert soft.ids.shape == soft.probs.shape == (256, 4, FAST.teacher.candidates)
    assert torch.allclose(soft.probs.sum(-1), torch.ones(256, 4))
    assert torch.equal(soft.codes, hard)
    likeliest = soft.ids.gather(-1, soft.probs.argmax(-1, keepdim=True)).squeeze(-1)
    assert (likeliest == hard).float().mean() > 0.99  # the searched code is (almost always) the likeliest
    assert (soft.probs.max(-1).values < 0.9).any(), "near-ties share their weight"


def test_augmented_copies_lie_near_their_rows_at_the_same_norm():
    import torch

    from trainer.distill import augmented

    x = torch.from_numpy(np.load(SAMPLE)[:100]) * 3.0
    out = augmented(x, 2, 0.25, torch.Generator().manual_seed(0))
    assert out.shape == (300, x.shape[1]) and torch.equal(out[:100], x)
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1).repeat(3), rtol=1e-4)
    cos = torch.nn.functional.cosine_similarity(out[100:], x.repeat(2, 1))
    assert abs(float(cos.mean()) - 1 / np.sqrt(1 + 0.25**2)) < 0.02


def test_soft_augmented_distillation_raises_agreement():
    import torch

    model = load_checkpoint(CKPT).model
    x = np.load(SAMPLE)[:384]
    cfg = FAST.model_copy(update={"decoder_epochs": 0, "soft_targets": 0.02, "augment": 1})
    targets = teacher_codes(model, torch.from_numpy(x), cfg.teacher, progress=False)
    history = distill(model, x, cfg, progress=False)
    assert history[0]["agreement_after"] > history[0]["agreement_before"] + 0.03
    assert history[0]["agreement_after"] == pytest.approx(agreement(model, torch.from_numpy(x), targets))

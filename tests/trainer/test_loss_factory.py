"""Factory contents per bottleneck, weights, look-up, and the errors that name what is wrong."""

import math

import pytest
import torch

from tests.conftest import TINY, clustered_embeddings
from trainer.config import LossConfig
from trainer.loss_factory import build_loss
from trainer.objective import Objective
from vqvae import ModelConfig, build_model

RECON = ["cosine", "score_aware"]  # the reconstruction terms on by default


def tiny(bottleneck: str) -> ModelConfig:
    return TINY.model_copy(update={"bottleneck": bottleneck})


def test_shipped_defaults_are_unchanged():
    c = LossConfig()
    assert (c.cosine, c.score_aware, c.score_aware_eta, c.codebook, c.commitment_beta) == (1, 1, 4, 1, 0.25)
    assert c.mse == c.orthogonal == c.head_balance == c.entropy == c.load_balance == c.info_nce == c.distill == 0
    assert c.info_nce_temperature == 0.07 and c.kl == 1e-6 and c.mmd == 100 and c.adversarial.weight == 0


@pytest.mark.parametrize(
    ("bottleneck", "active"),
    [
        ("product_vq", RECON + ["codebook"]),
        ("residual_vq", RECON + ["stage0", "stage1", "stage2", "stage3"]),
        ("vae", RECON + ["kl"]),
        ("wasserstein", RECON + ["mmd"]),
    ],
)
def test_factory_contents_per_bottleneck(bottleneck, active):
    suite = build_loss(LossConfig(), tiny(bottleneck))
    assert suite.names == active
    assert build_loss(LossConfig(), tiny(bottleneck), quantize=False).names == RECON
    with torch.no_grad():
        parts = suite(build_model(tiny(bottleneck))(torch.from_numpy(clustered_embeddings(16))))
    assert set(parts) == set(active) | {"total"}
    expected = sum(t.weight * parts[t.name] for t in suite.terms)
    assert math.isclose(float(parts["total"]), float(expected), rel_tol=1e-6)


def test_every_product_vq_term_when_switched_on():
    c = LossConfig(orthogonal=1, head_balance=1, entropy=1, load_balance=0.5, info_nce=0.1, distill=0.1, mse=1)
    suite = build_loss(c, TINY)
    assert suite.names == ["cosine", "mse", "score_aware", "info_nce", "distill", "codebook", "orthogonal",
                           "head_balance", "entropy", "load_balance"]
    assert suite["load_balance"].weight == 0.5 and suite["load_balance"].kind == "regulariser"
    assert suite["codebook"].kind == "quantizer" and suite["cosine"].kind == "reconstruction"
    assert math.isclose(sum(t.weight for t in suite.terms), 1 + 1 + 1 + 0.1 + 0.1 + 1 + 1 + 1 + 1 + 0.5)
    assert suite["entropy"].weight == 1.0 and suite["entropy"].kind == "regulariser"


def test_default_divergence_weights_and_kinds():
    assert build_loss(LossConfig(), tiny("vae"))["kl"].weight == 1e-6
    mmd = build_loss(LossConfig(), tiny("wasserstein"))["mmd"]
    assert (mmd.weight, mmd.kind, mmd.keys) == (100.0, "kl", ("z", "z_prior"))


def test_looking_up_an_inactive_term_lists_the_active_ones():
    suite = build_loss(LossConfig(), TINY)
    with pytest.raises(KeyError, match=r"no active loss term 'kl' for bottleneck 'product_vq'.*'codebook'"):
        suite["kl"]


def test_missing_output_key_is_named():
    suite = build_loss(LossConfig(), tiny("vae"))
    out = build_model(TINY)(torch.from_numpy(clustered_embeddings(4)))  # a product_vq output
    with pytest.raises(KeyError, match=r"'kl' reads model output 'mu'.*it gives: \[.*'codes'"):
        suite(out)


def test_unknown_bottleneck_is_named_with_the_valid_ones():
    bad = TINY.model_construct(**{**TINY.model_dump(), "bottleneck": "kmeans"})
    with pytest.raises(ValueError, match=r"unknown bottleneck 'kmeans'; valid: \['product_vq', 'residual_vq'"):
        build_loss(LossConfig(), bad)


def test_weights_must_not_be_negative_and_keys_must_exist():
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        LossConfig(kl=-1)
    with pytest.raises(ValueError, match="Extra inputs"):
        LossConfig.model_validate({"klx": 1})


def test_schedule_term_must_be_active():
    m = build_model(tiny("vae"))
    with pytest.raises(ValueError, match=r"schedule.term: 'mmd' is not an active term.*'kl'"):
        Objective(LossConfig.model_validate({"schedule": {"kind": "linear", "term": "mmd"}}), tiny("vae"), m)
    with pytest.raises(ValueError, match="no default term to schedule"):
        Objective(LossConfig.model_validate({"schedule": {"kind": "linear"}}), TINY, build_model(TINY))
    obj = Objective(LossConfig.model_validate({"schedule": {"kind": "linear", "term": "codebook"}}), TINY,
                    build_model(TINY))
    assert obj.term == "codebook"


def test_objective_applies_the_schedule_after_the_warmup():
    m = build_model(tiny("vae"))
    cfg = LossConfig.model_validate({"kl": 2.0, "schedule": {"kind": "linear", "steps": 10}})
    obj = Objective(cfg, tiny("vae"), m, warmup_steps=4)
    with torch.no_grad():  # step 9 is 5 steps after the warm-up: m = 0.5, weight 1.0
        parts = obj(m(torch.from_numpy(clustered_embeddings(8))), step=9, quantize=True)
    rec = parts["cosine"] + parts["score_aware"]
    assert math.isclose(float(parts["total"]), float(rec + 1.0 * parts["kl"]), rel_tol=1e-5)
    assert obj.weights() == {"kl_multiplier": 0.5}


def test_inert_terms_are_named_with_the_reason():
    from trainer.config import TrainConfig
    from trainer.loss_factory import inert_terms

    def cfg(**over):
        raw = {"data": {"train": ["a.npy"]}, "loss": {"orthogonal": 0.1, "head_balance": 1.0}}
        for key, value in over.items():
            raw.setdefault(key, {}).update(value)
        return TrainConfig.model_validate(raw)

    notes = inert_terms(cfg())
    assert len(notes) == 2 and "quantizer.ema" in notes[0] and "normalize_latent" in notes[1]
    assert inert_terms(cfg(quantizer={"ema": False}, model={"normalize_latent": False})) == []
    assert inert_terms(TrainConfig.model_validate({"data": {"train": ["a.npy"]}})) == []


def test_head_balance_is_identically_zero_for_unit_heads():
    import torch.nn.functional as F

    from vqvae import losses as L

    z = F.normalize(torch.randn(64, 4, 8), dim=-1).reshape(64, 32)
    assert float(L.head_balance_loss(z, 4)) < 1e-12

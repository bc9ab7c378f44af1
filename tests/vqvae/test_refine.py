import numpy as np
import pytest
import torch

from tests.conftest import TINY, clustered_embeddings
from vqvae import CheckpointError, Monolith, MonolithWiki, save_checkpoint
from vqvae.config import EncodeConfig
from vqvae.refine import CodeRefiner, score_aware_error


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MonolithWiki(TINY).eval()


def errors(model, x, codes, eta=4.0):
    with torch.inference_mode():
        return score_aware_error(model.decode(codes), x, eta)


def test_score_aware_error_by_hand():
    x = torch.tensor([[1.0, 0.0]])
    # r = (0.5, 0.5): parallel part 0.5, total 0.5 → (η − 1)·0.25 + 0.5
    assert score_aware_error(torch.tensor([[0.5, -0.5]]), x, 4.0).item() == pytest.approx(3 * 0.25 + 0.5)
    assert score_aware_error(torch.tensor([[0.5, -0.5]]), x, 1.0).item() == pytest.approx(0.5)  # plain ‖r‖²


def test_refinement_never_raises_the_error_and_usually_lowers_it(model):
    x = torch.from_numpy(clustered_embeddings(300, seed=3))
    nearest = model.encode(x)
    refined = CodeRefiner(model, EncodeConfig(candidates=8, sweeps=2), chunk=64)(x, model.encode_latent(x))
    before, after = errors(model, x, nearest), errors(model, x, refined)
    assert refined.shape == nearest.shape and refined.dtype == torch.int64
    assert (after <= before + 1e-5).all()  # the nearest codes are among the tries
    assert after.mean() < before.mean() and (refined != nearest).any()


def plain_icm(model, x, shortlist, sweeps, eta=4.0):
    """The search spelt out: every row, every head, every sweep, through model.decode."""
    codes = shortlist[:, :, 0].clone()
    for _ in range(sweeps):
        for head in range(codes.shape[1]):
            tries = codes.unsqueeze(1).repeat(1, shortlist.shape[-1], 1)  # [B, m, H]
            tries[:, :, head] = shortlist[:, head]
            decoded = model.decode(tries.flatten(0, 1)).reshape(*tries.shape[:2], -1)
            err = score_aware_error(decoded, x.unsqueeze(1), eta)
            codes = tries[torch.arange(len(x)), err.argmin(-1)]
    return codes


def test_skipping_settled_rows_gives_the_codes_of_the_full_search(model):
    x = torch.from_numpy(clustered_embeddings(200, seed=5))
    z = model.encode_latent(x)
    refiner = CodeRefiner(model, EncodeConfig(candidates=6, sweeps=4), chunk=64)
    tried = []
    finish = refiner.decoder.finish
    refiner.decoder.finish = lambda hidden: tried.append(hidden.shape[0]) or finish(hidden)
    codes, shortlist = refiner.search(x, z)
    with torch.inference_mode():
        assert torch.equal(codes, plain_icm(model, x, shortlist, sweeps=4))
    heads = model.config.num_heads
    assert heads * len(x) <= sum(tried) < 4 * heads * len(x)  # the first sweep tries every row, later ones fewer


def test_refined_codes_come_from_each_heads_shortlist(model):
    x = torch.from_numpy(clustered_embeddings(50, seed=4))
    z = model.encode_latent(x)
    refined = CodeRefiner(model, EncodeConfig(candidates=3, sweeps=3))(x, z)
    shortlist = model.quantizer.distances(z).topk(3, dim=-1, largest=False).indices
    assert (shortlist == refined.unsqueeze(-1)).any(-1).all()


def test_one_candidate_is_the_nearest_code(model):
    x = torch.from_numpy(clustered_embeddings(40))
    codes = CodeRefiner(model, EncodeConfig(candidates=1))(x, model.encode_latent(x))
    assert torch.equal(codes, model.encode(x))


def test_refiner_leaves_a_training_model_in_training_mode(model):
    model.train()
    x = torch.from_numpy(clustered_embeddings(10))
    CodeRefiner(model, EncodeConfig(candidates=4))(x, model.encode_latent(x))
    assert model.training


def test_monolith_uses_the_checkpoints_encoding_and_overrides(model, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, encoding={"candidates": 8, "sweeps": 2})
    x = clustered_embeddings(200, seed=5)
    m = Monolith.load(path)
    assert m.encoding == EncodeConfig(candidates=8, sweeps=2)
    refined = m.encode(x)
    nearest = Monolith.load(path, encoding=EncodeConfig()).encode(x)
    assert not np.array_equal(refined, nearest)
    with torch.inference_mode():
        assert np.array_equal(nearest, model.encode(torch.from_numpy(x)).numpy())
    monkeypatch.setenv("MONOLITH_ENCODE_CANDIDATES", "0")
    assert np.array_equal(Monolith.load(path).encode(x), nearest)
    monkeypatch.setenv("MONOLITH_ENCODE_CANDIDATES", "many")
    with pytest.raises(ValueError, match="MONOLITH_ENCODE_CANDIDATES"):
        Monolith.load(path)


def test_invalid_encoding_metadata_is_a_checkpoint_error(model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, encoding={"candidates": -3})
    with pytest.raises(CheckpointError, match="encoding"):
        Monolith.load(path)


def test_candidate_errors_score_each_swap_through_the_decoder(model):
    x = torch.from_numpy(clustered_embeddings(40, seed=6))
    refiner = CodeRefiner(model, EncodeConfig(candidates=5, sweeps=2), chunk=16)
    z = model.encode_latent(x)
    codes, shortlist = refiner.search(x, z)
    assert torch.equal(codes, refiner(x, z))
    err = refiner.candidate_errors(x, codes, shortlist)
    assert shortlist.shape == err.shape == (40, model.config.num_heads, 5)
    assert torch.equal(shortlist[..., 0], model.encode(x))  # nearest first
    for head, j in [(0, 3), (model.config.num_heads - 1, 1)]:
        swapped = codes.clone()
        swapped[:, head] = shortlist[:, head, j]
        assert torch.allclose(err[:, head, j], errors(model, x, swapped), atol=1e-4)

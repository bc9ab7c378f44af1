"""The LSQ pilots (research/pilot_lsq.py): the neural decoder starts at LSQ's own decoding and
learns; the preconditioned quantizer maps its decoding back to the original space."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import faiss
import numpy as np
import torch

from tests.conftest import clustered_embeddings

spec = importlib.util.spec_from_file_location("pilot_lsq", Path(__file__).parents[2] / "research" / "pilot_lsq.py")
pilot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pilot)


def small_lsq(x: np.ndarray) -> faiss.Index:
    index = faiss.index_factory(x.shape[1], "LSQ2x8")
    index.train(x)
    return index


def test_untrained_decoder_is_lsq_decoding_scaled_to_unit_length():
    x = clustered_embeddings(600)
    index = small_lsq(x)
    codes = index.sa_encode(x)
    model = pilot.NeuralDecoder(pilot.lsq_codebooks(index), embed=8, hidden=32).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(codes.astype(np.int64))).numpy()
    ref = index.sa_decode(codes)
    np.testing.assert_allclose(out, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


def test_training_the_decoder_lowers_its_loss():
    x = clustered_embeddings(600)
    index = small_lsq(x)
    model = pilot.NeuralDecoder(pilot.lsq_codebooks(index), embed=8, hidden=64, dropout=0.0)
    losses = pilot.train_decoder(model, index.sa_encode(x), x, epochs=15, batch=128, lr=3e-3)
    assert losses[-1] < 0.8 * losses[0]
    torch.manual_seed(0)
    with_distill = pilot.NeuralDecoder(pilot.lsq_codebooks(index), embed=8, hidden=64, dropout=0.0)
    distilled = pilot.train_decoder(with_distill, index.sa_encode(x), x, epochs=15, batch=128, lr=3e-3, distill=1.0)
    assert distilled[0] > losses[0] and distilled[-1] < 0.8 * distilled[0]  # the term is in the loss, and falls


def test_preconditioning_is_undone_on_decoding():
    x = clustered_embeddings(600)
    mean, a, a_inv = pilot.precondition(x, 1.0)
    np.testing.assert_allclose(a @ a_inv, np.eye(x.shape[1]), atol=1e-3)
    encode, decode = pilot.preconditioned_lsq(x, 1.0, spec="LSQ2x8")
    codes = encode(x)
    assert codes.shape == (len(x), 2) and codes.dtype == np.uint8
    recon = decode(codes)
    cos = (recon * x).sum(1) / np.linalg.norm(recon, axis=1)
    assert cos.mean() > 0.5  # back in the original space, not the transformed one


def test_ceiling_fits_lsq_on_each_unseen_set_and_reports_it_beside_the_shared_fit(tmp_path: Path):
    import argparse

    from trainer.evaluate import monolith_method
    from vqvae.api import Monolith

    for i, name in enumerate(("wordnet", "debian", "man", "pydoc", "changelog", "info")):
        for j, split in enumerate(("train", "val", "test")):
            np.save(tmp_path / f"{name}.{split}.npy", clustered_embeddings(300, seed=10 * i + j))
    args = argparse.Namespace(emb=tmp_path, baseline_cache=None)
    x = np.concatenate([np.load(tmp_path / f"{s}.train.npy") for s in ("wordnet", "debian")])
    rows = pilot.ceiling_rows(x, args, monolith_method("monolith", Monolith.load()))
    sets = [r["set"] for r in rows[::3]]
    assert sets == ["pydoc", "pydoc val+test", "changelog", "changelog val+test", "info", "info val+test"]
    assert [r["n_db"] + r["n_queries"] for r in rows[::3]] == [900, 600] * 3
    own = rows[2::3]
    names = [f"LSQ4x8 fitted on {s}.train" for s in ("pydoc", "changelog", "info")]
    assert [r["method"] for r in own] == [n for n in names for _ in "ab"]
    assert {r["train_vectors"] for r in own} == {300}
    assert [r["method"] for r in rows[1::3]] == ["LSQ4x8"] * 6 and {r["train_vectors"] for r in rows[1::3]} == {600}

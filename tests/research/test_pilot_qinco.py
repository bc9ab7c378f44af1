"""The implicit-codebook pilot (research/pilot_qinco.py) starts at RQ and decodes what it encodes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from tests.conftest import clustered_embeddings

spec = importlib.util.spec_from_file_location("pilot_qinco", Path(__file__).parents[2] / "research" / "pilot_qinco.py")
pilot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pilot)


def model(x: np.ndarray) -> pilot.ImplicitRQ:
    rng = np.random.default_rng(0)
    bases = [x[rng.choice(len(x), pilot.K)] * 0.5**m for m in range(pilot.STEPS)]
    return pilot.ImplicitRQ(bases, hidden=16)


def test_untrained_steps_are_the_base_codebooks():
    x = clustered_embeddings(64)
    m = model(x)
    idx = torch.randint(0, pilot.K, (64, 3))
    assert torch.equal(m.steps[0].codewords(idx, torch.from_numpy(x)), m.steps[0].base[idx].detach())


def test_decode_rebuilds_the_encoded_reconstruction_and_training_lowers_the_loss():
    x = torch.from_numpy(clustered_embeddings(256))
    m = model(x.numpy())
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        _, _, loss = m(x, 8)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        codes, xhat, loss = m(x, 8)
    assert loss.item() < 0.7 * first
    assert codes.shape == (256, pilot.STEPS) and int(codes.max()) < pilot.K
    torch.testing.assert_close(m.decode(codes), xhat, atol=1e-5, rtol=1e-5)

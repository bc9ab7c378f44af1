"""Manual and uncertainty weighting: the formula, the bounds, the config errors."""

import math

import pytest
import torch

from trainer.balancing import ManualBalancer, UncertaintyBalancer, build_balancer
from trainer.config import BalancingConfig


def test_manual_is_the_plain_sum():
    b = build_balancer(BalancingConfig(), ["a", "b"])
    assert isinstance(b, ManualBalancer) and list(b.parameters()) == []
    assert float(b({"a": torch.tensor(2.0), "b": torch.tensor(0.5)})) == 2.5


def test_uncertainty_formula_at_chosen_log_variances():
    b = build_balancer(BalancingConfig(method="uncertainty", terms=["a"]), ["a", "b"])
    assert isinstance(b, UncertaintyBalancer)
    b.log_vars.data.fill_(math.log(2.0))  # s = log 2 → weight 1/2
    total = b({"a": torch.tensor(4.0), "b": torch.tensor(1.0)})  # ½·4 + log 2, plus b unbalanced
    assert math.isclose(float(total.detach()), 2.0 + math.log(2.0) + 1.0, rel_tol=1e-6)
    assert b.factors() == {"a": pytest.approx(0.5)}


def test_log_variances_stay_in_range_so_no_weight_runs_away():
    b = UncertaintyBalancer(["tiny", "huge"], lo=-2.0, hi=1.0)
    opt = torch.optim.SGD(b.parameters(), lr=1.0)
    for _ in range(20):  # a vanishing loss drives s → −∞ unbounded, a huge one s → +∞
        opt.zero_grad()
        b({"tiny": torch.tensor(1e-6), "huge": torch.tensor(1e6)}).backward()
        opt.step()
        b.clamp_()
    s = b.log_vars.detach()
    assert float(s[0]) == -2.0 and float(s[1]) == 1.0
    factors = b.factors()
    assert factors["tiny"] == pytest.approx(math.exp(2.0)) and factors["huge"] == pytest.approx(math.exp(-1.0))
    b.log_vars.data.fill_(50.0)  # even between clamps the forward pass uses bounded values
    assert math.isclose(float(b({"huge": torch.tensor(1.0)}).detach()), math.exp(-1.0) + 1.0, rel_tol=1e-6)


def test_uncertainty_balances_every_active_term_by_default_and_rejects_unknown_ones():
    b = build_balancer(BalancingConfig(method="uncertainty"), ["cosine", "codebook"])
    assert b.names == ["cosine", "codebook"] and b.log_vars.shape == (2,)
    with pytest.raises(ValueError, match=r"unknown or inactive term\(s\) \['kl'\]; active: \['cosine'"):
        build_balancer(BalancingConfig(method="uncertainty", terms=["kl"]), ["cosine"])
    with pytest.raises(ValueError, match="log_var_min"):
        BalancingConfig(log_var_min=2, log_var_max=1)

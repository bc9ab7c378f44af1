"""Every schedule's value at chosen steps, the adaptive controller, and state round trips."""

import math

import pytest

from trainer.config import ScheduleConfig
from trainer.schedules import build_schedule, default_scheduled_term, free_bits


def sched(**kw):
    return build_schedule(ScheduleConfig(**kw))


def test_constant():
    s = sched()
    assert s(0) == s(10_000) == 1.0


def test_linear():
    s = sched(kind="linear", start=0.0, end=1.0, steps=100)
    assert [s(t) for t in (0, 25, 50, 100, 500)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    down = sched(kind="linear", start=1.0, end=0.2, steps=10)
    assert math.isclose(down(5), 0.6)


def test_cyclical_linear():
    s = sched(kind="cyclical_linear", steps=100, ramp_fraction=0.5)
    values = [s(t) for t in (0, 25, 50, 75, 99, 100, 125)]
    assert values == [0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.5]


def test_cosine():
    s = sched(kind="cosine", steps=100)
    assert s(0) == 0.0 and math.isclose(s(50), 0.5) and s(100) == 1.0 and s(1000) == 1.0
    assert math.isclose(s(25), 0.5 * (1 - math.cos(math.pi / 4)))


def test_adaptive_moves_towards_the_target_within_bounds():
    s = sched(kind="adaptive", target=1.0, window=2, rate=0.5, min_multiplier=0.5, max_multiplier=2.0)
    assert s(0) == 1.0
    s.observe(3.0)
    assert s(1) == 1.0  # the window is not full yet
    s.observe(3.0)  # mean 3 > target: the weight grows to push the term down
    assert s(2) == 1.5
    for _ in range(4):
        s.observe(5.0)
    assert s(3) == 2.0  # clamped at max_multiplier
    for _ in range(20):
        s.observe(0.1)
    assert s(4) == 0.5  # clamped at min_multiplier
    s.observe(float("nan"))  # ignored, not averaged into the window
    assert len(s.window) == 0


@pytest.mark.parametrize("kind", ["constant", "linear", "cyclical_linear", "cosine", "adaptive"])
def test_state_round_trip(kind):
    cfg = ScheduleConfig(kind=kind, window=3, steps=10)
    a = build_schedule(cfg)
    for t in range(7):
        a(t)
        a.observe(2.0 + t)
    b = build_schedule(cfg)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert b(8) == a(8)
    with pytest.raises(ValueError, match="saved schedule is"):
        build_schedule(ScheduleConfig(kind="linear" if kind != "linear" else "cosine")).load_state_dict(a.state_dict())


def test_default_terms_and_free_bits():
    assert default_scheduled_term("vae") == "kl" and default_scheduled_term("wasserstein") == "mmd"
    assert default_scheduled_term("product_vq") is None
    import torch

    assert float(free_bits(torch.tensor([0.01, 0.2]), 0.05)) == pytest.approx(0.25)

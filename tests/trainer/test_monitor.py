"""Stability verdicts, NaN handling inside the trainer, the grouped loss history and its plots."""

import json
import logging

import numpy as np
import pytest
import torch

from tests.conftest import TINY, clustered_embeddings
from trainer.config import MonitorConfig, TrainConfig
from trainer.loop import Trainer
from trainer.monitor import LossHistory, StabilityMonitor, TrainingDiverged


def test_nonfinite_skip_or_stop():
    skip = StabilityMonitor(MonitorConfig(on_nonfinite="skip", max_skips=2))
    assert skip.check(0, 1.0, 0.5) == "ok"
    assert skip.check(1, float("nan"), 0.5) == "skip"
    assert skip.check(2, 1.0, 0.5) == "ok"  # a good step resets the consecutive count
    assert skip.check(3, 1.0, float("inf")) == "skip"
    with pytest.raises(TrainingDiverged, match="2 consecutive steps skipped.*monitor.max_skips=2"):
        skip.check(4, float("nan"), 1.0)
    assert skip.skipped_total == 3
    stop = StabilityMonitor(MonitorConfig())
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 7; training stopped \(monitor.on_nonfinite"):
        stop.check(7, float("inf"), 1.0)


def test_exploding_and_vanishing_gradients_warn(caplog):
    printed = []
    mon = StabilityMonitor(MonitorConfig(explode_factor=10, vanish_below=1e-6), warn=printed.append)
    for step in range(10):
        assert mon.check(step, 1.0, 1.0) == "ok"
    with caplog.at_level(logging.WARNING):
        assert mon.check(10, 1.0, 50.0) == "ok"  # on_explode=warn: applied (clipping bounds it)
        assert mon.check(11, 1.0, 1e-9) == "ok"
        mon.check(12, 1.0, 1e-9)  # the same vanishing warning is not repeated every step
    assert [e["kind"] for e in mon.events] == ["explode", "vanish"]
    assert "exploding gradient at step 10: norm 50" in caplog.text and printed[1].startswith("vanishing")
    skipper = StabilityMonitor(MonitorConfig(explode_factor=10, on_explode="skip"))
    for step in range(10):
        skipper.check(step, 1.0, 1.0)
    assert skipper.check(10, 1.0, 100.0) == "skip"
    stopper = StabilityMonitor(MonitorConfig(explode_factor=10, on_explode="stop"))
    for step in range(10):
        stopper.check(step, 1.0, 1.0)
    with pytest.raises(TrainingDiverged, match="lower optim.lr"):
        stopper.check(10, 1.0, 100.0)


def test_history_groups_by_kind_and_writes_json_lines(tmp_path):
    kinds = {"cosine": "reconstruction", "codebook": "quantizer", "kl": "kl"}
    h = LossHistory(MonitorConfig(log_every=2, tensorboard=False), tmp_path, kinds)
    codes = np.array([[0, 1], [0, 2]])
    assert h.record(0, {"cosine": 1.0, "codebook": 0.5, "total": 1.5, "grad_norm": 2.0}, codes, 4) is None
    row = h.record(1, {"cosine": 3.0, "codebook": float("nan"), "total": 3.5, "grad_norm": 4.0}, codes, 4)
    assert row == {"step": 2, "total": 2.5, "stats": {"grad_norm": 3.0}, "codes_used": [1, 2],
                   "losses": {"reconstruction": {"cosine": 2.0}, "quantizer": {"codebook": 0.5}}}
    h.record(2, {"kl": 0.1, "total": 0.1})
    h.flush(3)  # the partial last window
    lines = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 3] and lines[1]["losses"] == {"kl": {"kl": 0.1}}
    paths = h.plot()
    assert [p.name for p in paths] == ["losses.png", "code_usage.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    h.reload(up_to_step=2)  # resume at step 2: the row of the interrupted run after it is dropped
    assert [r["step"] for r in h.rows] == [2] and len((tmp_path / "losses.jsonl").read_text().splitlines()) == 1


def test_validation_history_is_plotted_and_trimmed_on_resume(tmp_path):
    h = LossHistory(MonitorConfig(log_every=1), tmp_path, {"cosine": "reconstruction"})
    for step, r in [(5, 0.2), (10, 0.4), (15, 0.3)]:
        h.record_validation(step, {"recall_10@10": r, "recall_1@10": r + 0.3, "recall_10@100": r + 0.5,
                                   "cosine": 0.5 + r})
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val"]["recall_10@10"]) for r in lines] == [(5, 0.2), (10, 0.4), (15, 0.3)]
    paths = h.plot()  # no loss rows yet: the validation plot alone
    assert [p.name for p in paths] == ["validation.png"] and paths[0].read_bytes().startswith(b"\x89PNG")
    h.reload(up_to_step=10)  # resumed at step 10: the interrupted run's validation at 15 is dropped
    assert [r["step"] for r in h.val_rows] == [5, 10]
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 2


def test_rank_other_than_zero_writes_nothing(tmp_path):
    h = LossHistory(MonitorConfig(log_every=1), tmp_path, {"cosine": "reconstruction"}, enabled=False)
    h.record(0, {"cosine": 1.0, "total": 1.0})
    h.record_validation(1, {"recall_10@10": 0.5})
    assert h.plot() == [] and not (tmp_path / "losses.jsonl").exists() and not (tmp_path / "history.jsonl").exists()


@pytest.fixture
def nan_trainer(tmp_path):
    np.save(tmp_path / "x.npy", clustered_embeddings(256, seed=1))

    def make(**monitor):
        cfg = TrainConfig.model_validate({
            "model": TINY.model_dump(), "data": {"train": [str(tmp_path / "x.npy")]},
            "optim": {"batch_size": 64, "epochs": 2, "warmup_steps": 2},
            "quantizer": {"kmeans_samples": 256, "kmeans_iters": 2},
            "monitor": {"tensorboard": False, **monitor}, "out_dir": str(tmp_path / "run"), "threads": 1,
        })
        t = Trainer(cfg, progress=False)
        clean = t.batch
        t.batch = lambda step: clean(step) * float("nan") if step == 4 else clean(step)
        return t

    return make


def test_trainer_skips_a_nan_step_without_touching_the_weights(nan_trainer):
    t = nan_trainer(on_nonfinite="skip")
    t.init_codebooks()
    for s in range(4):
        t.train_step(s)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    values = t.train_step(4)
    assert values["skipped"] == 1.0 and np.isnan(values["total"])
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # neither the optimiser nor the EMA codebooks moved
    assert "skipped" not in t.train_step(5) and t.stability.skipped_total == 1


def test_trainer_stops_on_nan_by_default_with_a_clear_message(nan_trainer):
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 4"):
        nan_trainer().run()


def test_tensorboard_is_used_only_where_installed(tmp_path):
    import importlib.util

    h = LossHistory(MonitorConfig(log_every=1), tmp_path, {"cosine": "reconstruction"})
    assert (h.tb is not None) == (importlib.util.find_spec("tensorboard") is not None)
    h.record(0, {"cosine": 1.0, "total": 1.0})
    h.close()
    assert (tmp_path / "losses.jsonl").is_file()

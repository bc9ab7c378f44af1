"""Fitting a checkpoint's codes to one collection (trainer/fit.py, `monolith-train fit`)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import clustered_embeddings
from trainer.cli import app
from trainer.fit import FitError, FitRecipe, FitRejected, check_fitted, fit, save_fitted
from vqvae import Monolith
from vqvae.checkpoint import load_checkpoint, read_metadata

FAST = FitRecipe(epochs=2, lr=1e-3, batch_size=64, checks=4, patience=0, min_rows=200, threads=1)


def shifted(n: int = 400) -> np.ndarray:
    """A collection unlike anything the checkpoint saw: clustered rows around other centres."""
    return clustered_embeddings(n, clusters=64, seed=7)


def test_fit_improves_held_out_recall_on_a_shifted_collection(tiny_checkpoint):
    base = load_checkpoint(tiny_checkpoint)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    model, report = fit(base, shifted(), FAST, progress=False)
    assert report.rows == 400 and report.train_rows + report.held_out_rows == 400 and report.held_out_rows == 80
    assert report.best_step > 0 and not report.kept_generic
    assert max(c["recall_10@10"] for c in report.checks) == report.checks[[c["step"] for c in report.checks]
                                                                          .index(report.best_step)]["recall_10@10"]
    assert report.adapted_recall > report.generic_recall
    assert report.diff_recall == pytest.approx(report.adapted_recall - report.generic_recall)
    assert report.diff_se_recall is not None and report.diff_se_recall > 0
    assert [r["method"] for r in report.held_out_report] == ["generic", "adapted"]
    assert report.fit_seconds > 0 and report.steps == 2 * (320 // 64) and report.stopped == "epochs"
    assert report.health is not None and report.health.status != "collapsed"
    assert all(torch.equal(v, base.model.state_dict()[k]) for k, v in before.items()), "the base is not moved"
    assert model.encode(shifted(8)).shape == (8, 4)


def test_the_start_is_kept_when_no_check_beats_it(tiny_checkpoint):
    _, report = fit(tiny_checkpoint, shifted(), FAST.model_copy(update={"lr": 1e-12}), progress=False)
    assert report.kept_generic == (report.best_step == 0)
    assert report.checks[0]["step"] == 0
    best = max(report.checks, key=lambda c: c["recall_10@10"])
    assert best["recall_10@10"] >= report.checks[0]["recall_10@10"]


def test_decoder_codebooks_keeps_the_encoder(tiny_checkpoint):
    base = load_checkpoint(tiny_checkpoint)
    model, _ = fit(base, shifted(), FAST.model_copy(update={"parts": "decoder_codebooks"}), progress=False)
    enc0 = base.model.encoder.state_dict()
    assert all(torch.equal(v, enc0[k]) for k, v in model.model.encoder.state_dict().items())


def test_too_few_rows_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(FitError, match=r"199 rows are too few.*at least 200"):
        fit(tiny_checkpoint, shifted(199), FAST, progress=False)
    with pytest.raises(FitError, match="at least 1,000"):
        fit(tiny_checkpoint, shifted(500), progress=False)


def test_nan_is_rejected_with_a_reason(tiny_checkpoint):
    x = shifted()
    x[3, 5] = np.nan
    with pytest.raises(FitError, match="NaN"):
        fit(tiny_checkpoint, x, FAST, progress=False)
    model = load_checkpoint(tiny_checkpoint).model
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = float("nan")
    with pytest.raises(FitRejected, match="not finite.*decoder.0.weight") as info:
        check_fitted(model)
    assert "learning rate" in info.value.reason


def test_collapsed_codebooks_are_rejected(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint).model
    codes = np.zeros((500, 4), np.int64)
    codes[:, 1] = np.arange(500) % 16
    with pytest.raises(FitRejected, match="collapsed: head 0: 1/16"):
        check_fitted(model, codes)
    assert check_fitted(model, np.repeat((np.arange(500) % 16)[:, None], 4, 1)).status == "healthy"
    assert check_fitted(model, codes, start_codes=codes).status == "collapsed", "the rows, not the fit"


def test_cli_writes_a_checkpoint_the_loader_serves(tiny_checkpoint, tmp_path, monkeypatch):
    np.save(tmp_path / "rows.npy", shifted(500))
    out, js = tmp_path / "fitted.safetensors", tmp_path / "fit.json"
    res = CliRunner().invoke(app, ["fit", str(tmp_path / "rows.npy"), "--from", str(tiny_checkpoint), "--out", str(out),
                                   "--epochs", "2", "--batch-size", "64", "--min-rows", "200", "--threads", "1",
                                   "--baselines", "PQ4x8", "--json-out", str(js)])
    assert res.exit_code == 0, res.output
    for word in ("generic", "adapted", "PQ4x8", "Δ 10@10 ± SE", "fit seconds", "MONOLITH_CHECKPOINT"):
        assert word in res.stdout
    meta = read_metadata(out)
    fit_meta = meta["provenance"]["fit"]
    assert meta["provenance"]["fitted_from_sha256"] == load_checkpoint(tiny_checkpoint).sha256
    assert fit_meta["rows"] == 500 and fit_meta["recipe"]["epochs"] == 2 and fit_meta["fit_seconds"] > 0
    assert fit_meta["created"] and np.asarray(meta["reference_counts"]).shape == (4, 16)
    monkeypatch.setenv("MONOLITH_CHECKPOINT", str(out))
    served = Monolith.load()
    assert served.checkpoint.path == out and served.encode(shifted(4)).shape == (4, 4)
    rows = json.loads(js.read_text())["rows"]
    assert [r["method"] for r in rows] == ["generic", "adapted", "PQ4x8"]
    assert rows[0]["fit_seconds"] is None and all(r["fit_seconds"] > 0 for r in rows[1:])


def test_cli_refuses_too_few_rows_and_bad_recipes(tiny_checkpoint, tmp_path):
    np.save(tmp_path / "rows.npy", shifted(300))
    args = ["fit", str(tmp_path / "rows.npy"), "--from", str(tiny_checkpoint), "--out", str(tmp_path / "o.safetensors")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "too few" in res.stderr and "Traceback" not in res.stderr
    res = CliRunner().invoke(app, [*args, "--parts", "encoder"])
    assert res.exit_code == 2 and "parts" in res.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_save_fitted_refuses_a_model_fit_did_not_make(tiny_checkpoint, tmp_path):
    with pytest.raises(FitError):
        save_fitted(Monolith.load(tiny_checkpoint), tmp_path / "x.safetensors")

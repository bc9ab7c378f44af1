import json

import numpy as np
from typer.testing import CliRunner

from tests.conftest import TINY, clustered_embeddings
from trainer.cli import app

runner = CliRunner()


def test_train_rejects_bad_config_with_clear_error(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"data": {"train": ["x.npy"]}, "loss": {"cosine": -1}}))
    res = runner.invoke(app, ["train", str(p)])
    assert res.exit_code == 2 and "loss.cosine" in res.output


def test_train_reports_missing_data(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"data": {"train": [str(tmp_path / "missing.npy")]}}))
    res = runner.invoke(app, ["train", str(p)])
    assert res.exit_code == 2 and "missing.npy" in res.output


def test_resume_without_state_is_an_error(tmp_path):
    np.save(tmp_path / "x.npy", clustered_embeddings(256))
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"model": TINY.model_dump(), "data": {"train": [str(tmp_path / "x.npy")]},
                             "out_dir": str(tmp_path / "run")}))
    res = runner.invoke(app, ["train", str(p), "--resume"])
    assert res.exit_code == 2 and "no training state" in res.output


def test_eval_prints_report_with_baselines(tiny_checkpoint, tmp_path):
    np.save(tmp_path / "train.npy", clustered_embeddings(3000, seed=1))
    np.save(tmp_path / "db.npy", clustered_embeddings(600, seed=2))
    out = tmp_path / "rows.json"
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), "--train", str(tmp_path / "train.npy"),
                              "--set", f"toy={tmp_path / 'db.npy'}", "--baselines", "PQ4x8,OPQ4,PQ4",
                              "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["monolith", "PQ4x8", "OPQ4,PQ4"]
    assert all(0 <= r["recall_10@10"] <= 1 for r in rows)


def test_eval_rejects_unknown_baseline_and_bad_set(tiny_checkpoint, embeddings_file):
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), "--train", str(embeddings_file),
                              "--set", f"a={embeddings_file}", "--baselines", "XQ9"])
    assert res.exit_code == 2 and "unknown baseline" in res.output
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), "--train", str(embeddings_file), "--set", "nofile"])
    assert res.exit_code == 2 and "NAME=DB.npy" in res.output


def test_embed_missing_file(tmp_path):
    res = runner.invoke(app, ["embed", str(tmp_path / "none.txt"), str(tmp_path / "o.npy")])
    assert res.exit_code == 2 and "not found" in res.output

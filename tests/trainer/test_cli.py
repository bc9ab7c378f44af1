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


def test_eval_judges_several_named_checkpoints_on_joined_files(tiny_checkpoint, tmp_path):
    np.save(tmp_path / "train.npy", clustered_embeddings(3000, seed=1))
    np.save(tmp_path / "a.npy", clustered_embeddings(300, seed=2))
    np.save(tmp_path / "b.npy", clustered_embeddings(300, seed=3))
    out = tmp_path / "rows.json"
    res = runner.invoke(app, ["eval", f"one={tiny_checkpoint}", f"two={tiny_checkpoint}",
                              "--train", str(tmp_path / "train.npy"),
                              "--set", f"ab={tmp_path / 'a.npy'}+{tmp_path / 'b.npy'}", "--baselines", "PQ4x8",
                              "--n-queries", "100", "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["one", "two", "PQ4x8"]
    assert {(r["n_db"], r["n_queries"]) for r in rows} == {(500, 100)}  # 600 rows joined, 100 query the rest
    assert rows[0]["recall_10@10"] == rows[1]["recall_10@10"]  # the same checkpoint twice
    res = runner.invoke(app, ["eval", f"x={tiny_checkpoint}", f"x={tiny_checkpoint}", "--train",
                              str(tmp_path / "train.npy"), "--set", f"a={tmp_path / 'a.npy'}"])
    assert res.exit_code == 2 and "both called 'x'" in res.output


def test_embed_missing_file(tmp_path):
    res = runner.invoke(app, ["embed", str(tmp_path / "none.txt"), str(tmp_path / "o.npy")])
    assert res.exit_code == 2 and "not found" in res.output


def test_eval_nearest_adds_a_row_for_refining_checkpoints(tmp_path):
    import torch

    from vqvae import MonolithWiki, save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "r.safetensors"
    save_checkpoint(MonolithWiki(TINY), ckpt, encoding={"candidates": 4, "sweeps": 1})
    np.save(tmp_path / "train.npy", clustered_embeddings(2000, seed=1))
    np.save(tmp_path / "db.npy", clustered_embeddings(500, seed=2))
    out = tmp_path / "rows.json"
    res = runner.invoke(app, ["eval", str(ckpt), "--train", str(tmp_path / "train.npy"), "--nearest",
                              "--set", f"a={tmp_path / 'db.npy'}", "--baselines", "PQ4x8", "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    assert [r["method"] for r in json.loads(out.read_text())] == ["monolith", "monolith (nearest)", "PQ4x8"]


def test_eval_record_writes_the_report_into_the_checkpoint(tiny_checkpoint, tmp_path):
    from vqvae.checkpoint import read_metadata

    np.save(tmp_path / "train.npy", clustered_embeddings(2000, seed=1))
    np.save(tmp_path / "db.npy", clustered_embeddings(500, seed=2))
    args = ["--train", str(tmp_path / "train.npy"), "--set", f"a={tmp_path / 'db.npy'}", "--baselines", "PQ4x8"]
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), *args, "--record"])
    assert res.exit_code == 0, res.output
    report = read_metadata(tiny_checkpoint)["metrics"]["eval_report"]
    assert [r["method"] for r in report] == ["monolith", "PQ4x8"]
    res = runner.invoke(app, ["eval", f"a={tiny_checkpoint}", f"b={tiny_checkpoint}", *args, "--record"])
    assert res.exit_code == 2 and "exactly one" in res.output


def test_health_prints_per_head_statistics(tiny_checkpoint, embeddings_file, tmp_path):
    out = tmp_path / "health.json"
    res = runner.invoke(app, ["health", str(tiny_checkpoint), "--data", str(embeddings_file), "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert len(report["heads"]) == 4 and report["total_assignments"] == 4 * 2048
    assert all(0 < h["used"] <= 16 for h in report["heads"])
    res = runner.invoke(app, ["health", str(tiny_checkpoint), "--data", str(tmp_path / "none.npy")])
    assert res.exit_code == 2 and "none.npy" in res.output


def test_train_reports_missing_validation_data(tmp_path):
    np.save(tmp_path / "x.npy", clustered_embeddings(256))
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"data": {"train": [str(tmp_path / "x.npy")], "val": [str(tmp_path / "nope.npy")]},
                             "out_dir": str(tmp_path / "run")}))
    res = runner.invoke(app, ["train", str(p)])
    assert res.exit_code == 2 and "nope.npy" in res.output

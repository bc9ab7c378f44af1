import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, clustered_embeddings, real_embeddings
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


def test_eval_prints_a_fair_report_with_baselines(tiny_checkpoint, tmp_path):
    """Real embeddings; every method ranked by cosine, fitted on the same vectors, timed alike."""
    x = real_embeddings()
    np.save(tmp_path / "train.npy", x[1::2])
    np.save(tmp_path / "db.npy", x[0::2])
    out = tmp_path / "rows.json"
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), "--train", str(tmp_path / "train.npy"),
                              "--data", f"real={tmp_path / 'db.npy'}", "--n-queries", "100",
                              "--baselines", "PQ4x8", "--baselines", "PQ8x4", "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["monolith", "PQ4x8", "PQ8x4"]
    assert [r["bytes_per_vector"] for r in rows] == [4, 4, 4]
    assert [r["train_vectors"] for r in rows] == [None, 512, 512]  # the tiny checkpoint states none
    assert {(r["n_db"], r["n_queries"], r["ranking"]) for r in rows} == {(412, 100, "cosine")}
    for r in rows:
        assert 0 <= r["recall_10@10"] <= r["recall_10@100"] <= 1 and 0 <= r["ip_recall_10@10"] <= 1
        assert r["reference"] == "monolith" and r["encode_per_s"] > 0 and r["threads"] >= 1
    assert rows[0]["diff_recall_10@10"] == 0 and rows[0]["diff_se_recall_10@10"] == 0
    for r in rows[1:]:
        assert r["diff_recall_10@10"] == pytest.approx(r["recall_10@10"] - rows[0]["recall_10@10"])
        assert r["diff_se_recall_10@10"] > 0
    assert rows[1]["codes_used"] > 0 and rows[2].get("codes_used") is None  # 4-bit codes: no per-head usage
    table = res.stdout
    for column in ("bytes", "fit on", "Δ 10@10 ± SE", "10@10 IP", "encode/s", "PQ8x4", "reference"):
        assert column in table
    assert "baselines: 512" in table and "paired standard error" in table


def test_eval_baseline_cache_fits_once_and_reads_back_the_same_index(tiny_checkpoint, tmp_path):
    x = real_embeddings()
    np.save(tmp_path / "train.npy", x[1::2])
    np.save(tmp_path / "db.npy", x[0::2])
    cache = tmp_path / "cache"

    def run(name):
        res = runner.invoke(app, ["eval", str(tiny_checkpoint), "--train", str(tmp_path / "train.npy"),
                                  "--data", f"real={tmp_path / 'db.npy'}", "--n-queries", "100",
                                  "--baselines", "PQ4x8", "--baseline-cache", str(cache),
                                  "--json-out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        return json.loads((tmp_path / name).read_text())

    first = run("a.json")
    (saved,) = cache.glob("PQ4x8-512-*.faiss")
    stamp = saved.stat().st_mtime_ns
    second = run("b.json")
    assert saved.stat().st_mtime_ns == stamp, "read back, not fitted again"
    assert first[1]["recall_10@10"] == second[1]["recall_10@10"]


def test_eval_without_baselines(tiny_checkpoint, embeddings_file):
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), "--train", str(embeddings_file),
                              "--data", f"a={embeddings_file}", "--baselines", "none", "--n-queries", "50"])
    assert res.exit_code == 0, res.output
    assert "monolith" in res.stdout and "PQ" not in res.stdout


def test_eval_rejects_unknown_baseline_and_bad_data(tiny_checkpoint, embeddings_file):
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), "--train", str(embeddings_file),
                              "--data", f"a={embeddings_file}", "--baselines", "XQ9"])
    assert res.exit_code == 2 and "unknown baseline" in res.output
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), "--train", str(embeddings_file), "--data", "nofile"])
    assert res.exit_code == 2 and "NAME=DB.npy" in res.output


def test_eval_judges_several_named_checkpoints_on_joined_files(tiny_checkpoint, tmp_path):
    np.save(tmp_path / "train.npy", clustered_embeddings(3000, seed=1))
    np.save(tmp_path / "a.npy", clustered_embeddings(300, seed=2))
    np.save(tmp_path / "b.npy", clustered_embeddings(300, seed=3))
    out = tmp_path / "rows.json"
    res = runner.invoke(app, ["eval", f"one={tiny_checkpoint}", f"two={tiny_checkpoint}",
                              "--train", str(tmp_path / "train.npy"),
                              "--data", f"ab={tmp_path / 'a.npy'}+{tmp_path / 'b.npy'}", "--baselines", "PQ4x8",
                              "--n-queries", "100", "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["one", "two", "PQ4x8"]
    assert {(r["n_db"], r["n_queries"]) for r in rows} == {(500, 100)}  # 600 rows joined, 100 query the rest
    assert rows[0]["recall_10@10"] == rows[1]["recall_10@10"]  # the same checkpoint twice
    res = runner.invoke(app, ["eval", f"x={tiny_checkpoint}", f"x={tiny_checkpoint}", "--train",
                              str(tmp_path / "train.npy"), "--data", f"a={tmp_path / 'a.npy'}"])
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
                              "--data", f"a={tmp_path / 'db.npy'}", "--baselines", "PQ4x8", "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    assert [r["method"] for r in json.loads(out.read_text())] == ["monolith", "monolith (nearest)", "PQ4x8"]


def test_eval_encoding_adds_a_row_per_search_setting(tiny_checkpoint, tmp_path):
    np.save(tmp_path / "train.npy", clustered_embeddings(2000, seed=1))
    np.save(tmp_path / "db.npy", clustered_embeddings(500, seed=2))
    out = tmp_path / "rows.json"
    args = ["eval", str(tiny_checkpoint), "--train", str(tmp_path / "train.npy"), "--data", f"a={tmp_path / 'db.npy'}",
            "--baselines", "none", "--json-out", str(out)]
    res = runner.invoke(app, [*args, "--encoding", "0:1", "--encoding", "4:2"])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["monolith", "monolith (nearest)", "monolith (4x2)"]
    assert rows[2]["cosine"] >= rows[1]["cosine"]  # the search never lowers a row's cosine (unit vectors)
    for bad in ("8", "x:2", "8:0", "300:1"):
        res = runner.invoke(app, [*args, "--encoding", bad])
        assert res.exit_code == 2 and "an encoding is CANDIDATES:SWEEPS" in res.output, bad


def test_eval_record_writes_the_report_into_the_checkpoint(tiny_checkpoint, tmp_path):
    from vqvae.checkpoint import read_metadata

    np.save(tmp_path / "train.npy", clustered_embeddings(2000, seed=1))
    np.save(tmp_path / "db.npy", clustered_embeddings(500, seed=2))
    args = ["--train", str(tmp_path / "train.npy"), "--data", f"a={tmp_path / 'db.npy'}", "--baselines", "PQ4x8"]
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), *args, "--record"])
    assert res.exit_code == 0, res.output
    metrics = read_metadata(tiny_checkpoint)["metrics"]
    report = metrics["eval_report"]
    assert [r["method"] for r in report] == ["monolith", "PQ4x8"]
    assert metrics["eval_baselines"] == ["PQ4x8"] and metrics["eval_train_vectors"] == 2000
    assert metrics["eval_ranking"] == "cosine" and "diff_se_recall_10@10" in report[1]
    json.dumps(metrics, allow_nan=False)  # the /model card serves it as strict JSON
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


def test_eval_takes_its_sets_by_data_and_set_only_means_a_config_override(tiny_checkpoint, embeddings_file):
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), "--train", str(embeddings_file),
                              "--set", f"a={embeddings_file}"])
    assert res.exit_code == 2 and "--set" in res.output  # no such option on eval
    res = runner.invoke(app, ["eval", str(tiny_checkpoint), "--train", str(embeddings_file), "--data", "nofile"])
    assert res.exit_code == 2 and "--data takes NAME=DB.npy" in res.stderr


def test_train_set_overrides_a_config_field(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"data": {"train": ["x.npy"]}}))
    res = runner.invoke(app, ["train", str(p), "--set", "loss.cosine=-1"])
    assert res.exit_code == 2 and "loss.cosine" in res.stderr
    res = runner.invoke(app, ["train", str(p), "--set", "nokey"])
    assert res.exit_code == 2 and "--set takes KEY.PATH=VALUE" in res.stderr


def test_failures_are_one_error_line_on_stderr_and_exit_2(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"data": {"train": ["x.npy"]}, "loss": {"cosine": -1, "cosin": 1}}))
    for args in (["train", str(p)], ["embed", str(tmp_path / "none.txt"), str(tmp_path / "o.npy")],
                 ["health", str(tmp_path / "no.safetensors"), "--data", str(tmp_path / "x.npy")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, args
        assert res.stdout == "" and isinstance(res.exception, SystemExit)  # typer.Exit(2), not a crash
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert "Traceback" not in res.output
    res = runner.invoke(app, ["train", str(p)])
    assert "invalid config: loss.cosine" in res.stderr and "; loss.cosin" in res.stderr  # both fields, one line


def test_results_go_to_stdout(tiny_checkpoint, embeddings_file):
    res = runner.invoke(app, ["health", str(tiny_checkpoint), "--data", str(embeddings_file)])
    assert res.exit_code == 0, res.output
    assert "codebook health" in res.stdout and res.stderr == ""


def _run_config(tmp_path):
    np.save(tmp_path / "x.npy", clustered_embeddings(512, seed=1))
    np.save(tmp_path / "v.npy", clustered_embeddings(256, seed=2))
    p = tmp_path / "c.json"
    p.write_text(json.dumps({
        "model": TINY.model_dump(), "data": {"train": [str(tmp_path / "x.npy")], "val": [str(tmp_path / "v.npy")]},
        "optim": {"batch_size": 128, "epochs": 2, "warmup_steps": 2}, "quantizer": {"kmeans_samples": 512},
        "eval_every": 4, "checkpoint_every": 4, "out_dir": str(tmp_path / "run"), "threads": 1,
        "monitor": {"plots": False, "tensorboard": False},
    }))
    return p


def test_train_into_an_existing_run_is_refused_unless_overwrite(tmp_path):
    """Issue 12: a second `train` into the same out_dir used to replace best.safetensors and
    append a second run to history.jsonl; now it needs --resume or --overwrite."""
    config = _run_config(tmp_path)
    run = tmp_path / "run"
    first = runner.invoke(app, ["train", str(config)])
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert "best.safetensors" in before and "history.jsonl" in before

    again = runner.invoke(app, ["train", str(config)])
    assert again.exit_code == 2
    lines = again.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--resume" in lines[0] and "--overwrite" in lines[0]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # untouched

    both = runner.invoke(app, ["train", str(config), "--resume", "--overwrite"])
    assert both.exit_code == 2 and "pass one of them" in both.stderr

    over = runner.invoke(app, ["train", str(config), "--overwrite"])
    assert over.exit_code == 0, over.output
    steps = [json.loads(line)["step"] for line in (run / "history.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "two runs mixed in history.jsonl"

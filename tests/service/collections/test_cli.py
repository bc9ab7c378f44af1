"""monolith-collection: builds the same files the server serves, and fails with clear messages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import service.collections.cli as cli
from service.collections.binding import StoreModel
from service.collections.store import Store
from tests.service.collections.test_routes import FakeEmbedder
from tests.service.conftest import AppFactory, unit_rows
from vqvae.api import Monolith

runner = CliRunner()


@pytest.fixture(autouse=True)
def preloaded(monkeypatch: pytest.MonkeyPatch, monolith: Monolith) -> None:
    """Every command gets the session's model instead of loading the checkpoint again."""
    monkeypatch.setattr(cli, "_load_model", lambda checkpoint: monolith)


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli.app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    x = unit_rows(40, seed=7)
    paths = {"npy": tmp_path / "x.npy", "ids": tmp_path / "ids.txt", "meta": tmp_path / "meta.jsonl"}
    np.save(paths["npy"], x)
    paths["ids"].write_text("".join(f"doc-{i}\n" for i in range(40)))
    paths["meta"].write_text("".join((json.dumps({"n": i}) if i % 2 else "") + "\n" for i in range(40)))
    return paths


def test_build_from_npy_then_the_server_serves_it(
    files: dict[str, Path], tmp_path: Path, monolith: Monolith, make_client: AppFactory
) -> None:
    data = tmp_path / "data"
    code, out = run("build", "docs", "--npy", str(files["npy"]), "--ids", str(files["ids"]),
                    "--metadata", str(files["meta"]), "--data-dir", str(data), "--batch-size", "16",
                    "--description", "from npy")
    assert code == 0, out
    assert "holds 40 items" in out
    x = np.load(files["npy"])
    col = Store(data, StoreModel.from_monolith(monolith)).get("docs")
    item = col.get("doc-3")
    assert item.codes == monolith.encode(x[3:4])[0].tolist() and item.metadata == {"n": 3}
    assert col.get("doc-4").metadata is None

    client = make_client(data_dir=data)
    info = client.get("/collections/docs").json()
    assert info["count"] == 40 and info["description"] == "from npy"
    resp = client.post("/collections/docs/search", json={"embeddings": x[:2].tolist(), "k": 3})
    assert resp.status_code == 200 and all(len(r) == 3 for r in resp.json()["results"])

    code, out = run("list", "--data-dir", str(data))
    assert code == 0 and "docs" in out and "40" in out
    code, out = run("search", "docs", "--npy", str(files["npy"]), "-k", "2", "--data-dir", str(data))
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 40 and all(len(line["hits"]) == 2 for line in lines)


def test_rebuild_upserts_and_recreate_starts_over(files: dict[str, Path], tmp_path: Path, monolith: Monolith) -> None:
    data = str(tmp_path / "data")
    assert run("build", "docs", "--npy", str(files["npy"]), "--data-dir", data)[0] == 0
    assert run("build", "docs", "--npy", str(files["npy"]), "--data-dir", data)[0] == 0  # same ids again
    store = Store(tmp_path / "data", StoreModel.from_monolith(monolith))
    assert len(store.get("docs")) == 40 and store.get("docs").get("0") is not None
    assert run("build", "docs", "--npy", str(files["npy"]), "--ids", str(files["ids"]), "--recreate",
               "--data-dir", data)[0] == 0
    assert store.get("docs").get("0") is None and len(store.get("docs")) == 40
    code, out = run("delete", "docs", "--yes", "--data-dir", data)
    assert code == 0 and store.names() == []


def test_build_from_texts(tmp_path: Path, monolith: Monolith, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEmbedder()
    monkeypatch.setattr(monolith, "embed_text", lambda texts: fake.embed(list(texts)))
    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat\na dog ran\nstocks fell\n")
    code, out = run("build", "t", "--texts", str(texts), "--data-dir", str(tmp_path / "data"))
    assert code == 0, out
    item = Store(tmp_path / "data", StoreModel.from_monolith(monolith)).get("t").get("1")
    assert item.text == "a dog ran" and item.codes == monolith.encode(fake.embed(["a dog ran"]))[0].tolist()
    texts.write_text("ok\n\nalso ok\n")
    code, out = run("build", "t2", "--texts", str(texts), "--data-dir", str(tmp_path / "data"))
    assert code == 2 and "t.txt:2: empty line" in out


def test_clear_errors(files: dict[str, Path], tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    bad_shape = tmp_path / "bad.npy"
    np.save(bad_shape, np.zeros((3, 10), np.float32))
    nan = tmp_path / "nan.npy"
    arr = unit_rows(3)
    arr[1, 0] = np.nan
    np.save(nan, arr)
    short_ids = tmp_path / "short.txt"
    short_ids.write_text("a\nb\n")
    dup_ids = tmp_path / "dup.txt"
    dup_ids.write_text("".join(f"{i % 39}\n" for i in range(40)))
    npy = str(files["npy"])
    cases = [
        (["build", "docs", "--data-dir", data], "exactly one of --npy or --texts"),
        (["build", "docs", "--npy", npy, "--texts", npy, "--data-dir", data], "exactly one"),
        (["build", "docs", "--npy", str(tmp_path / "missing.npy"), "--data-dir", data], "not found"),
        (["build", "docs", "--npy", str(bad_shape), "--data-dir", data], "[N, 384]"),
        (["build", "docs", "--npy", str(nan), "--data-dir", data], "NaN"),
        (["build", "docs", "--npy", npy, "--ids", str(short_ids), "--data-dir", data], "2 ids but there are 40"),
        (["build", "docs", "--npy", npy, "--ids", str(dup_ids), "--data-dir", data], "repeats line"),
        (["build", "../etc", "--npy", npy, "--data-dir", data], "invalid collection name"),
        (["search", "nope", "--npy", npy, "--data-dir", data], "not found"),
        (["delete", "nope", "--yes", "--data-dir", data], "not found"),
    ]
    for args, fragment in cases:
        code, out = run(*args)
        assert code != 0, (args, out)
        assert fragment in " ".join(out.split()), (args, out)
    assert not list((tmp_path / "data" / "collections").glob("*.sqlite3")) or run("list", "--data-dir", data)[0] == 0


def test_failures_are_one_line_on_stderr_with_status_2(files: dict[str, Path], tmp_path: Path) -> None:
    """Like monolith-train: exit 2, ``error: <message>`` on stderr and nothing else; no traceback."""
    data = str(tmp_path / "data")
    for args in (["build", "docs", "--data-dir", data],
                 ["build", "../etc", "--npy", str(files["npy"]), "--data-dir", data],
                 ["search", "nope", "--text", "x", "--data-dir", data],
                 ["delete", "nope", "--yes", "--data-dir", data]):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stdout == "", args
        *_, last = result.stderr.splitlines()  # progress bars may come first
        assert last.startswith("error: ") and result.stderr.count("error") == 1, (args, result.stderr)
        assert "Traceback" not in result.output


def test_results_go_to_stdout(files: dict[str, Path], tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    result = runner.invoke(cli.app, ["build", "docs", "--npy", str(files["npy"]), "--data-dir", data])
    assert result.exit_code == 0 and "holds 40 items" in result.stdout and "holds" not in result.stderr
    result = runner.invoke(cli.app, ["delete", "docs", "--data-dir", data], input="n\n")
    assert result.exit_code == 2 and "not deleted" in result.stderr
    result = runner.invoke(cli.app, ["delete", "docs", "--yes", "--data-dir", data])
    assert result.exit_code == 0 and result.stdout == "deleted 'docs'\n"


def test_build_reports_progress_as_it_goes(files: dict[str, Path], tmp_path: Path, monolith: Monolith,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar moves every PROGRESS_ROWS items, not once per committed batch; it is on stderr."""
    monkeypatch.setattr(cli, "PROGRESS_ROWS", 8)
    seen: list[int] = []
    encode = monolith.encode
    monkeypatch.setattr(monolith, "encode", lambda x: seen.append(len(x)) or encode(x))
    result = runner.invoke(cli.app, ["build", "docs", "--npy", str(files["npy"]), "--batch-size", "32",
                                     "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert seen == [8, 8, 8, 8, 8]  # 40 items: 32 + 8 committed, encoded 8 at a time
    assert "loading the model" in result.stderr and "40/40" in result.stderr
    assert result.stdout.startswith("done: 'docs' holds 40 items")
    item = Store(tmp_path / "data", StoreModel.from_monolith(monolith)).get("docs").get("39")
    assert item.codes == encode(np.load(files["npy"])[39:40])[0].tolist()


def test_list_shows_checkpoint_mismatch(tmp_path: Path, monolith: Monolith) -> None:
    other = dataclasses.replace(StoreModel.from_monolith(monolith), sha256="e" * 64, weights_sha256="d" * 64)
    Store(tmp_path / "data", other).create("old")
    code, out = run("list", "--data-dir", str(tmp_path / "data"))
    flat = " ".join(out.split())
    assert code == 0 and "old" in flat and f"encoded with checkpoint sha256 {'e' * 64}" in flat

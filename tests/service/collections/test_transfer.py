"""Export and import: a round trip searches identically; another checkpoint's file is a 409;
a truncated, altered or foreign file is a 422 that leaves nothing behind; the CLI does the same.
A fitted collection's export carries its own model, so it imports on any server."""

from __future__ import annotations

import base64
import copy
import dataclasses
import gzip
import hashlib
import io
import json
import sqlite3
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import service.collections.cli as cli
from service.collections import files, fitted, transfer, vectors
from service.collections.binding import StoreModel
from service.collections.errors import CheckpointMismatch, InvalidExport
from service.collections.store import Store
from tests.service.collections.test_routes import FakeEmbedder
from tests.service.conftest import AppFactory, unit_rows
from vqvae.api import Monolith
from vqvae.checkpoint import save_checkpoint

QUERIES = ["text number 7", "something else", "number 120"]


@pytest.fixture
def client(make_client: AppFactory) -> TestClient:
    c = make_client(embedder=FakeEmbedder())
    assert c.put("/collections/docs", json={"description": "the docs"}).status_code == 201
    texts = [{"id": f"doc{i:03d}", "text": f"text number {i}", "metadata": {"tag": f"t{i % 7}", "n": i}}
             for i in range(250)]
    x = unit_rows(30, seed=5)
    vectors = [{"id": f"vec/{i}", "embedding": r.tolist(), "metadata": {"tag": "v", "é": [1, {"a": None}]}}
               for i, r in enumerate(x)]
    assert c.post("/collections/docs/items", json={"items": texts + vectors}).status_code == 200
    # deletes move rows around (swap with last): the export must keep the resulting order
    c.post("/collections/docs/items/delete", json={"ids": [f"doc{i:03d}" for i in range(0, 250, 9)]})
    return c


def export(client: TestClient, name: str = "docs") -> bytes:
    resp = client.get(f"/collections/{name}/export")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/gzip"
    assert f'filename="{name}.monolith.gz"' in resp.headers["content-disposition"]
    return resp.content


def results(client: TestClient, name: str, **extra) -> list:
    out = []
    for candidates in (0, 40):
        resp = client.post(f"/collections/{name}/search", json={"texts": QUERIES, "k": 50, "candidates": candidates,
                                                                **extra})
        assert resp.status_code == 200, resp.text
        out.append(resp.json())
    return out


def listing(client: TestClient, name: str) -> list[dict]:
    return client.get(f"/collections/{name}/items", params={"limit": 1000}).json()["items"]


def lines(blob: bytes) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(blob).splitlines()]


def rewrite(blob: bytes, edit, fix_checksum: bool = True) -> bytes:
    """The export with its JSON lines edited (and its checksum recomputed, unless told not to)."""
    rows = lines(blob)
    edit(rows)
    body = b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode() for r in rows[:-1])
    trailer = rows[-1]
    if fix_checksum and "sha256" in trailer:
        trailer = {**trailer, "sha256": hashlib.sha256(body).hexdigest()}
    return gzip.compress(body + (json.dumps(trailer) + "\n").encode())


def test_round_trip_searches_identically(client: TestClient, monolith: Monolith) -> None:
    blob = export(client)
    rows = lines(blob)
    header, items, trailer = rows[0], rows[1:-1], rows[-1]
    assert header["format"] == "monolith-collection" and header["format_version"] == 3 and header["vectors"] == "int8"
    assert header["model_file"] is None and header["fit_meta"] == {"auto_fit": "true"}
    assert header["checkpoint_sha256"] == monolith.sha256 and header["count"] == len(items) == 252
    assert header["description"] == "the docs" and header["num_heads"] == 4
    assert trailer["end"] is True and trailer["count"] == 252
    assert set(items[0]) == {"id", "codes", "metadata", "text", "vector"}

    resp = client.post("/collections/copy/import", content=blob, headers={"Content-Type": "application/gzip"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["imported"] == 252 and body["replaced"] is False
    assert body["collection"]["count"] == 252 and body["collection"]["description"] == "the docs"
    assert results(client, "copy") == results(client, "docs")
    assert results(client, "copy", filter={"tag": "t3"}) == results(client, "docs", filter={"tag": "t3"})
    assert listing(client, "copy") == listing(client, "docs")
    # and the copy exports to the same items again
    assert lines(export(client, "copy"))[1:-1] == rows[1:-1]


def test_import_into_an_existing_collection_needs_replace(client: TestClient) -> None:
    blob = export(client)
    client.put("/collections/other")
    client.post("/collections/other/items", json={"items": [{"id": "x", "text": "old"}]})
    resp = client.post("/collections/other/import", content=blob)
    assert resp.status_code == 409 and "replace=true" in resp.json()["detail"]
    assert listing(client, "other")[0]["id"] == "x"
    resp = client.post("/collections/other/import", params={"replace": "true"}, content=blob)
    assert resp.status_code == 200 and resp.json()["replaced"] is True
    assert listing(client, "other") == listing(client, "docs")


def test_another_checkpoints_export_is_409(client: TestClient) -> None:
    blob = rewrite(export(client), lambda rows: rows[0].update(weights_sha256="f" * 64))
    resp = client.post("/collections/copy/import", content=blob)
    assert resp.status_code == 409
    assert "f" * 64 in resp.json()["detail"] and "another" in resp.json()["detail"]
    assert client.get("/collections/copy").status_code == 404


def test_exports_bind_to_the_weights_and_older_ones_to_the_file(client: TestClient) -> None:
    """An export names the weights: the file's sha256 may have changed since (metadata recorded).
    One from before weights_sha256 existed is judged by the file sha256 it names."""
    header = json.loads(gzip.decompress(export(client)).split(b"\n", 1)[0])
    assert header["weights_sha256"] == client.get("/model").json()["weights_sha256"]
    other_file = rewrite(export(client), lambda rows: rows[0].update(checkpoint_sha256="e" * 64))
    assert client.post("/collections/copy1/import", content=other_file).status_code == 201
    older = rewrite(export(client), lambda rows: rows[0].pop("weights_sha256"))
    assert client.post("/collections/copy2/import", content=older).status_code == 201
    older_other = rewrite(export(client), lambda rows: (rows[0].pop("weights_sha256"),
                                                        rows[0].update(checkpoint_sha256="e" * 64)))
    assert client.post("/collections/copy3/import", content=older_other).status_code == 409
    assert listing(client, "copy1") == listing(client, "copy2") == listing(client, "docs")


def corruptions(blob: bytes) -> dict[str, bytes]:
    raw = gzip.decompress(blob)
    middle = len(blob) // 2
    return {
        "truncated gzip": blob[: len(blob) - 30],
        "truncated at half": blob[:middle],
        "flipped byte": blob[:middle] + bytes([blob[middle] ^ 0xFF]) + blob[middle + 1 :],
        "altered item": gzip.compress(raw.replace(b'"text number 7"', b'"text number 8"', 1)),
        "dropped item": rewrite(blob, lambda rows: rows.pop(5), fix_checksum=False),
        "lines cut off": gzip.compress(raw[: raw.rindex(b"\n", 0, len(raw) - 1) + 1]),
        "count mismatch": rewrite(blob, lambda rows: rows[0].update(count=3)),
        "extra data": gzip.compress(raw + b'{"id": "late"}\n'),
        "duplicate id": rewrite(blob, lambda rows: rows[2].update(id=rows[1]["id"])),
        "bad codes": rewrite(blob, lambda rows: rows[1].update(codes=[1, 2, 3])),
        "code out of range": rewrite(blob, lambda rows: rows[1].update(codes=[1, 2, 3, 256])),
        "metadata not an object": rewrite(blob, lambda rows: rows[1].update(metadata=[1])),
        "newer format": rewrite(blob, lambda rows: rows[0].update(format_version=99)),
        "not an export": gzip.compress(b'{"hello": "world"}\n'),
        "not gzip": raw,
        "garbage": b"\x00\x01garbage",
    }


def test_truncated_altered_or_foreign_files_are_422_and_leave_nothing(client: TestClient, tmp_path: Path) -> None:
    blob = export(client)
    before = sorted(p.name for p in (tmp_path / "data" / "collections").iterdir())
    for what, bad in corruptions(blob).items():
        resp = client.post("/collections/copy/import", content=bad)
        assert resp.status_code == 422, (what, resp.text)
        assert "not a valid Monolith collection export" in resp.json()["detail"], what
        assert client.get("/collections/copy").status_code == 404, what
    assert sorted(p.name for p in (tmp_path / "data" / "collections").iterdir()) == before  # no leftovers
    assert client.post("/collections/copy/import", content=b"").status_code == 422
    assert client.post("/collections/bad%20name/import", content=blob).status_code == 422
    # with replace=true a bad file leaves the existing collection as it was
    items = listing(client, "docs")
    bad = corruptions(blob)["flipped byte"]
    resp = client.post("/collections/docs/import", params={"replace": "true"}, content=bad)
    assert resp.status_code == 422 and listing(client, "docs") == items


def test_imported_items_obey_the_servers_limits(make_client: AppFactory, client: TestClient) -> None:
    blob = export(client)
    strict = make_client(embedder=FakeEmbedder(), max_id_chars=5, data_dir=client.app.state.service.settings.data_dir)
    resp = strict.post("/collections/copy/import", content=blob)
    assert resp.status_code == 422 and "MONOLITH_MAX_ID_CHARS" in resp.json()["detail"]


def test_export_and_import_of_unknown_collections(client: TestClient) -> None:
    assert client.get("/collections/nope/export").status_code == 404


def test_export_while_writing_is_one_consistent_snapshot(client: TestClient) -> None:
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            batch = [{"id": f"w{n}-{j}", "text": "w"} for j in range(25)]
            client.post("/collections/docs/items", json={"items": batch})
            client.post("/collections/docs/items/delete", json={"ids": [f"doc{(n * 7) % 250:03d}"]})
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        blobs = [export(client) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    for i, blob in enumerate(blobs):
        resp = client.post(f"/collections/snap{i}/import", content=blob)
        assert resp.status_code == 201, resp.text
        assert resp.json()["imported"] == lines(blob)[0]["count"]


def test_cli_export_import_round_trip(client: TestClient, tmp_path: Path, monolith: Monolith,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_load_model", lambda checkpoint: monolith)
    runner = CliRunner()
    data = str(tmp_path / "data")
    out = tmp_path / "docs.monolith.gz"
    res = runner.invoke(cli.app, ["export", "docs", "-o", str(out), "--data-dir", data])
    assert res.exit_code == 0, res.output
    assert "exported 'docs': 252 items" in res.stdout
    res = runner.invoke(cli.app, ["import", str(out), "--data-dir", data])  # the name in the file: exists
    assert res.exit_code == 2 and "already exists" in res.output
    res = runner.invoke(cli.app, ["import", str(out), "--name", "fromcli", "--data-dir", data])
    assert res.exit_code == 0, res.output
    assert results(client, "fromcli") == results(client, "docs")
    res = runner.invoke(cli.app, ["import", str(out), "--data-dir", data, "--replace"])
    assert res.exit_code == 0 and "replaced" in res.stdout
    bad = tmp_path / "bad.gz"
    bad.write_bytes(out.read_bytes()[:-40])
    res = runner.invoke(cli.app, ["import", str(bad), "--name", "bad", "--data-dir", data])
    assert res.exit_code == 2 and "error: not a valid Monolith collection export" in res.output
    assert "Traceback" not in res.output
    # the server sees what the CLI imported
    assert client.get("/collections/fromcli").json()["count"] == 252


def test_export_file_is_written_atomically(client: TestClient, tmp_path: Path) -> None:
    col = client.app.state.service.store.get("docs")
    out = tmp_path / "x.monolith.gz"
    size = transfer.export_to_file(col.path, "docs", out)
    assert size == out.stat().st_size and lines(out.read_bytes())[0]["count"] == 252
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".x")] == []


def test_a_partitioned_collection_keeps_its_lists(make_client: AppFactory) -> None:
    """An IVF collection's settings and trained lists travel in the header: the copy is
    partitioned the same way and answers probed (and filtered) searches identically."""
    c = make_client(embedder=FakeEmbedder())
    resp = c.put("/collections/ivf", json={"index": {"kind": "ivf", "lists": 4, "train_at": 256}})
    assert resp.status_code == 201, resp.text
    body = {"items": [{"id": f"p{i}", "text": f"text {i}", "metadata": {"tag": f"t{i % 5}"}} for i in range(400)]}
    assert c.post("/collections/ivf/items", json=body).status_code == 200
    info = c.get("/collections/ivf").json()["index"]
    assert info["kind"] == "ivf" and info["trained"] is True
    blob = export(c, "ivf")
    assert set(lines(blob)[0]["collection_meta"]) == {"index", "ivf_centroids"}
    assert c.post("/collections/ivfcopy/import", content=blob).status_code == 201
    assert c.get("/collections/ivfcopy").json()["index"] == info
    for extra in ({"probe": 1}, {"probe": 1, "filter": {"tag": "t2"}}, {}):
        query = {"texts": QUERIES, "k": 20, "candidates": 0, **extra}
        a = c.post("/collections/ivf/search", json=query).json()
        assert a == c.post("/collections/ivfcopy/search", json=query).json(), extra
    # settings that make no index are refused like any other damage
    bad = rewrite(blob, lambda rows: rows[0]["collection_meta"].update(index='{"kind": "nope"}'))
    resp = c.post("/collections/bad/import", content=bad)
    assert resp.status_code == 422 and "collection_meta" in resp.json()["detail"]
    bad = rewrite(blob, lambda rows: rows[0]["collection_meta"].update(other="x"))
    assert c.post("/collections/bad/import", content=bad).status_code == 422
    assert c.get("/collections/bad").status_code == 404


# ---- fitted collections: the model travels -----------------------------------------------------


def perturbed_checkpoint(monolith: Monolith, out: Path, seed: int = 1) -> Path:
    """The shipped model with slightly moved weights (so other weights_sha256 and other codes),
    saved as a fit saves its model: a stand-in for a real fit, which takes far longer."""
    model = copy.deepcopy(monolith.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and param.numel() > 1:
                param.add_(torch.randn(param.shape, generator=gen) * 0.05 * float(param.std()))
    provenance = {"fitted_from": monolith.sha256, "fitted_from_weights_sha256": monolith.weights_sha256,
                  "fit": {"rows": 252, "created": "2024-01-01T00:00:00+00:00", "recipe": {"seed": seed}}}
    return save_checkpoint(model, out, provenance=provenance)


def fit_in_place(store: Store, name: str, checkpoint: Path) -> str:
    """Switch ``name`` to the model in ``checkpoint`` as a fit does (``fitting.FitJobs._apply``):
    the model installed first, then every code re-encoded and the model named in one transaction."""
    col = store.get(name)
    sha = fitted.install(col.path, checkpoint)
    own = fitted.load(col.path, sha)
    with col.switching() as conn, files.transaction(conn):
        rows = conn.execute("SELECT id, vector FROM items ORDER BY slot").fetchall()
        assert all(r[1] is not None for r in rows)
        x = vectors.unpack(col.vector_kind, [r[1] for r in rows], col.model.input_dim)
        codes = own.encode(x, progress=False)
        conn.executemany("UPDATE items SET codes = ? WHERE id = ?",
                         [(c.tobytes(), r[0]) for c, r in zip(codes, rows, strict=True)])
        report = {"rows": len(rows), "applied": True, "adapted_recall": 0.9, "current_recall": 0.8}
        meta = {"weights_sha256": sha, fitted.META_KEY: sha, "fitted_rows": str(len(rows)),
                "fit_attempt_rows": str(len(rows)), fitted.REPORT_KEY: json.dumps(report)}
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items())
    fitted.prune(col.path, sha)
    assert store.get(name).model.weights_sha256 == sha
    return sha


def store_of(client: TestClient) -> Store:
    return client.app.state.service.store


def models_in(store: Store, name: str) -> list[str]:
    folder = fitted.models_dir(store.path(name))
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def fitted_client(client: TestClient, monolith: Monolith, tmp_path: Path) -> tuple[TestClient, str]:
    sha = fit_in_place(store_of(client), "docs", perturbed_checkpoint(monolith, tmp_path / "own.safetensors"))
    assert sha != monolith.weights_sha256
    return client, sha


def test_a_fitted_collection_carries_its_model(fitted_client: tuple[TestClient, str], monolith: Monolith) -> None:
    client, sha = fitted_client
    blob = export(client)
    rows = lines(blob)
    header = rows[0]
    assert header["format_version"] == 3 and header["weights_sha256"] == sha
    assert header["fit_meta"][fitted.META_KEY] == sha and header["fit_meta"]["fitted_rows"] == "252"
    assert header["model_file"]["weights_sha256"] == sha
    chunks = [r for r in rows[1:-1] if "model_chunk" in r]
    model_bytes = b"".join(base64.b64decode(r["base64"]) for r in chunks)
    assert len(model_bytes) == header["model_file"]["bytes"]
    assert hashlib.sha256(model_bytes).hexdigest() == header["model_file"]["sha256"]
    assert model_bytes == fitted.model_path(store_of(client).path("docs"), sha).read_bytes()
    assert [r["model_chunk"] for r in chunks] == list(range(len(chunks)))
    assert rows[1] is chunks[0] and len(rows) == 2 + len(chunks) + 252  # header, model, items, trailer

    resp = client.post("/collections/copy/import", content=blob)
    assert resp.status_code == 201, resp.text
    info, original = resp.json()["collection"], client.get("/collections/docs").json()
    assert info["weights_sha256"] == original["weights_sha256"] == sha
    assert info["fit"]["model"]["weights_sha256"] == sha and info["fit"] == original["fit"]
    assert info["fit"]["model"]["fitted_from_weights_sha256"] == monolith.weights_sha256
    assert info["checkpoint_sha256"] == original["checkpoint_sha256"]
    assert models_in(store_of(client), "copy") == [f"{sha}.safetensors"]
    assert store_of(client).get("copy").encoder.weights_sha256 == sha
    assert results(client, "copy") == results(client, "docs")
    assert results(client, "copy", filter={"tag": "t3"}) == results(client, "docs", filter={"tag": "t3"})
    assert listing(client, "copy") == listing(client, "docs")
    assert lines(export(client, "copy"))[1:-1] == rows[1:-1]  # the same model and items again


def test_an_altered_model_is_422_and_leaves_nothing(fitted_client: tuple[TestClient, str], monolith: Monolith,
                                                      tmp_path: Path) -> None:
    client, sha = fitted_client
    blob = export(client)
    shipped = Path(monolith.checkpoint.path).read_bytes()

    def carry(data: bytes, header_too: bool = True):
        def edit(rows: list[dict]) -> None:
            rows[:] = [r for r in rows if "model_chunk" not in r]
            rows[1:1] = [{"model_chunk": i, "base64": base64.b64encode(data[o:o + transfer.MODEL_CHUNK]).decode()}
                         for i, o in enumerate(range(0, len(data), transfer.MODEL_CHUNK))]
            if header_too:
                rows[0]["model_file"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        return edit

    def flip(rows: list[dict]) -> None:
        raw = bytearray(base64.b64decode(rows[1]["base64"]))
        raw[len(raw) // 2] ^= 0xFF
        rows[1]["base64"] = base64.b64encode(bytes(raw)).decode()

    other = perturbed_checkpoint(monolith, tmp_path / "other.safetensors", seed=7).read_bytes()
    bad = {
        "flipped model byte": rewrite(blob, flip),
        "another model, its sha256 given": rewrite(blob, carry(other)),
        "the server's model, its sha256 given": rewrite(blob, carry(shipped)),
        "not a checkpoint, its sha256 given": rewrite(blob, carry(b"\x00" * 5000)),
        "model cut short": rewrite(blob, carry(other[:-100], header_too=False)),
        "model lines dropped": rewrite(blob, lambda rows: rows.__setitem__(slice(None),
                                                                        [r for r in rows if "model_chunk" not in r])),
        "no model_file": rewrite(blob, lambda rows: rows[0].update(model_file=None)),
        "model_file of other weights": rewrite(blob, lambda rows: rows[0]["model_file"].update(
            weights_sha256="a" * 64)),
        "codes of other weights": rewrite(blob, lambda rows: rows[0].update(weights_sha256="a" * 64)),
        "model without fitted_model": rewrite(blob, lambda rows: rows[0]["fit_meta"].pop(fitted.META_KEY)),
        "foreign fit row": rewrite(blob, lambda rows: rows[0]["fit_meta"].update(other="x")),
        "checksum not fixed": rewrite(blob, flip, fix_checksum=False),
    }
    root = store_of(client).root
    before = sorted(p.name for p in root.iterdir())
    for what, data in bad.items():
        resp = client.post("/collections/copy/import", content=data)
        assert resp.status_code == 422, (what, resp.text)
        assert "not a valid Monolith collection export" in resp.json()["detail"], what
        assert client.get("/collections/copy").status_code == 404, what
    assert sorted(p.name for p in root.iterdir()) == before  # no staged files, no models folder
    # replace=true with a bad file leaves the fitted collection and its model as they were
    items = listing(client, "docs")
    resp = client.post("/collections/docs/import", params={"replace": "true"}, content=bad["flipped model byte"])
    assert resp.status_code == 422 and listing(client, "docs") == items
    assert models_in(store_of(client), "docs") == [f"{sha}.safetensors"]


def test_a_version_2_export_still_imports(client: TestClient) -> None:
    def older(rows: list[dict]) -> None:
        rows[0].update(format_version=2)
        rows[0].pop("fit_meta")
        rows[0].pop("model_file")

    resp = client.post("/collections/v2/import", content=rewrite(export(client), older))
    assert resp.status_code == 201, resp.text
    assert resp.json()["collection"]["fit"] is None
    assert results(client, "v2") == results(client, "docs")
    assert listing(client, "v2") == listing(client, "docs")


def test_a_fitted_export_imports_where_another_checkpoint_is_served(
    fitted_client: tuple[TestClient, str], monolith: Monolith, tmp_path: Path
) -> None:
    """The point of carrying the model: the codes are bound to it, not to the exporter's base."""
    client, sha = fitted_client
    blob = export(client)
    plain = rewrite(blob, lambda rows: rows[0].update(format_version=2))  # ignores its model: the codes are sha's
    served = dataclasses.replace(StoreModel.from_monolith(monolith), sha256="e" * 64, weights_sha256="f" * 64,
                                 earlier_sha256=())
    store = Store(tmp_path / "elsewhere", served)
    try:
        with pytest.raises(CheckpointMismatch):
            transfer.import_collection(store, "plain", io.BytesIO(plain))
        col, count, created = transfer.import_collection(store, "copy", io.BytesIO(blob))
        assert count == 252 and created and col.model.weights_sha256 == sha and col.encoder is not None
        info = col.info()
        assert info.weights_sha256 == sha and info.fit["model"]["weights_sha256"] == sha
        original = store_of(client).get("docs")
        x = unit_rows(5, seed=11)
        z = original.encoder.search_latent(x)
        for args in ((10, 0), (10, 40)):
            a, _ = original.search(z, x, *args)
            b, _ = col.search(col.encoder.search_latent(x), x, *args)
            assert [[(h.id, h.score) for h in row] for row in a] == [[(h.id, h.score) for h in row] for row in b]
        # replace=true over it with another fitted model: the old model file goes
        other = tmp_path / "other.safetensors"
        second = fit_in_place(store_of(client), "docs", perturbed_checkpoint(monolith, other, seed=3))
        col, _, created = transfer.import_collection(store, "copy", io.BytesIO(export(client)), replace=True)
        assert not created and col.model.weights_sha256 == second
        assert models_in(store, "copy") == [f"{second}.safetensors"]
    finally:
        store.close()
    reopened = Store(tmp_path / "elsewhere", served)  # the model is on disk beside the file
    try:
        assert reopened.get("copy").model.weights_sha256 == second
    finally:
        reopened.close()


def test_replacing_a_fitted_collection_removes_its_model(fitted_client: tuple[TestClient, str],
                                                         monolith: Monolith, tmp_path: Path) -> None:
    client, sha = fitted_client
    fitted_blob = export(client)
    assert client.put("/collections/plain").status_code == 201
    client.post("/collections/plain/items", json={"items": [{"id": "a", "text": "a text"}]})
    plain_blob = export(client, "plain")
    assert client.post("/collections/copy/import", content=fitted_blob).status_code == 201
    resp = client.post("/collections/copy/import", params={"replace": "true"}, content=plain_blob)
    assert resp.status_code == 200, resp.text
    assert resp.json()["collection"]["fit"] is None and models_in(store_of(client), "copy") == []
    assert not fitted.models_dir(store_of(client).path("copy")).exists()
    # and back: a plain collection replaced by a fitted one gets its model
    resp = client.post("/collections/copy/import", params={"replace": "true"}, content=fitted_blob)
    assert resp.status_code == 200 and resp.json()["collection"]["weights_sha256"] == sha
    assert models_in(store_of(client), "copy") == [f"{sha}.safetensors"]
    assert results(client, "copy") == results(client, "docs")


def test_install_checks_the_model_it_is_given(fitted_client: tuple[TestClient, str], monolith: Monolith,
                                              tmp_path: Path) -> None:
    """``Store.install`` itself refuses a fitted file without its model, or with another one."""
    client, sha = fitted_client
    store = store_of(client)
    src = store.path("docs")
    for model_file in (None, Path(monolith.checkpoint.path)):
        built = store.staging_path("copy")
        src_conn = files.connect(src, "FULL", readonly=True)
        dst_conn = sqlite3.connect(built)
        try:
            src_conn.backup(dst_conn)
        finally:
            src_conn.close()
            dst_conn.close()
        with pytest.raises(InvalidExport):
            store.install("copy", built, model_file=model_file)
        assert not built.exists() and not store.path("copy").exists()
        assert not fitted.models_dir(store.path("copy")).exists()
    assert store.get("docs").model.weights_sha256 == sha  # the source is untouched

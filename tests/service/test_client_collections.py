"""The Python clients against the real app: every collection route, typed results, chunked and
resumable upserts with progress, filtered search, listing, export/import; the async twin too."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.client import (
    AsyncMonolithClient,
    CollectionInfo,
    Hit,
    Item,
    MonolithClient,
    MonolithError,
    SearchResults,
)
from service.settings import Settings
from tests.service.collections.test_routes import FakeEmbedder
from tests.service.conftest import AppFactory, unit_rows, wait_ready
from vqvae.api import Monolith


class AppTransport(httpx.BaseTransport):
    """The TestClient's in-process transport, as a plain httpx transport for our client."""

    def __init__(self, client: TestClient) -> None:
        self.inner = client._transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        return httpx.Response(resp.status_code, headers=resp.headers, content=resp.read())


class Failing(httpx.BaseTransport):
    """Passes requests on until ``fail_after`` upserts went through, then drops the connection."""

    def __init__(self, inner: httpx.BaseTransport, fail_after: int) -> None:
        self.inner, self.left = inner, fail_after
        self.upserts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/items"):
            if self.left == 0:
                raise httpx.ReadError("connection dropped", request=request)
            self.left -= 1
            self.upserts += 1
        return self.inner.handle_request(request)


@pytest.fixture
def app_client(make_client: AppFactory) -> TestClient:
    return make_client(embedder=FakeEmbedder())


@pytest.fixture
def mc(app_client: TestClient) -> Iterator[MonolithClient]:
    with MonolithClient("http://testserver", transport=AppTransport(app_client)) as client:
        yield client


def test_collections_lifecycle(mc: MonolithClient, monolith: Monolith) -> None:
    info = mc.create_collection("docs", description="d")
    assert isinstance(info, CollectionInfo) and info.count == 0 and info.checkpoint_sha256 == monolith.sha256
    assert mc.create_collection("docs").description == "d"
    assert [c.name for c in mc.list_collections()] == ["docs"]
    assert mc.get_collection("docs").status == "ok"
    mc.delete_collection("docs")
    with pytest.raises(MonolithError) as err:
        mc.get_collection("docs")
    assert err.value.status == 404
    with pytest.raises(MonolithError) as err:
        mc.create_collection("bad name")
    assert err.value.status == 422


def test_upsert_in_chunks_with_progress_then_search_and_read(mc: MonolithClient, monolith: Monolith) -> None:
    mc.create_collection("docs")
    x = unit_rows(230, seed=1)
    ids = [f"e{i}" for i in range(230)]
    metas = [{"lang": ["en", "de"][i % 2], "year": 2000 + i % 25} for i in range(230)]
    seen: list[tuple[int, int]] = []
    res = mc.upsert("docs", ids, embeddings=x, metadata=metas, batch_size=50,
                    progress=lambda done, total: seen.append((done, total)))
    assert (res.upserted, res.inserted, res.updated, res.skipped, res.count) == (230, 230, 0, 0, 230)
    assert seen == [(50, 230), (100, 230), (150, 230), (200, 230), (230, 230)]

    hits = mc.search("docs", embeddings=x[:3], k=5, candidates=0, filter={"lang": "de", "year": {"gte": 2020}})
    assert isinstance(hits, SearchResults) and len(hits) == 3 and hits.metric in ("latent_cosine", "neg_sq_l2")
    for row in hits:
        assert len(row) == 5 and all(isinstance(h, Hit) for h in row)
        assert all(h.metadata["lang"] == "de" and h.metadata["year"] >= 2020 for h in row)
    one = mc.search("docs", embeddings=x[7], k=1, candidates=0)  # a single query
    assert one[0][0].id == "e7"
    assert mc.search("docs", embeddings=x[:1], k=3, score_threshold=2.0).results == [[]]

    item = mc.get_item("docs", "e3")
    assert isinstance(item, Item) and item.codes == monolith.encode(x[3:4])[0].tolist() and item.metadata == metas[3]
    assert mc.get_item("docs", "nope") is None
    got = mc.get_items("docs", ["e1", "nope", "e0"])
    assert [g.id if g else None for g in got] == ["e1", None, "e0"]

    page = mc.list_items("docs", limit=100)
    assert len(page.items) == 100 and page.next_cursor
    listed = list(mc.iter_items("docs", page_size=64))
    assert sorted(i.id for i in listed) == sorted(ids) and len(listed) == 230

    gone = mc.delete_items("docs", ["e1", "e2", "nope"])
    assert gone.deleted == ["e1", "e2"] and gone.missing == ["nope"]
    assert mc.get_collection("docs").count == 228


def test_partitioned_collection_create_train_and_probe(mc: MonolithClient) -> None:
    info = mc.create_collection("ivf", index={"kind": "ivf", "lists": 4})
    assert info.index["kind"] == "ivf" and info.index["trained"] is False
    x = unit_rows(200, seed=3)
    mc.upsert("ivf", [f"v{i}" for i in range(200)], embeddings=x)
    trained = mc.train("ivf", lists=4)
    assert trained.index["trained"] is True and trained.index["lists"] == 4
    assert mc.get_collection("ivf").index == trained.index
    everywhere = mc.search("ivf", embeddings=x[:2], k=5, candidates=0, probe=4)  # every list: exhaustive
    mc.create_collection("flat")
    mc.upsert("flat", [f"v{i}" for i in range(200)], embeddings=x)
    assert [[h.id for h in row] for row in everywhere] == [
        [h.id for h in row] for row in mc.search("flat", embeddings=x[:2], k=5, candidates=0)]
    assert len(mc.search("ivf", embeddings=x[:2], k=5, probe=1)[0]) == 5
    assert mc.get_collection("flat").index == {"kind": "flat"}
    with pytest.raises(MonolithError) as err:
        mc.train("flat")
    assert err.value.status == 422 and "flat" in str(err.value)
    assert mc.delete_item("flat", "v1") is True
    assert mc.delete_item("flat", "v1") is False
    assert mc.get_collection("flat").count == 199

def test_upsert_texts_and_resume_after_a_failure(app_client: TestClient) -> None:
    texts = [f"sentence {i}" for i in range(120)]
    ids = [f"t{i}" for i in range(120)]
    failing = Failing(AppTransport(app_client), fail_after=2)
    with MonolithClient("http://testserver", transport=failing, retries=0) as client:
        client.create_collection("notes")
        with pytest.raises(MonolithError):
            client.upsert("notes", ids, texts=texts, batch_size=25)
        assert client.get_collection("notes").count == 50  # two chunks were written
    with MonolithClient("http://testserver", transport=AppTransport(app_client)) as client:
        res = client.upsert("notes", ids, texts=texts, batch_size=25, skip_existing=True)
        assert (res.skipped, res.inserted, res.count) == (50, 70, 120)
        again = client.upsert("notes", ids, texts=[*texts[:-1], "changed"], batch_size=25, skip_existing=True)
        assert (again.skipped, again.updated) == (119, 1)  # only the changed text is sent again
        hits = client.search("notes", texts=["sentence 5"], k=1, candidates=0)
        assert hits[0][0].id == "t5" and hits[0][0].text == "sentence 5"


def test_upsert_splits_to_fit_the_body_limit(make_client: AppFactory) -> None:
    app_client = make_client(max_body_bytes=64 * 1024)  # ~8 embeddings a request
    with MonolithClient("http://testserver", transport=AppTransport(app_client)) as client:
        client.create_collection("docs")
        res = client.upsert("docs", [str(i) for i in range(40)], embeddings=unit_rows(40, seed=2))
        assert res.inserted == 40


def test_bad_arguments_fail_before_sending(mc: MonolithClient) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        mc.upsert("docs", ["a"])
    with pytest.raises(ValueError, match="2 embeddings for 1 ids"):
        mc.upsert("docs", ["a"], embeddings=unit_rows(2))
    with pytest.raises(TypeError):
        mc.upsert("docs", "abc", texts=["a", "b", "c"])
    with pytest.raises(ValueError, match="no queries"):
        mc.search("docs", texts=[])


def test_server_errors_are_monolith_errors(mc: MonolithClient) -> None:
    mc.create_collection("docs")
    mc.upsert("docs", ["a"], embeddings=unit_rows(1))
    with pytest.raises(MonolithError) as err:
        mc.search("docs", embeddings=unit_rows(1), filter={"a": {"regex": "x"}})
    assert err.value.status == 422 and "valid operators" in str(err.value)
    with pytest.raises(MonolithError) as err:
        mc.upsert("nope", ["a"], embeddings=unit_rows(1))
    assert err.value.status == 404


def test_export_import_round_trip_through_the_client(mc: MonolithClient, tmp_path: Path) -> None:
    mc.create_collection("docs")
    mc.upsert("docs", [f"d{i}" for i in range(60)], texts=[f"text {i}" for i in range(60)],
              metadata=[{"n": i} for i in range(60)])
    path = tmp_path / "docs.monolith.gz"
    size = mc.export_collection("docs", path)
    assert size == path.stat().st_size > 0
    buf = io.BytesIO()
    assert mc.export_collection("docs", buf) > 0
    res = mc.import_collection("copy", path)
    assert res.imported == 60 and not res.replaced and res.collection.count == 60
    q = dict(texts=["text 3", "text 40"], k=10, candidates=20)
    assert mc.search("copy", **q) == mc.search("docs", **q)
    with pytest.raises(MonolithError) as err:
        mc.import_collection("copy", buf.getvalue())
    assert err.value.status == 409
    assert mc.import_collection("copy", buf.getvalue(), replace=True).replaced
    with pytest.raises(MonolithError) as err:
        mc.import_collection("other", path.read_bytes()[:-50])
    assert err.value.status == 422
    with pytest.raises(MonolithError) as err:
        mc.export_collection("nope", tmp_path / "nope.gz")
    assert err.value.status == 404 and not (tmp_path / "nope.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "docs.monolith.gz"]  # no partial files


def test_async_client_covers_the_same_api(monolith: Monolith, tmp_path: Path) -> None:
    """The async twin, with the app's lifespan run in the test's own event loop."""

    async def main() -> None:
        app = create_app(Settings(data_dir=tmp_path / "data", load_text_model=False), monolith=monolith,
                         embedder=FakeEmbedder())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with AsyncMonolithClient("http://app", transport=transport) as client:
                for _ in range(200):
                    if await client.ready():
                        break
                    await asyncio.sleep(0.05)
                assert (await client.create_collection("docs")).name == "docs"
                seen = []
                res = await client.upsert("docs", [f"a{i}" for i in range(30)], texts=[f"t {i}" for i in range(30)],
                                          metadata=[{"odd": i % 2 == 1} for i in range(30)], batch_size=8,
                                          progress=lambda d, t: seen.append(d))
                assert res.inserted == 30 and seen == [8, 16, 24, 30]
                hits = await client.search("docs", texts=["t 3"], k=5, filter={"odd": True}, candidates=0)
                assert hits[0][0].id == "a3" and all(h.metadata["odd"] for h in hits[0])
                assert (await client.get_item("docs", "a4")).text == "t 4"
                assert [i.id for i in await client.get_items("docs", ["a1", "x"]) if i] == ["a1"]
                ids = [item.id async for item in client.iter_items("docs", page_size=7)]
                assert sorted(ids) == sorted(f"a{i}" for i in range(30))
                assert (await client.list_items("docs", limit=5)).next_cursor is not None
                assert (await client.delete_items("docs", ["a0"])).deleted == ["a0"]
                buf = io.BytesIO()
                await client.export_collection("docs", buf)
                imported = await client.import_collection("copy", buf.getvalue())
                assert imported.imported == 29
                assert [c.name for c in await client.list_collections()] == ["copy", "docs"]
                assert (await client.get_collection("copy")).count == 29
                await client.delete_collection("copy")
                with pytest.raises(MonolithError) as err:
                    await client.get_collection("copy")
                assert err.value.status == 404

    asyncio.run(main())


def test_progress_bar_needs_tqdm_only_when_asked(mc: MonolithClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    mc.create_collection("docs")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        mc.upsert("docs", ["a", "b"], embeddings=unit_rows(2), progress=True)
    assert "2/2" in err.getvalue()
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    with pytest.raises(ImportError, match="pip install tqdm"):
        mc.upsert("docs", ["a"], embeddings=unit_rows(1), progress=True)
    assert mc.upsert("docs", ["c"], embeddings=unit_rows(1)).inserted == 1


def test_wait_ready_helper_still_works(make_client: AppFactory) -> None:
    assert wait_ready(make_client()).status_code == 200
    assert np.asarray([1]).size == 1


def test_readme_example_runs_against_a_real_server(server: str, tmp_path: Path) -> None:
    """README's 5,000-text example, on every 17th sentence (the text model is slow on 2 cores),
    run as a user would after the Quickstart install (`pip install -e .`, which provides
    `service.client`), from a folder outside the repository, against `python -m service`."""
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Python client"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "5,000" in code and 'filter={"subject"' in code
    assert "\nfrom service.client import MonolithClient" in code  # what the Quickstart install provides
    code = code.replace("http://127.0.0.1:8000", server)
    code = code.replace("rows = list(itertools.product(subjects, verbs, objects))",
                        "rows = list(itertools.product(subjects, verbs, objects))[::17]")
    script = tmp_path / "example.py"
    script.write_text(code)
    # No PYTHONPATH and a working directory outside the repository: only the installed packages.
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("stored 295 items")
    assert len(lines) >= 4 and all(re.match(r"\d\.\d{3}  s\d+  ", line) for line in lines[1:])
    assert "'subject': 'A farmer'" in out.stdout

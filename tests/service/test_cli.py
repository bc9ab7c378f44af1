"""monolith-serve: flags over MONOLITH_* over defaults, and failures the way monolith-train
fails (exit 2, one ``error:`` line on stderr, no traceback)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from service import cli

runner = CliRunner()


def test_cli_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict = {}

    def fake_run(app, **kwargs) -> None:  # uvicorn.run: record instead of serving
        captured["settings"] = app.state.service.settings
        captured.update(kwargs)

    monkeypatch.setattr(cli.uvicorn, "run", fake_run)
    monkeypatch.setenv("MONOLITH_PORT", "9001")
    monkeypatch.setenv("MONOLITH_MAX_BATCH", "77")
    monkeypatch.setenv("MONOLITH_API_KEY", "from-env")
    result = runner.invoke(cli.cli, ["--port", "9002", "--no-text-model", "--batch-wait-ms", "0"])
    assert result.exit_code == 0, result.output
    settings = captured["settings"]
    assert captured["port"] == 9002 and settings.port == 9002
    assert settings.max_batch == 77 and settings.api_key == "from-env"
    assert settings.load_text_model is False and settings.batch_wait_ms == 0


def test_cli_rejects_invalid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    result = runner.invoke(cli.cli, ["--port", "70000"])
    assert result.exit_code != 0
    assert "port" in result.output


@pytest.mark.parametrize(
    "args,env,fragment",
    [
        (["--port", "70000"], {}, "port: Input should be less than or equal to 65535"),
        ([], {"MONOLITH_MAX_BATCH": "many"}, "max_batch: Input should be a valid integer"),
        (["--log-level", "loud"], {}, "log_level: 'loud' is not one of debug, info"),
    ],
    ids=["flag", "environment", "log level"],
)
def test_bad_settings_fail_with_one_line(monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str],
                                         fragment: str) -> None:
    monkeypatch.setattr(cli.uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = runner.invoke(cli.cli, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr


def test_server_that_cannot_start_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def port_in_use(*args, **kwargs) -> None:  # what uvicorn does after logging the bind error
        raise SystemExit(1)

    monkeypatch.setattr(cli.uvicorn, "run", port_in_use)
    result = runner.invoke(cli.cli, ["--port", "9003", "--no-text-model"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "error: the server could not start on 127.0.0.1:9003 (uvicorn exit status 1; its log above says why)")
    assert "Traceback" not in result.output

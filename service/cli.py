"""``monolith-serve`` / ``python -m service``: run the HTTP API under uvicorn.

Flags override ``MONOLITH_*`` environment variables, which override the defaults in
``service.settings.Settings``. A flag left out is not passed on, so the environment still
applies to it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from pydantic import ValidationError

from service.cli_errors import fail
from service.server import configure_logging, uvicorn_options
from service.settings import Settings

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")  # what logging and uvicorn both accept

cli = typer.Typer(add_completion=False, help=__doc__)


def _opt(help_text: str, *flags: str) -> Any:
    return typer.Option(*flags, help=help_text, show_default=False)


@cli.command()
def serve(
    checkpoint: Annotated[Path | None, _opt("Checkpoint file [MONOLITH_CHECKPOINT; default: shipped]")] = None,
    fallback_checkpoint: Annotated[
        Path | None, _opt("Loaded with a warning if the checkpoint fails [MONOLITH_FALLBACK_CHECKPOINT]")
    ] = None,
    text_model: Annotated[
        Path | None, _opt("Local sentence-transformers folder [MONOLITH_TEXT_MODEL; default: bundled MiniLM]")
    ] = None,
    encode_candidates: Annotated[
        int | None,
        _opt("Codes per head tried by decoder-aware encoding; 0: nearest codes, fastest "
             "[MONOLITH_ENCODE_CANDIDATES; default: the checkpoint's]"),
    ] = None,
    load_text_model: Annotated[
        bool | None,
        _opt("Load the text model (needed for texts) [MONOLITH_LOAD_TEXT_MODEL; default: yes]",
             "--load-text-model/--no-text-model"),
    ] = None,
    data_dir: Annotated[Path | None, _opt("Collections folder [MONOLITH_DATA_DIR; default: ./data]")] = None,
    host: Annotated[str | None, _opt("Bind address [MONOLITH_HOST; default: 127.0.0.1]")] = None,
    port: Annotated[int | None, _opt("Port [MONOLITH_PORT; default: 8000]")] = None,
    workers: Annotated[int | None, _opt("Worker processes, each with its own model [MONOLITH_WORKERS]")] = None,
    api_key: Annotated[
        str | None, _opt("Require 'Authorization: Bearer <key>' [MONOLITH_API_KEY; prefer the env var]")
    ] = None,
    max_batch: Annotated[int | None, _opt("Most rows per request [MONOLITH_MAX_BATCH]")] = None,
    max_body_bytes: Annotated[int | None, _opt("Largest request body [MONOLITH_MAX_BODY_BYTES]")] = None,
    max_text_chars: Annotated[int | None, _opt("Longest text [MONOLITH_MAX_TEXT_CHARS]")] = None,
    batch_wait_ms: Annotated[float | None, _opt("Micro-batch wait [MONOLITH_BATCH_WAIT_MS]")] = None,
    batch_max_size: Annotated[int | None, _opt("Micro-batch rows cap [MONOLITH_BATCH_MAX_SIZE]")] = None,
    queue_limit: Annotated[int | None, _opt("Pending requests before 503 [MONOLITH_QUEUE_LIMIT]")] = None,
    torch_threads: Annotated[
        int | None, _opt("Torch threads for batches of 256+ rows; 0: torch's default [MONOLITH_TORCH_THREADS]")
    ] = None,
    log_level: Annotated[str | None, _opt("debug, info, warning, error [MONOLITH_LOG_LEVEL]")] = None,
) -> None:
    """Start the Monolith HTTP server."""
    overrides = {k: v for k, v in locals().items() if v is not None}
    settings = _settings(overrides)
    configure_logging(settings.log_level)  # before service.app is imported: faiss logs as it loads
    log.info("starting on %s:%d (workers=%d)", settings.host, settings.port, settings.workers)
    common: dict[str, Any] = uvicorn_options(settings)  # the connection limits (service.server)
    try:
        if settings.workers == 1:
            from service.app import create_app

            uvicorn.run(create_app(settings), **common)
            return
        # Worker processes build their own app from the environment: hand the flags on there.
        for key, value in overrides.items():
            os.environ[f"MONOLITH_{key.upper()}"] = str(value)
        uvicorn.run("service.app:create_app_from_env", factory=True, workers=settings.workers, **common)
    except SystemExit as exc:
        if exc.code:  # uvicorn has logged why, e.g. the port is in use
            fail(f"the server could not start on {settings.host}:{settings.port} "
                 f"(uvicorn exit status {exc.code}; its log above says why)")
        raise


def _settings(overrides: dict[str, Any]) -> Settings:
    """Settings from flags over ``MONOLITH_*``, or a one-line error naming what is wrong."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        fail(_explain(exc))
    if settings.log_level.upper() not in LOG_LEVELS:
        fail(f"log_level: {settings.log_level!r} is not one of {', '.join(level.lower() for level in LOG_LEVELS)}")
    return settings


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def main() -> None:
    cli()


if __name__ == "__main__":
    main()

"""The model card, built once from the checkpoint's metadata when the model loads."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from service.schemas import Limits, ModelCard, ModelRef
from service.settings import Settings
from vqvae.api import Monolith


def service_version() -> str:
    try:
        return importlib.metadata.version("monolith")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def model_ref(monolith: Monolith) -> ModelRef:
    """Name, version and checksums. The version is the one training recorded in the provenance,
    else the weights' checksum prefix: codes are only comparable between identical weights."""
    meta = monolith.metadata
    version = _dict(meta.get("provenance")).get("version") or _dict(meta.get("training")).get("version")
    return ModelRef(
        name=monolith.checkpoint.path.stem,
        version=str(version) if version else monolith.weights_sha256[:12],
        sha256=monolith.sha256,
        weights_sha256=monolith.weights_sha256,
    )


def model_card(monolith: Monolith, settings: Settings, text_model: str | None) -> ModelCard:
    meta = monolith.metadata
    ref = model_ref(monolith)
    try:
        format_version: int | None = int(meta.get("format_version", ""))
    except ValueError:
        format_version = None
    return ModelCard(
        name=ref.name,
        version=ref.version,
        architecture=monolith.config.architecture,
        sha256=ref.sha256,
        weights_sha256=ref.weights_sha256,
        checkpoint=str(monolith.checkpoint.path),
        format_version=format_version,
        config=monolith.config.model_dump(),
        bytes_per_vector=monolith.config.bytes_per_vector,
        encoding=monolith.encoding.model_dump(),
        provenance=_dict(meta.get("provenance")),
        training=_dict(meta.get("training")),
        metrics=_dict(meta.get("metrics")),
        has_reference_counts="reference_counts" in meta,
        text_model=text_model,
        service_version=service_version(),
        limits=Limits(
            max_batch=settings.max_batch,
            max_body_bytes=settings.max_body_bytes,
            max_text_chars=settings.max_text_chars,
        ),
    )

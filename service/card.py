"""The model card, built once from the checkpoint's metadata when the model loads."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
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


def _public(value: Any) -> Any:
    """``value`` with every absolute path replaced by its last part: the card is served to
    clients, and where files lie on the server is none of their business (a checkpoint trained
    elsewhere may record absolute data paths in its provenance)."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and len(value) > 1:
        return Path(value).name
    return value


def recall_by_test_set(metrics: dict[str, Any]) -> dict[str, float]:
    """recall 10@10 by eval set of the checkpoint's own encoding: the first ``monolith`` row of
    each set in ``metrics.eval_report`` ("(nearest)" and other variants are named in brackets)."""
    out: dict[str, float] = {}
    rows = metrics.get("eval_report")
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or row.get("kind") != "monolith" or "(" in str(row.get("method", "")):
            continue
        value = row.get("recall_10@10")
        if isinstance(value, int | float) and isinstance(row.get("set"), str):
            out.setdefault(row["set"], float(value))
    return out


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
    metrics = _dict(meta.get("metrics"))
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
        checkpoint=monolith.checkpoint.path.name,
        format_version=format_version,
        config=monolith.config.model_dump(),
        bytes_per_vector=monolith.config.bytes_per_vector,
        encoding=monolith.encoding.model_dump(),
        provenance=_public(_dict(meta.get("provenance"))),
        training=_public(_dict(meta.get("training"))),
        metrics=_public(metrics),
        metrics_split="validation",
        test_recall=recall_by_test_set(metrics),
        has_reference_counts="reference_counts" in meta,
        text_model=Path(text_model).name if text_model else None,
        service_version=service_version(),
        limits=Limits(
            max_batch=settings.max_batch,
            max_body_bytes=settings.max_body_bytes,
            max_text_chars=settings.max_text_chars,
        ),
    )

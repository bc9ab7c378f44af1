"""Checkpoints: one ``.safetensors`` file, weights plus JSON metadata; nothing is unpickled."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from vqvae.config import ModelConfig
from vqvae.model import MonolithWiki
from vqvae.registry import build_model

log = logging.getLogger(__name__)

FORMAT = "monolith"
FORMAT_VERSION = 1
# Metadata keys stored as JSON strings (safetensors metadata is str → str).
JSON_KEYS = ("model_config", "provenance", "metrics", "reference_counts", "training", "encoding", "earlier_sha256")
# sha256 of the tensor data (names, dtypes, shapes, bytes; see tensors_sha256), written at save
# and verified at load: a header can be intact while a weight is not (a bit flip, a bad copy).
CHECKSUM_KEY = "tensors_sha256"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the model it claims to be."""


@dataclass
class Checkpoint:
    model: MonolithWiki | nn.Module  # MonolithWiki (product_vq) or a vqvae.bottlenecks model
    config: ModelConfig
    path: Path
    sha256: str  # of the file: changes when metadata is recorded (record_metadata)
    metadata: dict[str, Any] = field(default_factory=dict)
    # of the tensors (tensors_sha256): the weights' identity, and so the codes'. Collections bind
    # to it, so recording an evaluation report into the file does not orphan them.
    weights_sha256: str = ""
    # the file sha256s this file had before metadata was recorded into it: collections made
    # before weights_sha256 existed recorded one of those, and are still this model's
    earlier_sha256: tuple[str, ...] = ()

    @property
    def produces_codes(self) -> bool:
        """False for vae/wasserstein checkpoints: a float latent, nothing to encode to bytes."""
        return self.config.produces_codes


def made_by(recorded: Mapping[str, Any], weights_sha256: str, sha256: str, earlier_sha256: Sequence[str]) -> bool:
    """Whether codes ``recorded`` as made by a model (a collection's meta, an export's header, a
    bulk job's record) are the model with these checksums': by the weights' checksum, or, for
    records written before it was recorded, by the checkpoint file's sha256 then or since."""
    weights = recorded.get("weights_sha256")
    if weights:
        return bool(weights == weights_sha256)
    return recorded.get("checkpoint_sha256") in (sha256, *earlier_sha256)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def check_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Refuse weights that are not the ones saved (checksum) or not finite (NaN/Inf); returns
    their checksum, which older files that stored none get computed."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"{path}: tensor {name} holds {bad} NaN or Inf values of {t.numel()}; a model with "
                "non-finite weights answers NaN. The file is corrupt, or was saved from a diverged run"
            )
    actual = tensors_sha256(tensors)
    recorded = meta.get(CHECKSUM_KEY)
    if recorded is None:
        log.warning("checkpoint %s has no %s (saved by an older Monolith): its weights cannot be verified; "
                    "re-save it with vqvae.checkpoint.record_metadata to add one", path, CHECKSUM_KEY)
    elif actual != recorded:
        raise CheckpointError(
            f"{path}: its weights do not match the checksum stored when it was saved "
            f"({CHECKSUM_KEY} {recorded[:12]}…, the data gives {actual[:12]}…): the file is corrupt "
            "(a bit flip or a damaged copy). Restore it from a good copy"
        )
    return actual


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; checkpoints are shared read-only files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(model: MonolithWiki | nn.Module, path: Path, **extra: Any) -> Path:
    """Save weights with the model config and any of ``provenance``, ``metrics``,
    ``reference_counts`` or ``training`` (JSON-serialisable) in the metadata."""
    unknown = set(extra) - set(JSON_KEYS)
    if unknown:
        raise ValueError(f"unknown checkpoint metadata {sorted(unknown)}; valid: {list(JSON_KEYS[1:])}")
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    meta["model_config"] = model.config.model_dump_json()
    # Readable without parsing the config: vae/wasserstein checkpoints hold no codebooks.
    meta["bottleneck"] = model.config.bottleneck
    meta["produces_codes"] = "true" if model.config.produces_codes else "false"
    for key, value in extra.items():
        if value is not None:
            meta[key] = json.dumps(value)
    state = model.state_dict()
    meta[CHECKSUM_KEY] = tensors_sha256(state)
    atomic_save_tensors(state, path, meta)
    return Path(path)


def record_metadata(path: Path, **entries: Any) -> Path:
    """Rewrite a checkpoint (atomically) with JSON metadata entries added or replaced.

    For facts learnt after training, such as the evaluation report next to faiss; the weights
    are copied unchanged, so the file's checksum changes but its codes do not. The old file
    checksum joins ``earlier_sha256``, so what was bound to it still finds this model.
    """
    ckpt = load_checkpoint(path)
    keep = {k: ckpt.metadata[k] for k in JSON_KEYS[1:] if k in ckpt.metadata}
    earlier = list(dict.fromkeys([*ckpt.earlier_sha256, ckpt.sha256]))
    return save_checkpoint(ckpt.model, path, **{**keep, **entries, "earlier_sha256": earlier})


def read_metadata(path: Path) -> dict[str, Any]:
    """The parsed metadata of a checkpoint, without building the model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not safetensors): {exc}") from exc
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a Monolith checkpoint (no format tag)")
    version = int(raw.get("format_version", "0"))
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this Monolith reads version {FORMAT_VERSION}"
        )
    meta: dict[str, Any] = dict(raw)
    for key in JSON_KEYS:
        if key in raw:
            try:
                meta[key] = json.loads(raw[key])
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{path}: metadata '{key}' is not valid JSON") from exc
    if "model_config" not in meta:
        raise CheckpointError(f"{path}: metadata has no model_config")
    return meta


def _with_legacy_defaults(raw: Any) -> Any:
    """Switches added after a checkpoint was written take the value its model was trained with.

    ``normalize_latent`` changed the forward pass; a checkpoint that predates the key was
    trained without it, so the field's current default (True) would silently mis-decode it.
    """
    if isinstance(raw, dict):
        return {"normalize_latent": False, **raw}
    return raw


def load_checkpoint(path: Path, device: str = "cpu") -> Checkpoint:
    """Build the architecture named in the metadata and load its weights, checking every shape."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        config = ModelConfig.model_validate(_with_legacy_defaults(meta["model_config"]))
    except ValidationError as exc:
        raise CheckpointError(f"{path}: invalid model_config in metadata: {exc}") from exc
    model = build_model(config)
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt", device=device) as fh:
            found = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [
        f"{k}: shape {list(found[k].shape)} != {list(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    if problems:
        raise CheckpointError(
            f"{path} does not match {config.architecture} {config.model_dump()}: " + "; ".join(problems[:8])
        )
    weights = check_tensors(path, found, meta)
    model.load_state_dict(found)
    model.to(device).eval()
    earlier = meta.get("earlier_sha256") or []
    if not (isinstance(earlier, list) and all(isinstance(e, str) for e in earlier)):
        raise CheckpointError(f"{path}: metadata 'earlier_sha256' must be a list of sha256 strings")
    return Checkpoint(model=model, config=config, path=path, sha256=file_sha256(path), metadata=meta,
                      weights_sha256=weights, earlier_sha256=tuple(earlier))


def load_with_fallback(primary: Path, fallback: Path | None = None, device: str = "cpu") -> Checkpoint:
    """Load ``primary``; if it is missing, unreadable or corrupt (checksum, non-finite weights)
    and a fallback is set, load that instead."""
    try:
        return load_checkpoint(primary, device)
    except CheckpointError as exc:
        if fallback is None:
            raise
        log.warning("checkpoint %s failed (%s); falling back to %s", primary, exc, fallback)
        return load_checkpoint(fallback, device)

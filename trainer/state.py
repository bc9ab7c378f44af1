"""Resumable training state in safetensors: tensors by flat name, everything else as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from vqvae.checkpoint import CheckpointError, atomic_save_tensors


def flatten_optimizer(
    state: dict[str, Any], prefix: str = "optim"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors ``{prefix}.{param}.{key}`` and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, slots in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    atomic_save_tensors(tensors, path, {"format": "monolith-train-state", "state": json.dumps(meta)})


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state to resume from at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"training state {path} is unreadable: {exc}") from exc
    if meta.get("format") != "monolith-train-state":
        raise CheckpointError(f"{path} is not a Monolith training state")
    return tensors, json.loads(meta["state"])

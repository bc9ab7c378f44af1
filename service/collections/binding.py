"""The model binding: which weights made a collection's codes, and whether this server's can read them.

A collection's codes mean something only to the weights that made them, so every collection file
(and every export) records those weights' checksum, and nothing is opened, imported or written
unless the serving model is the one recorded (docs/collections.md, "Checkpoints"). This layer sits
on the storage layer (``files``: it reads the ``meta`` rows) and below the index and the
collection, which take a :class:`StoreModel` from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.collections import files
from service.collections.errors import CheckpointMismatch
from vqvae.checkpoint import made_by
from vqvae.decoding import CodeDecoder
from vqvae.search import Decoder


@dataclass(frozen=True)
class StoreModel:
    """What collections need from a loaded model, so tests can vary the checksum alone."""

    sha256: str  # of the checkpoint file, as shown to users
    num_heads: int
    codebook_size: int
    codebooks: np.ndarray  # [H, K, D] float32
    latent_unit_heads: bool
    model_config: dict[str, Any]
    decoder: Decoder | None = None
    weights_sha256: str = ""  # what codes are bound to (vqvae.checkpoint.Checkpoint.weights_sha256)
    earlier_sha256: tuple[str, ...] = ()  # file sha256s these weights had before metadata was recorded

    def made(self, recorded: Mapping[str, Any]) -> bool:
        """Whether codes recorded as made by ``recorded`` (a collection's meta or an export's
        header) are this model's: by the weights' checksum, or, for files written before it was
        recorded, by the checkpoint file's sha256 then or since."""
        return made_by(recorded, self.weights_sha256, self.sha256, self.earlier_sha256)

    @classmethod
    def from_monolith(cls, monolith: Any) -> StoreModel:
        model = monolith.model
        return cls(
            sha256=monolith.sha256,
            num_heads=monolith.config.num_heads,
            codebook_size=monolith.config.codebook_size,
            codebooks=model.quantizer.codebooks.detach().cpu().numpy().astype(np.float32),
            latent_unit_heads=bool(getattr(monolith.config, "latent_unit_heads", False)),
            model_config=monolith.config.model_dump(mode="json"),
            decoder=CodeDecoder(model),
            weights_sha256=monolith.weights_sha256,
            earlier_sha256=monolith.checkpoint.earlier_sha256,
        )

    @property
    def input_dim(self) -> int:
        """The width of the vectors the model encodes (and a collection keeps)."""
        return int(self.model_config.get("input_dim", 384))

    def file_meta(self) -> dict[str, str]:
        """What a new collection file records about the model its codes belong to."""
        weights = {"weights_sha256": self.weights_sha256} if self.weights_sha256 else {}
        return {
            "checkpoint_sha256": self.sha256,
            **weights,
            "model_config": json.dumps(self.model_config, sort_keys=True),
            "num_heads": str(self.num_heads),
            "codebook_size": str(self.codebook_size),
        }


def check_compatible(name: str, meta: dict[str, str], model: StoreModel) -> None:
    """Refuse files of another schema or another checkpoint before anything touches them."""
    files.check_schema(name, meta)
    if not model.made(meta):
        raise CheckpointMismatch(
            f"collection {name!r} was encoded with {made_with(meta)} but this server runs "
            f"{made_with(model.file_meta())}; codes from one checkpoint mean nothing to another. Migrate it "
            f"to this checkpoint (POST /collections/{name}/migrate, or monolith-collection migrate {name}: it "
            "re-encodes the items from their kept vectors or texts), or serve it with the checkpoint it was built "
            "with (MONOLITH_CHECKPOINT). The collection was not modified."
        )


def made_with(recorded: Mapping[str, Any]) -> str:
    """The checkpoint a collection's meta or an export's header names, for error messages."""
    weights = recorded.get("weights_sha256")
    tail = f" (weights {weights})" if weights else ""
    return f"checkpoint sha256 {recorded.get('checkpoint_sha256')}{tail}"

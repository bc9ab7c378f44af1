"""Monolith's model library: a VQ-VAE that stores a 384-d sentence embedding in 4 bytes."""

from vqvae.api import Monolith, check_codes, check_embeddings
from vqvae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vqvae.config import EncodeConfig, ModelConfig
from vqvae.model import MonolithV13, MonolithWiki
from vqvae.quantizer import OrthogonalProductQuantizer
from vqvae.registry import build_model

__all__ = [
    "CheckpointError",
    "EncodeConfig",
    "ModelConfig",
    "Monolith",
    "MonolithV13",
    "MonolithWiki",
    "OrthogonalProductQuantizer",
    "build_model",
    "check_codes",
    "check_embeddings",
    "load_checkpoint",
    "save_checkpoint",
]

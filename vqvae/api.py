"""The ``Monolith`` facade: numpy in, numpy out, batched, no gradients."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vqvae.checkpoint import Checkpoint, CheckpointError, load_with_fallback
from vqvae.config import EncodeConfig, ModelConfig
from vqvae.embedder import TextEmbedder
from vqvae.model import MonolithWiki
from vqvae.refine import CodeRefiner

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "monolith-wiki.safetensors"
CHECKPOINT_ENV = "MONOLITH_CHECKPOINT"
FALLBACK_ENV = "MONOLITH_FALLBACK_CHECKPOINT"
CANDIDATES_ENV = "MONOLITH_ENCODE_CANDIDATES"
# progress=None shows a bar above these sizes: about half a minute of work on 2 cores (decoder-aware
# encoding does ~2,000 rows/s, MiniLM a few hundred texts/s).
PROGRESS_MIN_ROWS = 50_000
PROGRESS_MIN_TEXTS = 5_000


def show_progress(progress: bool | None, n: int, threshold: int) -> bool:
    """``progress`` when given; for None, whether ``n`` is above ``threshold`` and a person can
    see the bar: stderr is a terminal and this is the main thread (not a server's model worker)."""
    if progress is not None:
        return progress
    stderr = sys.stderr
    return (n > threshold and stderr is not None and stderr.isatty()
            and threading.current_thread() is threading.main_thread())


def default_checkpoint() -> Path:
    return resolve_checkpoint(os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT)


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoints that come with the package (``monolith-wiki``, ``monolith-all``)."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.safetensors"))


def resolve_checkpoint(value: str | Path) -> Path:
    """A checkpoint path, or the bare name of a shipped one: so ``MONOLITH_CHECKPOINT=monolith-all``
    works without knowing where pip put the package. A path that exists always wins."""
    path = Path(value)
    if path.exists() or path.suffix or len(path.parts) != 1:
        return path
    shipped = CHECKPOINT_DIR / f"{path.name}.safetensors"
    if shipped.is_file():
        return shipped
    raise CheckpointError(
        f"checkpoint {str(value)!r} is neither a file nor a shipped checkpoint ({', '.join(shipped_checkpoints())})"
    )


def checkpoint_encoding(checkpoint: Checkpoint) -> EncodeConfig:
    """The encoding a checkpoint's trainer measured and recommends (nearest codes if none)."""
    raw = checkpoint.metadata.get("encoding")
    try:
        return EncodeConfig.model_validate(raw or {})
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint.path}: invalid 'encoding' in metadata: {exc}") from exc


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}") from None


def check_embeddings(x: Any, dim: int) -> np.ndarray:
    """A float32 C-contiguous [N, dim] array, or a ValueError that says what is wrong."""
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"embeddings must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1 and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"embeddings must have shape [N, {dim}], got {list(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not arr.flags.writeable:  # torch.from_numpy warns on read-only (e.g. memory-mapped) arrays
        arr = arr.copy()
    if not np.isfinite(arr).all():
        raise ValueError("embeddings contain NaN or Inf")
    return arr


def check_codes(codes: Any, num_heads: int, codebook_size: int) -> np.ndarray:
    """An int64 [N, H] array of codes in 0..K-1, or a ValueError that says what is wrong."""
    arr = np.asarray(codes)
    if arr.ndim == 1 and arr.shape[0] == num_heads:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != num_heads:
        raise ValueError(f"codes must have shape [N, {num_heads}], got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.size and not (np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0)):
            raise ValueError(f"codes must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= codebook_size):
        raise ValueError(f"codes must lie in 0..{codebook_size - 1}, got values {arr.min()}..{arr.max()}")
    return arr


class Monolith:
    """A loaded model: ``encode`` (float32 [N,384] → uint8 [N,4]), ``decode``, ``encode_text``."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        text_model: str | Path | None = None,
        batch_size: int = 4096,
        encoding: EncodeConfig | None = None,
    ):
        if not checkpoint.config.produces_codes:
            raise CheckpointError(
                f"{checkpoint.path} is a '{checkpoint.config.bottleneck}' checkpoint: it keeps a float latent "
                "and produces no codes, so it cannot encode, decode or search. Monolith serves only "
                "code-producing checkpoints (bottleneck 'product_vq' or 'residual_vq')."
            )
        self.checkpoint = checkpoint
        self.model: MonolithWiki = checkpoint.model.eval()
        self.config: ModelConfig = checkpoint.config
        self.batch_size = batch_size
        self._text_model = text_model
        self._embedder: TextEmbedder | None = None
        self.encoding = encoding or checkpoint_encoding(checkpoint)
        self._refiner: CodeRefiner | None = None

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        fallback: str | Path | None = None,
        text_model: str | Path | None = None,
        encoding: EncodeConfig | None = None,
        candidates: int | None = None,
    ) -> Monolith:
        """The shipped checkpoint by default (or ``$MONOLITH_CHECKPOINT``); ``fallback`` (or
        ``$MONOLITH_FALLBACK_CHECKPOINT``) is tried, with a warning, if it is missing or broken.

        ``encoding`` defaults to the checkpoint's measured setting; ``candidates`` (or
        ``$MONOLITH_ENCODE_CANDIDATES``) overrides just its candidates (0: nearest codes, fastest)."""
        primary = resolve_checkpoint(path) if path else default_checkpoint()
        fb = fallback or os.environ.get(FALLBACK_ENV)
        ckpt = load_with_fallback(primary, resolve_checkpoint(fb) if fb else None)
        if candidates is None and os.environ.get(CANDIDATES_ENV):
            candidates = _env_int(CANDIDATES_ENV)
        if encoding is None and candidates is not None:
            encoding = EncodeConfig.model_validate({**checkpoint_encoding(ckpt).model_dump(), "candidates": candidates})
        return cls(ckpt, text_model=text_model, encoding=encoding)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.checkpoint.metadata

    @property
    def sha256(self) -> str:
        return self.checkpoint.sha256

    @property
    def weights_sha256(self) -> str:
        """The weights' checksum: equal for two files exactly when their codes mean the same."""
        return self.checkpoint.weights_sha256

    @property
    def embedder(self) -> TextEmbedder:
        """The text model, loaded on first use (most callers only handle vectors)."""
        if self._embedder is None:
            self._embedder = TextEmbedder(self._text_model, expected_dim=self.config.input_dim)
        return self._embedder

    @torch.inference_mode()
    def search_latent(self, x: np.ndarray) -> np.ndarray:
        """The model's ``search_latent`` [N, H·D]: what the search kernel scores stored codes against
        (the encoder output z_e for product heads; z_e once per stage for residual stages, see
        ``ResidualVQ.search_latent``)."""
        x = check_embeddings(x, self.config.input_dim)
        out = [self.model.search_latent(torch.from_numpy(x[i : i + self.batch_size])).numpy()
               for i in range(0, len(x), self.batch_size)]
        width = self.config.num_heads * self.config.head_dim
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)

    @property
    def refiner(self) -> CodeRefiner:
        """The decoder-aware code search of ``self.encoding`` (built on first use)."""
        if self._refiner is None or self._refiner.config != self.encoding:
            self._refiner = CodeRefiner(self.model, self.encoding)
        return self._refiner

    @torch.inference_mode()
    def encode(self, x: np.ndarray, progress: bool | None = None) -> np.ndarray:
        """float32 [N, D] → uint8 [N, H]; refined through the decoder when ``self.encoding`` says so.

        ``progress``: a tqdm bar on stderr, per batch of ``batch_size`` rows; None (default) shows
        one for more than ``PROGRESS_MIN_ROWS`` rows when stderr is a terminal. The codes are the
        same either way."""
        x = check_embeddings(x, self.config.input_dim)
        codes = np.empty((len(x), self.config.num_heads), dtype=np.uint8)
        refine = self.encoding.refines
        with tqdm(total=len(x), unit="rows", desc="encode", file=sys.stderr, dynamic_ncols=True,
                  disable=not show_progress(progress, len(x), PROGRESS_MIN_ROWS)) as bar:
            for i in range(0, len(x), self.batch_size):
                part = torch.from_numpy(x[i : i + self.batch_size])
                if refine:
                    codes[i : i + len(part)] = self.refiner(part, self.model.encode_latent(part)).numpy()
                else:
                    codes[i : i + len(part)] = self.model.encode(part).numpy()
                bar.update(len(part))
        return codes

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        c = check_codes(codes, self.config.num_heads, self.config.codebook_size)
        out = np.empty((len(c), self.config.input_dim), dtype=np.float32)
        for i in range(0, len(c), self.batch_size):
            out[i : i + self.batch_size] = self.model.decode(torch.from_numpy(c[i : i + self.batch_size])).numpy()
        return out

    def embed_text(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """float32 [N, 384] from the text model; ``progress`` as in ``encode`` (None: a bar for
        more than ``PROGRESS_MIN_TEXTS`` texts on a terminal)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.embedder.embed(texts, progress=show_progress(progress, len(texts), PROGRESS_MIN_TEXTS))

    def encode_text(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """Texts → uint8 [N, H]: ``embed_text`` then ``encode``, each with a bar when ``progress``
        (None: for more than ``PROGRESS_MIN_TEXTS`` texts on a terminal)."""
        if isinstance(texts, str):
            texts = [texts]
        show = show_progress(progress, len(texts), PROGRESS_MIN_TEXTS)
        return self.encode(self.embed_text(texts, progress=show), progress=show)

"""Codes → decoded vectors, fast: the decoder that search re-ranking and decoder-aware encoding share.

:class:`CodeDecoder` folds the codebooks into the decoder's first (linear) layer, so decoding
H codes is one ``embedding_bag`` sum plus the rest of the decoder. ``vqvae.search`` re-ranks
candidates with it; ``vqvae.refine`` searches codes through its first-layer table.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class CodeDecoder:
    """Codes → unit-length reconstructions, with the decoder's first layer precomputed.

    The decoder's first layer is linear in z_q, and z_q is a concatenation of codebook rows,
    so ``W z_q = Σ_h W_h c_h``: a table of H×K×hidden products replaces ~55% of the decoder's
    multiply-adds during re-ranking. The shortcut is checked against ``model.decode`` at
    construction and dropped (with a warning) if the architecture does not fit it.
    """

    def __init__(self, model: nn.Module, chunk: int = 8192) -> None:
        self.model = model
        self.chunk = chunk
        self._table: torch.Tensor | None = None
        self._rest: nn.Module | None = None
        self._normalize = bool(getattr(model.config, "normalize_output", True))
        decoder = getattr(model, "decoder", None)
        if isinstance(decoder, nn.Sequential) and len(decoder) and isinstance(decoder[0], nn.Linear):
            was_training = model.training
            model.eval()  # the check below compares outputs: no dropout
            try:
                self._build(decoder)
            finally:
                model.train(was_training)

    @torch.inference_mode()
    def _build(self, decoder: nn.Sequential) -> None:
        cb = self.model.quantizer.codebooks.detach().float()  # [H, K, D]
        h, k, d = cb.shape
        first: nn.Linear = decoder[0]
        w = first.weight.detach().float()
        if first.in_features == d:  # residual stages: every code spans the whole latent, z_q = Σ codes
            table = torch.einsum("hkd,od->hko", cb, w).contiguous()  # [H, K, out]
        else:  # product heads: each code fills its own slice of the latent
            table = torch.einsum("hkd,ohd->hko", cb, w.reshape(first.out_features, h, d)).contiguous()
        if first.bias is not None:
            table[0] += first.bias.detach().float()
        # Flat [H·K, out] so that one embedding_bag(sum) gathers and adds the H rows (~10x
        # faster than fancy indexing followed by a sum).
        self._table, self._rest = table.reshape(h * k, -1), decoder[1:]
        self._offsets = torch.arange(h) * k
        probe = torch.randint(0, k, (64, h), generator=torch.Generator().manual_seed(0))
        fast = self._decode_fast(probe)
        ref = self.model.decode(probe).float()
        if not self._normalize:
            fast, ref = F.normalize(fast, dim=-1), F.normalize(ref, dim=-1)
        err = (fast - ref).abs().max().item()
        if err > 1e-4:
            log.warning("decoder shortcut differs from model.decode by %.2e; using model.decode", err)
            self._table = self._rest = None

    @property
    def first_layer_table(self) -> torch.Tensor | None:
        """[H, K, hidden]: each code's term of the decoder's first layer (the bias inside head 0's
        terms), so the first layer of codes c is Σ_h table[h, c_h]; None without the shortcut."""
        if self._table is None:
            return None
        h = len(self._offsets)
        return self._table.reshape(h, -1, self._table.shape[-1])

    def finish(self, hidden: torch.Tensor) -> torch.Tensor:
        """The decoder after its first layer, on first-layer outputs [..., hidden]."""
        assert self._rest is not None
        out = self._rest(hidden)
        return F.normalize(out, dim=-1) if self._normalize else out

    def _decode_fast(self, codes: torch.Tensor) -> torch.Tensor:
        assert self._table is not None
        return self.finish(F.embedding_bag(codes + self._offsets, self._table, mode="sum"))

    @torch.inference_mode()
    def __call__(self, codes: np.ndarray) -> np.ndarray:
        """uint8/int [N, H] → float32 [N, input_dim], unit length."""
        c = torch.from_numpy(np.asarray(codes, dtype=np.int64))
        was_training = self.model.training
        self.model.eval()
        try:
            parts = []
            for i in range(0, len(c), self.chunk):
                part = c[i : i + self.chunk]
                x = self._decode_fast(part) if self._table is not None else self.model.decode(part).float()
                parts.append(F.normalize(x, dim=-1))
        finally:
            self.model.train(was_training)
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return torch.cat(parts).numpy()

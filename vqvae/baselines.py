"""faiss baselines, defined once: a faiss ``index_factory`` string fitted on training vectors.

A baseline is judged like Monolith (docs/architecture.md, "Fair comparison"): it encodes the database to
its standalone codes (``sa_encode``), decodes them (``sa_decode``), and the reconstructions are
ranked by cosine with the query (:func:`vqvae.metrics.cosine_topk`). The comparisons at
Monolith's 4 bytes are :data:`DEFAULT_BASELINES`; :data:`REFERENCE_BASELINES` spend 8.

Fitted indexes depend on the training vectors only, so :func:`fit_baseline` can keep them in a
cache folder keyed by the spec, the number of vectors and a digest of them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_BASELINES: tuple[str, ...] = ("OPQ4,PQ4", "RQ4x8", "LSQ4x8")  # 4 bytes each, like Monolith
REFERENCE_BASELINES: tuple[str, ...] = ("OPQ8,PQ8", "LSQ8x8")  # 8 bytes each, for reference rows


class BaselineError(ValueError):
    """A spec faiss cannot build, or an index without standalone codes."""


@dataclass
class Baseline:
    """A fitted faiss index used as a codec: vectors → codes → reconstructions."""

    spec: str
    index: faiss.Index
    train_vectors: int
    fit_seconds: float = 0.0

    @property
    def bytes_per_vector(self) -> int:
        return int(self.index.sa_code_size())

    @property
    def codebook_size(self) -> int | None:
        """Entries per sub-quantizer where every code is one byte of its own (PQ/RQ/LSQ ``x8``), else None."""
        return _byte_codebook_size(self.index)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """float32 [N, d] → uint8 [N, bytes_per_vector]."""
        return self.index.sa_encode(np.ascontiguousarray(x, dtype=np.float32))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """uint8 [N, bytes_per_vector] → float32 [N, d] (not normalised)."""
        return self.index.sa_decode(np.ascontiguousarray(codes, dtype=np.uint8))

    def reconstruct(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes, reconstructions) of ``x``."""
        codes = self.encode(x)
        return codes, self.decode(codes)


def build_index(spec: str, dim: int, opq_iters: int | None = None) -> faiss.Index:
    """An untrained index for ``spec``; :class:`BaselineError` when faiss cannot build it or it has
    no standalone codes. PQ's polysemous training (a code permutation for Hamming search, which
    changes no reconstruction and costs minutes) is switched off."""
    try:
        index = faiss.index_factory(dim, spec)
    except RuntimeError as exc:
        detail = str(exc).strip().rsplit(": ", 1)[-1]
        raise BaselineError(f"unknown baseline {spec!r}: not a faiss index_factory string ({detail})") from None
    try:
        index.sa_code_size()
    except RuntimeError:
        raise BaselineError(f"baseline {spec!r} has no standalone codes (faiss sa_encode)") from None
    inner = index
    if isinstance(index, faiss.IndexPreTransform):
        inner = faiss.downcast_index(index.index)
        if opq_iters is not None:
            for i in range(index.chain.size()):
                vt = faiss.downcast_VectorTransform(index.chain.at(i))
                if isinstance(vt, faiss.OPQMatrix):
                    vt.niter = opq_iters
    if isinstance(inner, faiss.IndexPQ):
        inner.do_polysemous_training = False
    return index


def fit_baseline(
    spec: str, train: np.ndarray, opq_iters: int | None = None, cache: Path | None = None
) -> Baseline:
    """Fit ``spec`` (e.g. ``"OPQ4,PQ4"``, ``"RQ4x8"``, ``"LSQ4x8"``) on ``train``, or read it back
    from ``cache`` where it was fitted on the same vectors before."""
    train = np.ascontiguousarray(train, dtype=np.float32)
    if train.ndim != 2 or len(train) == 0:
        raise BaselineError(f"baselines need training vectors [N, d], got shape {list(train.shape)}")
    index = build_index(spec, train.shape[1], opq_iters)
    if _has_opq(index) and len(train) < train.shape[1]:  # faiss's OPQ training corrupts memory below d
        raise BaselineError(f"{spec}: OPQ needs at least {train.shape[1]} training vectors, got {len(train)}")
    path = _cache_path(cache, spec, train, opq_iters) if cache is not None else None
    if path is not None and path.is_file():
        log.info("%s read from %s", spec, path)
        return Baseline(spec, faiss.read_index(str(path)), len(train))
    t0 = time.perf_counter()
    index.train(train)
    seconds = time.perf_counter() - t0
    log.info("%s fitted on %d vectors in %.1fs", spec, len(train), seconds)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        faiss.write_index(index, str(tmp))
        tmp.replace(path)
    return Baseline(spec, index, len(train), seconds)


def _has_opq(index: faiss.Index) -> bool:
    if not isinstance(index, faiss.IndexPreTransform):
        return False
    return any(isinstance(faiss.downcast_VectorTransform(index.chain.at(i)), faiss.OPQMatrix)
               for i in range(index.chain.size()))


def _cache_path(cache: Path, spec: str, train: np.ndarray, opq_iters: int | None) -> Path:
    digest = hashlib.sha256(train[:: max(1, len(train) // 1000)].tobytes()).hexdigest()[:12]
    name = "".join(c if c.isalnum() else "_" for c in spec)
    return Path(cache) / f"{name}-{len(train)}-{opq_iters or 'default'}-{digest}.faiss"


def _byte_codebook_size(index: faiss.Index) -> int | None:
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexPQ):
        m, nbits = index.pq.M, [index.pq.nbits] * index.pq.M
    elif isinstance(index, faiss.IndexAdditiveQuantizer):
        aq = index.aq
        m, nbits = aq.M, [aq.nbits.at(i) for i in range(aq.nbits.size())]
    else:
        return None
    if nbits and all(b == 8 for b in nbits) and index.sa_code_size() == m:
        return 256
    return None

"""Corpora → texts → embeddings.

The sources themselves (which texts, from where on a Debian machine, and which of them are
kept for testing only) live in ``trainer.sources``. Splits are decided by a hash of the text,
so they stay fixed however often, and on whichever machine, the corpus is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from trainer.sources import SOURCES, CorpusError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    return _WS.sub(" ", text).strip()


def split_of(text: str) -> str:
    """90/5/5 split by a stable hash: the same text always lands in the same split."""
    bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else ("val" if bucket < 95 else "test")


def clean_unique(texts: Iterable[str], min_chars: int = 12, max_chars: int = 1000) -> list[str]:
    """Whitespace-normalised, length-filtered, deduplicated texts, first occurrence kept."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in texts:
        text = normalise_text(raw)
        if len(text) < min_chars:
            continue
        text = text[:max_chars]
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def build_corpus(out_dir: Path, sources: Iterable[str], max_per_source: int | None = None) -> dict:
    """Write ``{source}.{split}.txt`` (one text per line) for each source; return counts.

    Texts that occur in a training source are dropped from every later source, so no
    test text is ever also a training text.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    for name in sources:
        if name not in SOURCES:
            raise CorpusError(f"unknown corpus source {name!r}; valid: {', '.join(SOURCES)}")
        texts = [t for t in clean_unique(SOURCES[name]()) if t not in seen]
        seen.update(texts)
        if max_per_source is not None and len(texts) > max_per_source:
            rng = np.random.default_rng(0)
            texts = [texts[i] for i in sorted(rng.choice(len(texts), max_per_source, replace=False))]
        by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
        for text in texts:
            by_split[split_of(text)].append(text)
        for split, rows in by_split.items():
            write_texts(out_dir / f"{name}.{split}.txt", rows)
        counts[name] = {s: len(r) for s, r in by_split.items()}
        log.info("corpus %s: %s", name, counts[name])
    (out_dir / "corpus.json").write_text(json.dumps(counts, indent=2))
    return counts


def write_texts(path: Path, texts: Iterable[str]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(text.replace("\n", " ") + "\n")


def read_texts(path: Path) -> list[str]:
    """One text per non-empty line."""
    with Path(path).open(encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]


def load_embeddings(path: Path, dim: int | None = None) -> np.ndarray:
    """A float32 [N, dim] matrix from a ``.npy`` file, checked; never unpickles."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        raise ValueError(f"{path}: expected shape [N, {dim or 'D'}], got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{path}: expected floating point data, got {arr.dtype}")
    arr = np.array(arr, dtype=np.float32, order="C")  # a writable in-memory copy of the mmap
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN or Inf")
    return arr


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    build_corpus(Path(sys.argv[1]), sys.argv[2:] or SOURCES)


def embed_file(embedder, in_path: Path, out_path: Path, chunk: int = 4096, progress: bool = True) -> int:
    """Embed a one-text-per-line file into a float32 ``.npy``; returns the row count.

    Works in chunks under one progress bar and writes atomically, so an interrupted run
    leaves no half-written file that a later run would mistake for a cache.
    """
    from tqdm import tqdm

    texts = read_texts(in_path)
    if not texts:
        raise ValueError(f"{in_path}: no texts (expected one text per line)")
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    with tqdm(total=len(texts), desc=f"embed {Path(in_path).name}", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            out[start : start + len(part)] = embedder.embed(part)
            bar.update(len(part))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.save(fh, out)
    tmp.replace(out_path)
    return len(texts)


def jitter(x: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    """Nearby points on each row's sphere: x + Gaussian noise of relative size ``noise``, scaled
    back to the row's norm (cosine to the row ≈ 1/√(1+noise²)). Augmentation that stays where
    sentence embeddings live, so the model is fitted around the data and not only at it."""
    norms = x.norm(dim=-1, keepdim=True)
    g = torch.randn(x.shape, generator=gen) * (noise / math.sqrt(x.shape[-1])) * norms
    return torch.nn.functional.normalize(x + g, dim=-1) * norms


def mix_neighbours(x: torch.Tensor, rows: torch.Tensor, least: float, gen: torch.Generator) -> torch.Tensor:
    """``x`` with ``rows`` blended with their nearest other row of ``x`` (by cosine), weight
    λ ~ U(least, 1) on themselves, back on their own norm. Unlike isotropic jitter, the new
    points lie between two real sentences, along directions the data itself spans."""
    out = x.clone()
    if not bool(rows.any()) or len(x) < 2:
        return out
    picked = x[rows]
    sim = torch.nn.functional.normalize(picked, dim=-1) @ torch.nn.functional.normalize(x, dim=-1).T
    sim[torch.arange(len(sim)), rows.nonzero().squeeze(1)] = -math.inf  # not itself
    lam = least + (1 - least) * torch.rand(len(sim), 1, generator=gen)
    blend = lam * picked + (1 - lam) * x[sim.argmax(dim=1)]
    out[rows] = torch.nn.functional.normalize(blend, dim=-1) * picked.norm(dim=-1, keepdim=True)
    return out

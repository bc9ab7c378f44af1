"""Corpora → texts → embeddings.

Training text comes from real sources on a Debian machine: WordNet glosses and the
package synopses that ``apt-cache dumpavail`` prints. Two further real sources that the
shipped model never trains on serve as out-of-domain tests: Python standard-library
docstrings and Debian changelog entries. Splits are decided by a hash of the text, so
they stay fixed however often, and on whichever machine, the corpus is rebuilt.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import logging
import re
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")
SPLITS = ("train", "val", "test")
_WS = re.compile(r"\s+")


class CorpusError(RuntimeError):
    """A corpus source is missing on this machine, with the command that installs it."""


def normalise_text(text: str) -> str:
    return _WS.sub(" ", text).strip()


def split_of(text: str) -> str:
    """90/5/5 split by a stable hash: the same text always lands in the same split."""
    bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else ("val" if bucket < 95 else "test")


def wordnet_glosses(root: Path = WORDNET_DIR) -> Iterator[str]:
    """Every synset gloss (definition and examples) of WordNet's data.* files."""
    files = [root / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.exists() for f in files):
        raise CorpusError(f"WordNet data not found under {root}: run 'apt-get install wordnet-base'")
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or " | " not in line:
                    continue  # licence header
                yield line.split(" | ", 1)[1]


def debian_synopses(dump: str | None = None) -> Iterator[str]:
    """Package one-line descriptions from ``apt-cache dumpavail``."""
    if dump is None:
        try:
            dump = subprocess.run(
                ["apt-cache", "dumpavail"], check=True, capture_output=True, text=True
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise CorpusError(f"'apt-cache dumpavail' failed ({exc}); run 'apt-get update' first") from exc
    for line in dump.splitlines():
        if line.startswith("Description: "):
            yield line[len("Description: ") :]


def python_docstrings(stdlib: Path | None = None) -> Iterator[str]:
    """First paragraph of every docstring in the Python standard library (out-of-domain text)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if any(p in {"site-packages", "test", "tests", "idlelib", "lib2to3"} for p in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc.split("\n\n", 1)[0]


def debian_changelogs(doc_root: Path = Path("/usr/share/doc")) -> Iterator[str]:
    """Entries ('  * ...') of every installed package's Debian changelog (out-of-domain text)."""
    for path in sorted(doc_root.glob("*/changelog.Debian.gz")):
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        except (OSError, EOFError):
            continue
        entry: list[str] = []
        for line in text.splitlines() + [""]:
            if line.startswith("  * "):
                if entry:
                    yield " ".join(entry)
                entry = [line[4:]]
            elif line.startswith("    ") and entry:
                entry.append(line.strip())
            else:
                if entry:
                    yield " ".join(entry)
                entry = []


SOURCES: dict[str, Callable[[], Iterable[str]]] = {
    "wordnet": wordnet_glosses,
    "debian": debian_synopses,
    "pydoc": python_docstrings,
    "changelog": debian_changelogs,
}
TRAIN_SOURCES = ("wordnet", "debian")
OOD_SOURCES = ("pydoc", "changelog")


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

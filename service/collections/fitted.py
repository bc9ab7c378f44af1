"""A collection's own model: the weights a fit made for it, kept beside its file.

A fitted collection's codes are its own model's, not the server checkpoint's
(docs/collections.md, "Fitting a collection"), so the model travels with the collection: one
safetensors checkpoint per model in ``<name>.models/`` next to ``<name>.sqlite3``, named by the
sha256 of its weights, which the loader verifies (``vqvae.checkpoint``). The file's ``meta`` row
``fitted_model`` names the one its codes belong to; the switch to a new model is that row and
the codes, in one SQLite transaction, after the model file is durable. Files no row names (a fit
killed before its switch, a model replaced by a later fit) are pruned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from pathlib import Path

from service.collections import files
from service.collections.binding import StoreModel
from service.collections.errors import CollectionCorrupt
from vqvae.api import Monolith
from vqvae.checkpoint import CheckpointError, load_checkpoint

log = logging.getLogger(__name__)

META_KEY = "fitted_model"  # weights sha256 of the collection's own model; absent: the server's checkpoint
REPORT_KEY = "fit_report"  # JSON: the fair report of the fit that made it (or of the last fit not applied)
SUFFIX = ".safetensors"

_cache: dict[tuple[str, str], Monolith] = {}
_cache_lock = threading.Lock()


def models_dir(path: Path) -> Path:
    """``<name>.models`` beside the collection file ``<name>.sqlite3``."""
    return path.with_name(path.name.removesuffix(files.SUFFIX) + ".models")


def model_path(path: Path, weights_sha256: str) -> Path:
    return models_dir(path) / f"{weights_sha256}{SUFFIX}"


def load(path: Path, weights_sha256: str) -> Monolith:
    """The collection's model named ``weights_sha256`` (cached: reopening a collection does not
    read it again); ``CollectionCorrupt`` when it is missing or its weights are not those."""
    key = (str(path), weights_sha256)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    file = model_path(path, weights_sha256)
    try:
        ckpt = load_checkpoint(file)
    except CheckpointError as exc:
        raise CollectionCorrupt(f"collection {path.stem!r}: its fitted model cannot be loaded ({exc}); "
                                "import it again from an export, or delete it") from exc
    if ckpt.weights_sha256 != weights_sha256:
        raise CollectionCorrupt(f"collection {path.stem!r}: its fitted model file {file.name} holds other weights "
                                f"({ckpt.weights_sha256})")
    monolith = Monolith(ckpt)
    with _cache_lock:
        _cache[key] = monolith
    return monolith


def store_model(path: Path, weights_sha256: str) -> tuple[Monolith, StoreModel]:
    monolith = load(path, weights_sha256)
    return monolith, StoreModel.from_monolith(monolith)


def install(path: Path, source: Path) -> str:
    """Copy the checkpoint ``source`` into the collection's models folder, durably (written under a
    temporary name, fsynced, renamed, the folder fsynced); returns its weights' sha256. Done before
    the switch that names it, so a named model is always on disk."""
    weights = load_checkpoint(source).weights_sha256
    folder = models_dir(path)
    folder.mkdir(exist_ok=True)
    final = folder / f"{weights}{SUFFIX}"
    if not final.exists():
        tmp = folder / f".{weights}.{os.getpid()}.tmp"
        try:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        files.fsync_dir(folder)
        files.fsync_dir(folder.parent)
    return weights


def prune(path: Path, keep: str | None) -> None:
    """Remove every model file of the collection but ``keep`` (best effort)."""
    folder = models_dir(path)
    if not folder.is_dir():
        return
    for file in folder.iterdir():
        if file.name != f"{keep}{SUFFIX}":
            with contextlib.suppress(OSError):
                file.unlink()
            with _cache_lock:
                _cache.pop((str(path), file.name.removesuffix(SUFFIX)), None)
    if keep is None:
        with contextlib.suppress(OSError):
            folder.rmdir()


def remove_all(path: Path) -> None:
    """Remove the models folder of a deleted collection."""
    prune(path, None)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(models_dir(path))

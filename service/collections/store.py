"""All collections under ``<data_dir>/collections``: named, created, listed, dropped, cached open.

The server opens one ``Store`` at start-up (``service.app``) and the CLI opens its own on
the same folder; ``Collection`` keeps the two consistent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import uuid
from pathlib import Path

from service.collections import files, fitted, partitions, vectors
from service.collections.binding import StoreModel, check_compatible
from service.collections.collection import Collection, CollectionInfo
from service.collections.errors import (
    CheckpointMismatch,
    CollectionBusy,
    CollectionExists,
    CollectionNotFound,
    InvalidExport,
    InvalidName,
    SettingsConflict,
    StoreError,
)
from vqvae.checkpoint import CHECKSUM_KEY, CheckpointError, read_metadata
from vqvae.search import DEFAULT_BACKEND, Backend

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_name(name: str) -> str:
    """A collection name doubles as a file name, so it is restricted to a safe alphabet."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid collection name {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return name


class Store:
    """All collections under ``<data_dir>/collections``, opened lazily and cached."""

    def __init__(
        self,
        data_dir: Path | str,
        model: StoreModel,
        synchronous: files.Synchronous = "FULL",
        backend: Backend = DEFAULT_BACKEND,
    ) -> None:
        self.root = Path(data_dir) / "collections"
        self.root.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.synchronous = synchronous
        self.backend = backend
        self._open: dict[str, Collection] = {}
        self._lock = threading.RLock()
        self._jobs: dict[str, str] = {}  # collection → the long job running on it (a migration)

    def path(self, name: str) -> Path:
        return self.root / f"{validate_name(name)}{files.SUFFIX}"

    def names(self) -> list[str]:
        suffix = files.SUFFIX
        return sorted(p.name[: -len(suffix)] for p in self.root.glob(f"*{suffix}") if NAME_RE.fullmatch(p.stem))

    def open_all(self) -> None:
        """Open every collection now (start-up), logging those this checkpoint cannot serve."""
        for name in self.names():
            try:
                self.get(name)
            except StoreError as exc:
                log.warning("collection %s not served: %s", name, exc)

    def get(self, name: str) -> Collection:
        path = self.path(name)
        with self._lock:
            col = self._open.get(name)
            if col is not None:
                try:
                    col.sync()
                    return col
                except CollectionNotFound:
                    col.close()
                    del self._open[name]
            col = Collection(name, path, self.model, self.synchronous, self.backend)
            self._open[name] = col
            return col

    def create(
        self, name: str, description: str | None = None, index: partitions.IndexSpec | None = None,
        kept: vectors.VectorKind | None = None, auto_fit: bool | None = None,
    ) -> tuple[Collection, bool]:
        """Create a collection (atomically: built under a temp name, then hard-linked into
        place, which fails if the name exists). Returns it and whether it is new. ``index``:
        flat or partitioned (``partitions``); given for an existing collection, its index is
        rebuilt that way from the stored codes. ``kept``: what it keeps of each input vector
        (default int8); an existing collection keeps its kind (``SettingsConflict`` if asked another).
        ``auto_fit``: whether it fits its own model as it grows (default on; may change later)."""
        path = self.path(name)
        with self._lock:
            if path.exists():
                col = self.get(name)
                if kept is not None and kept != col.vector_kind:
                    raise SettingsConflict(
                        f"collection {name!r} exists and keeps vectors as {col.vector_kind!r}; the kind cannot "
                        f"change in place: export it, delete it, PUT it with \"vectors\": \"{kept}\" and upsert "
                        "its items again")
                if description is not None and description != col.meta.get("description"):
                    col.set_description(description)
                if index is not None:
                    col.set_index(index)
                if auto_fit is not None and auto_fit != (col.meta.get("auto_fit", "true") == "true"):
                    col.set_meta({"auto_fit": str(auto_fit).lower()})
                return col, False
            tmp = self.root / f".{name}.{uuid.uuid4().hex}.creating"
            try:
                meta = {**self.model.file_meta(), **partitions.meta_for(index),
                        vectors.META_KEY: kept or vectors.DEFAULT_KIND,
                        "auto_fit": "false" if auto_fit is False else "true"}
                files.create_file(tmp, meta, self.model.num_heads, description)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return self.get(name), False
                files.fsync_dir(self.root)
            finally:
                files.remove_files(tmp)
            log.info("collection %s created", name)
            return self.get(name), True

    def claim(self, name: str, job: str) -> None:
        """Mark ``name`` as running ``job``; ``CollectionBusy`` if one already runs (one at a time)."""
        with self._lock:
            running = self._jobs.get(name)
            if running is not None:
                raise CollectionBusy(f"a {running} of collection {name!r} is running; wait for it to finish, "
                                     "then retry")
            self._jobs[name] = job

    def release(self, name: str) -> None:
        with self._lock:
            self._jobs.pop(name, None)

    def forget(self, name: str) -> None:
        """Close ``name`` if open, so the next :meth:`get` reads it from its file again."""
        with self._lock:
            col = self._open.pop(name, None)
            if col is not None:
                col.close()

    def staging_path(self, name: str) -> Path:
        """A hidden file beside the collections in which to build one (an import) before
        :meth:`install` puts it in place; never listed or opened as a collection."""
        return self.root / f".{validate_name(name)}.{uuid.uuid4().hex}.importing"

    def install(self, name: str, built: Path, replace: bool = False,
                model_file: Path | None = None) -> tuple[Collection, bool]:
        """Put a complete collection file ``built`` (from :meth:`staging_path`) in place as
        ``name``; returns it and whether the name was new. An existing collection is refused
        (``CollectionExists``) unless ``replace``: then it is deleted first (its own model too), so
        requests in between see no collection rather than a mix of two. ``built`` is removed either way.

        A file whose meta names its own model (``fitted``) needs that model's checkpoint as
        ``model_file`` (an import carries it): its codes are bound to it, not to the server's
        checkpoint, so it installs on any server. The model is placed in the collection's models
        folder, durably, before the file is linked into place (``InvalidExport`` if its weights are
        not the ones the file names)."""
        path = self.path(name)
        try:
            meta = files.read_meta(built)
            own = meta.get(fitted.META_KEY)
            if own:
                files.check_schema(name, meta)
                self._check_model_file(name, meta, model_file)
            else:
                check_compatible(name, meta, self.model)
            with self._lock:
                existed = path.exists()
                if existed and not replace:
                    raise CollectionExists(
                        f"collection {name!r} already exists; import with replace=true (CLI: --replace) to "
                        "replace it, or import under another name"
                    )
                if existed:
                    self.drop(name)  # its models folder goes with it
                if own:
                    assert model_file is not None
                    self._install_model(name, path, own, model_file)
                try:
                    os.link(built, path)
                except FileExistsError:
                    if own:  # another process created it meanwhile: leave it its own model only
                        with contextlib.suppress(StoreError, OSError):
                            fitted.prune(path, files.read_meta(path).get(fitted.META_KEY) or None)
                    raise CollectionExists(f"collection {name!r} was created meanwhile; nothing was replaced") from None
                if own:
                    fitted.prune(path, own)  # files an earlier collection of that name left behind
                files.fsync_dir(self.root)
                log.info("collection %s %s from an import", name, "replaced" if existed else "created")
                return self.get(name), not existed
        finally:
            files.remove_files(built)

    @staticmethod
    def _check_model_file(name: str, meta: dict[str, str], model_file: Path | None) -> None:
        """Before anything is replaced: ``model_file`` must be the model ``meta`` names (its
        recorded weights checksum; the full check is the load in :meth:`_install_model`)."""
        own = meta[fitted.META_KEY]
        if model_file is None:
            raise InvalidExport(f"collection {name!r}: its codes belong to its own model {own}, which did not "
                                "come with it; nothing was written")
        if meta.get("weights_sha256") != own:
            raise InvalidExport(f"collection {name!r}: its codes name weights {meta.get('weights_sha256')} but its "
                                f"own model is {own}; nothing was written")
        try:
            recorded = read_metadata(model_file).get(CHECKSUM_KEY)
        except CheckpointError as exc:
            raise InvalidExport(f"collection {name!r}: its model is not a usable checkpoint ({exc}); "
                                "nothing was written") from None
        if recorded is not None and recorded != own:
            raise InvalidExport(f"collection {name!r}: its model holds weights {recorded}, not the {own} its codes "
                                "belong to; nothing was written")

    @staticmethod
    def _install_model(name: str, path: Path, own: str, model_file: Path) -> None:
        try:
            installed = fitted.install(path, model_file)
        except CheckpointError as exc:
            fitted.remove_all(path)
            raise InvalidExport(f"collection {name!r}: its model is not a usable checkpoint ({exc}); "
                                "nothing was written") from None
        if installed != own:
            fitted.remove_all(path)
            raise InvalidExport(f"collection {name!r}: its model holds weights {installed}, not the {own} its codes "
                                "belong to; nothing was written")

    def drop(self, name: str) -> None:
        path = self.path(name)
        with self._lock:
            col = self._open.pop(name, None)
            if col is not None:
                col.close()
            if not path.exists():
                raise CollectionNotFound(f"collection {name!r} not found")
            files.remove_files(path)
            fitted.remove_all(path)
            files.fsync_dir(self.root)
            log.info("collection %s deleted", name)

    def list(self) -> list[CollectionInfo]:
        """Every collection on disk; those this checkpoint cannot serve say why instead of failing."""
        out = []
        for name in self.names():
            try:
                out.append(self.get(name).info())
            except CheckpointMismatch as exc:
                out.append(self._mismatch_info(name, exc))
            except CollectionNotFound:
                continue  # deleted while listing
            except StoreError as exc:
                out.append(CollectionInfo(name=name, status="error", error=str(exc)))
        return out

    def _mismatch_info(self, name: str, exc: CheckpointMismatch) -> CollectionInfo:
        meta: dict[str, str] = {}
        with contextlib.suppress(StoreError):
            meta = files.read_meta(self.path(name))
        return CollectionInfo(
            name=name, status="checkpoint_mismatch", checkpoint_sha256=meta.get("checkpoint_sha256"),
            weights_sha256=meta.get("weights_sha256"),
            created=meta.get("created"), description=meta.get("description") or None,
            size_bytes=files.size_on_disk(self.path(name)), error=str(exc),
        )

    def close(self) -> None:
        with self._lock:
            for col in self._open.values():
                col.close()
            self._open.clear()

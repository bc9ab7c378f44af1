"""Collections on disk: one SQLite file per collection, searched through an in-memory CodeIndex.

Layout: ``<data_dir>/collections/<name>.sqlite3``. Each file holds a ``meta`` table (the
checkpoint sha256 its codes were made with, the model shape, creation time, description)
and an ``items`` table ``(slot INTEGER PRIMARY KEY, id TEXT UNIQUE, codes BLOB, metadata,
text)``. ``slot`` is the item's row in the in-memory :class:`vqvae.search.CodeIndex`, kept
dense (``0..n-1``) by swap-with-last deletion applied identically to both; so string ids live
only in SQLite and the process holds 4 bytes per vector, whatever the id length.

Durability: WAL journal, ``synchronous=FULL`` by default, every write in one ``BEGIN
IMMEDIATE … COMMIT`` that finishes before the caller answers. In WAL mode a commit appends to
the WAL and, with FULL, fsyncs it; a kill -9 after the commit returns cannot lose it (even
NORMAL would survive a process kill, because the bytes are in the OS page cache; FULL adds
power-loss safety). The in-memory index is updated only after the commit, and rebuilt from
SQLite when a collection is opened, so a crash can never leave acknowledged data missing.

Several processes may share a data dir (e.g. the CLI building while the server runs): each
operation first checks ``PRAGMA data_version`` and the file's inode and reloads the index when
another connection changed the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vqvae.search import DEFAULT_BACKEND, Backend, CodeDecoder, CodeIndex, Decoder, swap_remove_plan

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SUFFIX = ".sqlite3"
SCHEMA_VERSION = 1
SQL_CHUNK = 500  # host parameters per IN (...) query
LOAD_CHUNK = 8192  # rows fetched at a time when rebuilding an index (bounds the transient Python objects)
Synchronous = Literal["FULL", "NORMAL", "EXTRA"]


class StoreError(Exception):
    """Base of the store's errors; ``status_code`` is what the HTTP layer answers."""

    status_code = 500


class InvalidName(StoreError):
    status_code = 422


class CollectionNotFound(StoreError):
    status_code = 404


class CollectionExists(StoreError):
    status_code = 409


class CheckpointMismatch(StoreError):
    """The collection's codes were made by another checkpoint: they mean nothing to this one."""

    status_code = 409


class CollectionCorrupt(StoreError):
    status_code = 500


def validate_name(name: str) -> str:
    """A collection name doubles as a file name, so it is restricted to a safe alphabet."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid collection name {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class StoreModel:
    """What the store needs from a loaded model, so tests can vary the checksum alone."""

    sha256: str
    num_heads: int
    codebook_size: int
    codebooks: np.ndarray  # [H, K, D] float32
    latent_unit_heads: bool
    model_config: dict[str, Any]
    decoder: Decoder | None = None

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
        )


@dataclass
class StoredItem:
    id: str
    codes: list[int]
    metadata: dict[str, Any] | None
    text: str | None


@dataclass
class Hit:
    id: str
    score: float
    metadata: dict[str, Any] | None


@dataclass
class UpsertStats:
    inserted: int
    updated: int
    count: int


@dataclass
class CollectionInfo:
    name: str
    status: Literal["ok", "checkpoint_mismatch", "error"]
    count: int | None = None
    checkpoint_sha256: str | None = None
    created: str | None = None
    description: str | None = None
    size_bytes: int | None = None
    model: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _connect(path: Path, synchronous: str, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if readonly else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)
    if not readonly:
        conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def _read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise CollectionCorrupt(f"not a Monolith collection or unreadable: {exc}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(seq: Sequence[Any], size: int = SQL_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


class Collection:
    """One open collection: its SQLite connection, its CodeIndex and the lock around both."""

    def __init__(self, name: str, path: Path, model: StoreModel, synchronous: str, backend: Backend) -> None:
        self.name = name
        self.path = path
        self.model = model
        self._lock = threading.RLock()
        self._closed = False
        meta = read_collection_meta(path)
        check_compatible(name, meta, model)
        self.meta = meta
        self.conn = _connect(path, synchronous)
        self._inode = os.stat(path).st_ino
        self.index = CodeIndex(model.codebooks, backend=backend, latent_unit_heads=model.latent_unit_heads)
        self._data_version = -1
        self._reload()

    # ---- consistency ---------------------------------------------------------------------

    def _reload(self) -> None:
        """Rebuild the index from SQLite (at open, and after another process wrote)."""
        t0 = time.perf_counter()
        self._data_version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        h = self.model.num_heads
        n = self.conn.execute("SELECT count(*) FROM items").fetchone()[0]
        index = CodeIndex(self.model.codebooks, backend=self.index.backend,
                          latent_unit_heads=self.model.latent_unit_heads)
        index.reserve(n)
        cur = self.conn.execute("SELECT slot, codes FROM items ORDER BY slot")
        seen = 0
        dense = True
        while rows := cur.fetchmany(LOAD_CHUNK):
            slots = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            blob = b"".join(r[1] for r in rows)
            if len(blob) != h * len(rows):
                raise CollectionCorrupt(f"collection {self.name!r}: stored codes are not {h} bytes each")
            codes = np.frombuffer(blob, dtype=np.uint8).reshape(-1, h)
            if codes.size and int(codes.max()) >= self.model.codebook_size:
                raise CollectionCorrupt(f"collection {self.name!r}: stored code ≥ {self.model.codebook_size}")
            dense &= bool(np.array_equal(slots, np.arange(seen, seen + len(rows))))
            index.add(codes)
            seen += len(rows)
        if not dense:
            log.warning("collection %s: slots were not dense; renumbering", self.name)
            self._renumber()
        self.index = index
        log.info("collection %s: %d codes loaded in %.2fs", self.name, n, time.perf_counter() - t0)

    def _renumber(self) -> None:
        """Repair: make slots 0..n-1 again, keeping their order (one transaction)."""
        with self._transaction():
            old = [r[0] for r in self.conn.execute("SELECT slot FROM items ORDER BY slot")]
            if not old:
                return
            base = min(old[0], 0) - 1  # park every row below all current slots, then number them
            self.conn.executemany("UPDATE items SET slot = ? WHERE slot = ?",
                                  [(base - i, s) for i, s in enumerate(old)])
            self.conn.executemany("UPDATE items SET slot = ? WHERE slot = ?",
                                  [(i, base - i) for i in range(len(old))])

    def _sync(self) -> None:
        if self._closed:
            raise CollectionNotFound(f"collection {self.name!r} not found (it was deleted)")
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            raise CollectionNotFound(f"collection {self.name!r} not found (it was deleted)") from None
        if inode != self._inode:
            raise CollectionNotFound(f"collection {self.name!r} was replaced on disk; reopen it")
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._reload()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.conn.close()

    # ---- reads ---------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            self._sync()
            return len(self.index)

    def info(self) -> CollectionInfo:
        with self._lock:
            self._sync()
            return CollectionInfo(
                name=self.name,
                status="ok",
                count=len(self.index),
                checkpoint_sha256=self.meta.get("checkpoint_sha256"),
                created=self.meta.get("created"),
                description=self.meta.get("description") or None,
                size_bytes=_size_on_disk(self.path),
                model=json.loads(self.meta.get("model_config", "{}")),
            )

    def get(self, item_id: str) -> StoredItem | None:
        with self._lock:
            self._sync()
            row = self.conn.execute("SELECT id, codes, metadata, text FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            return None
        return StoredItem(id=row[0], codes=list(row[1]), metadata=_loads(row[2]), text=row[3])

    def _slots_of(self, ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for part in _chunks(ids):
            marks = ",".join("?" * len(part))
            found.update(self.conn.execute(f"SELECT id, slot FROM items WHERE id IN ({marks})", part).fetchall())
        return found

    def search(
        self, z_e: np.ndarray, queries: np.ndarray | None, k: int, candidates: int = 0
    ) -> tuple[list[list[Hit]], str]:
        """Top-k hits per query; see :meth:`vqvae.search.CodeIndex.search` for the scores."""
        with self._lock:
            self._sync()
            res = self.index.search(z_e, k, candidates=candidates, queries=queries, decoder=self.model.decoder)
            wanted = np.unique(res.rows[res.rows >= 0]).tolist()
            found: dict[int, tuple[str, str | None]] = {}
            for part in _chunks(wanted):
                marks = ",".join("?" * len(part))
                for slot, item_id, meta in self.conn.execute(
                    f"SELECT slot, id, metadata FROM items WHERE slot IN ({marks})", part
                ):
                    found[slot] = (item_id, meta)
        parsed: dict[int, dict[str, Any] | None] = {}
        hits: list[list[Hit]] = []
        for rows, scores in zip(res.rows.tolist(), res.scores.tolist(), strict=True):
            out = []
            for row, score in zip(rows, scores, strict=True):
                if row < 0:
                    break
                if row not in found:  # cannot happen while slots and rows agree; never invent hits
                    log.error("collection %s: row %d has no item", self.name, row)
                    continue
                if row not in parsed:
                    parsed[row] = _loads(found[row][1])
                out.append(Hit(id=found[row][0], score=float(score), metadata=parsed[row]))
            hits.append(out)
        return hits, res.metric

    # ---- writes --------------------------------------------------------------------------

    def upsert(
        self,
        ids: Sequence[str],
        codes: np.ndarray,
        metadata: Sequence[str | dict[str, Any] | None] | None = None,
        texts: Sequence[str | None] | None = None,
    ) -> UpsertStats:
        """Insert or replace items (a known id keeps its row). ``metadata``: JSON objects as
        dicts or as JSON text (the server passes text it has already size-checked).

        Durable when this returns: the transaction has committed.
        """
        ids = list(ids)
        n_items = len(ids)
        metadata = [_dumps(m) for m in metadata] if metadata is not None else [None] * n_items
        texts = list(texts) if texts is not None else [None] * n_items
        codes = self.index._check(codes)
        if not (len(codes) == len(metadata) == len(texts) == n_items):
            raise ValueError("ids, codes, metadata and texts must have the same length")
        if len(set(ids)) != n_items:
            raise ValueError("duplicate ids in one upsert")
        blobs = [row.tobytes() for row in codes]
        with self._lock:
            self._sync()
            with self._transaction():
                existing = self._slots_of(ids)
                n = len(self.index)
                upd_pos = [i for i, item_id in enumerate(ids) if item_id in existing]
                new_pos = [i for i, item_id in enumerate(ids) if item_id not in existing]
                self.conn.executemany(
                    "UPDATE items SET codes = ?, metadata = ?, text = ? WHERE slot = ?",
                    [(blobs[i], metadata[i], texts[i], existing[ids[i]]) for i in upd_pos],
                )
                self.conn.executemany(
                    "INSERT INTO items (slot, id, codes, metadata, text) VALUES (?, ?, ?, ?, ?)",
                    [(n + j, ids[i], blobs[i], metadata[i], texts[i]) for j, i in enumerate(new_pos)],
                )
            try:
                if upd_pos:
                    self.index.replace([existing[ids[i]] for i in upd_pos], codes[upd_pos])
                if new_pos:
                    self.index.add(codes[new_pos])
            except BaseException:
                log.exception("collection %s: index update failed after commit; reloading", self.name)
                self._reload()
                raise
            return UpsertStats(inserted=len(new_pos), updated=len(upd_pos), count=len(self.index))

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete items; returns the ids that existed. Durable when this returns."""
        ids = list(dict.fromkeys(ids))
        with self._lock:
            self._sync()
            with self._transaction():
                found = self._slots_of(ids)
                if not found:
                    return []
                slots = list(found.values())
                for part in _chunks(slots):
                    self.conn.execute(f"DELETE FROM items WHERE slot IN ({','.join('?' * len(part))})", part)
                moves = swap_remove_plan(len(self.index), slots)
                self.conn.executemany("UPDATE items SET slot = ? WHERE slot = ?", [(d, s) for s, d in moves])
            try:
                applied = self.index.remove(slots)
                if applied != moves:
                    raise RuntimeError("index moves differ from stored moves")
            except BaseException:
                log.exception("collection %s: index update failed after commit; reloading", self.name)
                self._reload()
                raise
            return [i for i in ids if i in found]

    def set_description(self, description: str) -> None:
        with self._lock:
            self._sync()
            with self._transaction():
                self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('description', ?)", (description,))
            self.meta["description"] = description


def _dumps(meta: str | dict[str, Any] | None) -> str | None:
    if meta is None or isinstance(meta, str):
        return meta
    return json.dumps(meta, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _loads(raw: str | None) -> dict[str, Any] | None:
    return None if raw is None else json.loads(raw)


def _size_on_disk(path: Path) -> int:
    total = 0
    for p in (path, Path(f"{path}-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def read_collection_meta(path: Path) -> dict[str, str]:
    """The meta table, read through a read-only connection: opening never writes."""
    if not path.is_file():
        raise CollectionNotFound(f"collection {path.stem!r} not found")
    try:
        conn = _connect(path, "FULL", readonly=True)
    except sqlite3.Error as exc:
        raise CollectionCorrupt(f"collection {path.stem!r} cannot be opened: {exc}") from exc
    try:
        return _read_meta(conn)
    finally:
        conn.close()


def check_compatible(name: str, meta: dict[str, str], model: StoreModel) -> None:
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise CollectionCorrupt(
            f"collection {name!r} has storage schema version {version}; this Monolith reads {SCHEMA_VERSION}"
        )
    recorded = meta.get("checkpoint_sha256")
    if recorded != model.sha256:
        raise CheckpointMismatch(
            f"collection {name!r} was encoded with checkpoint sha256 {recorded} but this server runs "
            f"{model.sha256}; codes from one checkpoint mean nothing to another. Serve it with the "
            "checkpoint it was built with (MONOLITH_CHECKPOINT), or delete and rebuild it. "
            "The collection was not modified."
        )


class Store:
    """All collections under ``<data_dir>/collections``, opened lazily and cached."""

    def __init__(
        self,
        data_dir: Path | str,
        model: StoreModel,
        synchronous: Synchronous = "FULL",
        backend: Backend = DEFAULT_BACKEND,
    ) -> None:
        self.root = Path(data_dir) / "collections"
        self.root.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.synchronous = synchronous
        self.backend = backend
        self._open: dict[str, Collection] = {}
        self._lock = threading.RLock()

    def path(self, name: str) -> Path:
        return self.root / f"{validate_name(name)}{SUFFIX}"

    def names(self) -> list[str]:
        return sorted(p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}") if NAME_RE.fullmatch(p.stem))

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
                    with col._lock:
                        col._sync()
                    return col
                except CollectionNotFound:
                    col.close()
                    del self._open[name]
            col = Collection(name, path, self.model, self.synchronous, self.backend)
            self._open[name] = col
            return col

    def create(self, name: str, description: str | None = None) -> tuple[Collection, bool]:
        """Create a collection (atomically: built under a temp name, then hard-linked into
        place, which fails if the name exists). Returns it and whether it is new."""
        path = self.path(name)
        with self._lock:
            if path.exists():
                col = self.get(name)
                if description is not None and description != col.meta.get("description"):
                    col.set_description(description)
                return col, False
            tmp = self.root / f".{name}.{uuid.uuid4().hex}.creating"
            try:
                self._init_file(tmp, description)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return self.get(name), False
                _fsync_dir(self.root)
            finally:
                for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            log.info("collection %s created", name)
            return self.get(name), True

    def _init_file(self, tmp: Path, description: str | None) -> None:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN")
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
            conn.execute(
                "CREATE TABLE items (slot INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
                f"codes BLOB NOT NULL CHECK (length(codes) = {int(self.model.num_heads)}), "
                "metadata TEXT, text TEXT)"
            )
            meta = {
                "schema_version": str(SCHEMA_VERSION),
                "checkpoint_sha256": self.model.sha256,
                "model_config": json.dumps(self.model.model_config, sort_keys=True),
                "num_heads": str(self.model.num_heads),
                "codebook_size": str(self.model.codebook_size),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "description": description or "",
            }
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            conn.execute("COMMIT")
        finally:
            conn.close()

    def drop(self, name: str) -> None:
        path = self.path(name)
        with self._lock:
            col = self._open.pop(name, None)
            if col is not None:
                col.close()
            if not path.exists():
                raise CollectionNotFound(f"collection {name!r} not found")
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            _fsync_dir(self.root)
            log.info("collection %s deleted", name)

    def list(self) -> list[CollectionInfo]:
        """Every collection on disk; those this checkpoint cannot serve say why instead of failing."""
        out = []
        for name in self.names():
            try:
                out.append(self.get(name).info())
            except CheckpointMismatch as exc:
                meta = _safe_meta(self.path(name))
                out.append(CollectionInfo(
                    name=name, status="checkpoint_mismatch", checkpoint_sha256=meta.get("checkpoint_sha256"),
                    created=meta.get("created"), description=meta.get("description") or None,
                    size_bytes=_size_on_disk(self.path(name)), error=str(exc),
                ))
            except CollectionNotFound:
                continue  # deleted while listing
            except StoreError as exc:
                out.append(CollectionInfo(name=name, status="error", error=str(exc)))
        return out

    def close(self) -> None:
        with self._lock:
            for col in self._open.values():
                col.close()
            self._open.clear()


def _safe_meta(path: Path) -> dict[str, str]:
    try:
        return read_collection_meta(path)
    except StoreError:
        return {}

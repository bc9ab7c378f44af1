"""One open collection: its SQLite file (``files``) and the in-memory CodeIndex searched in its place.

The index is updated only after SQLite commits, and rebuilt from SQLite when a collection
is opened, so a crash can never leave acknowledged data missing from a restarted server.
Rows of the index are the ``slot`` column, kept dense (``0..n-1``) by swap-with-last
deletion: one plan (``vqvae.search.swap_remove_plan``) is written to SQLite, then applied
to the index.

Several processes may share a data dir (e.g. the CLI building while the server runs): each
operation first checks ``PRAGMA data_version`` and the file's inode and reloads the index when
another connection changed the file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from service.collections import files
from service.collections.errors import CollectionCorrupt, CollectionNotFound
from vqvae.decoding import CodeDecoder
from vqvae.search import Backend, CodeIndex, Decoder, swap_remove_plan

log = logging.getLogger(__name__)

T = TypeVar("T")

LOAD_CHUNK = 8192  # rows fetched at a time when rebuilding an index (bounds the transient Python objects)


@dataclass(frozen=True)
class StoreModel:
    """What collections need from a loaded model, so tests can vary the checksum alone."""

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

    def file_meta(self) -> dict[str, str]:
        """What a new collection file records about the model its codes belong to."""
        return {
            "checkpoint_sha256": self.sha256,
            "model_config": json.dumps(self.model_config, sort_keys=True),
            "num_heads": str(self.num_heads),
            "codebook_size": str(self.codebook_size),
        }


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


class Collection:
    """One open collection: its SQLite connection, its CodeIndex and the lock around both."""

    def __init__(self, name: str, path: Path, model: StoreModel, synchronous: str, backend: Backend) -> None:
        self.name = name
        self.path = path
        self.model = model
        self._lock = threading.RLock()
        self._closed = False
        meta = files.read_meta(path)
        files.check_compatible(name, meta, model.sha256)
        self.meta = meta
        self.conn = files.connect(path, synchronous)
        self._inode = os.stat(path).st_ino
        self.index = self._new_index(backend)
        self._data_version = -1
        self._reload()

    def _new_index(self, backend: Backend) -> CodeIndex:
        return CodeIndex(self.model.codebooks, backend=backend, latent_unit_heads=self.model.latent_unit_heads)

    # ---- consistency ---------------------------------------------------------------------

    def _reload(self) -> None:
        """Rebuild the index from SQLite (at open, and after another process wrote)."""
        t0 = time.perf_counter()
        self._data_version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        n = self.conn.execute("SELECT count(*) FROM items").fetchone()[0]
        index = self._new_index(self.index.backend)
        index.reserve(n)
        cur = self.conn.execute("SELECT slot, codes FROM items ORDER BY slot")
        seen = 0
        dense = True
        while rows := cur.fetchmany(LOAD_CHUNK):
            slots = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            index.add(self._stored_codes(rows))
            dense &= bool(np.array_equal(slots, np.arange(seen, seen + len(rows))))
            seen += len(rows)
        if not dense:
            log.warning("collection %s: slots were not dense; renumbering", self.name)
            self._renumber()
        self.index = index
        log.info("collection %s: %d codes loaded in %.2fs", self.name, n, time.perf_counter() - t0)

    def _stored_codes(self, rows: list[tuple[int, bytes]]) -> np.ndarray:
        """uint8 [len(rows), H] from stored blobs, refusing any the model could not have made."""
        h = self.model.num_heads
        blob = b"".join(r[1] for r in rows)
        if len(blob) != h * len(rows):
            raise CollectionCorrupt(f"collection {self.name!r}: stored codes are not {h} bytes each")
        codes = np.frombuffer(blob, dtype=np.uint8).reshape(-1, h)
        if codes.size and int(codes.max()) >= self.model.codebook_size:
            raise CollectionCorrupt(f"collection {self.name!r}: stored code ≥ {self.model.codebook_size}")
        return codes

    def _renumber(self) -> None:
        """Repair: make slots 0..n-1 again, keeping their order (one transaction)."""
        with files.transaction(self.conn):
            old = [r[0] for r in self.conn.execute("SELECT slot FROM items ORDER BY slot")]
            if not old:
                return
            base = min(old[0], 0) - 1  # park every row below all current slots, then number them
            self.conn.executemany("UPDATE items SET slot = ? WHERE slot = ?",
                                  [(base - i, s) for i, s in enumerate(old)])
            self.conn.executemany("UPDATE items SET slot = ? WHERE slot = ?",
                                  [(i, base - i) for i in range(len(old))])

    def sync(self) -> None:
        """Raise ``CollectionNotFound`` if the file went away; reload if another process wrote."""
        with self._lock:
            if self._closed:
                raise CollectionNotFound(f"collection {self.name!r} not found (it was deleted)")
            try:
                inode = os.stat(self.path).st_ino
            except FileNotFoundError:
                raise CollectionNotFound(f"collection {self.name!r} not found (it was deleted)") from None
            if inode != self._inode:
                raise CollectionNotFound(f"collection {self.name!r} was replaced on disk; reopen it")
            if self.conn.execute("PRAGMA data_version").fetchone()[0] != self._data_version:
                self._reload()

    def _after_commit(self, update: Callable[..., T], *args: Any) -> T:
        """Apply a committed write to the index; if that fails, rebuild it from SQLite (which
        has the write), so the index never disagrees with what was acknowledged."""
        try:
            return update(*args)
        except BaseException:
            log.exception("collection %s: index update failed after commit; reloading", self.name)
            self._reload()
            raise

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.conn.close()

    # ---- reads ---------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            self.sync()
            return len(self.index)

    def info(self) -> CollectionInfo:
        with self._lock:
            self.sync()
            return CollectionInfo(
                name=self.name,
                status="ok",
                count=len(self.index),
                checkpoint_sha256=self.meta.get("checkpoint_sha256"),
                created=self.meta.get("created"),
                description=self.meta.get("description") or None,
                size_bytes=files.size_on_disk(self.path),
                model=json.loads(self.meta.get("model_config", "{}")),
            )

    def get(self, item_id: str) -> StoredItem | None:
        with self._lock:
            self.sync()
            row = self.conn.execute("SELECT id, codes, metadata, text FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            return None
        return StoredItem(id=row[0], codes=list(row[1]), metadata=files.loads(row[2]), text=row[3])

    def _slots_of(self, ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for part in files.chunks(ids):
            marks = ",".join("?" * len(part))
            found.update(self.conn.execute(f"SELECT id, slot FROM items WHERE id IN ({marks})", part).fetchall())
        return found

    def _items_at(self, slots: list[int]) -> dict[int, tuple[str, str | None]]:
        found: dict[int, tuple[str, str | None]] = {}
        for part in files.chunks(slots):
            marks = ",".join("?" * len(part))
            for slot, item_id, meta in self.conn.execute(
                f"SELECT slot, id, metadata FROM items WHERE slot IN ({marks})", part
            ):
                found[slot] = (item_id, meta)
        return found

    def search(
        self, z_e: np.ndarray, queries: np.ndarray | None, k: int, candidates: int = 0
    ) -> tuple[list[list[Hit]], str]:
        """Top-k hits per query; see :meth:`vqvae.search.CodeIndex.search` for the scores."""
        with self._lock:
            self.sync()
            res = self.index.search(z_e, k, candidates=candidates, queries=queries, decoder=self.model.decoder)
            found = self._items_at(np.unique(res.rows[res.rows >= 0]).tolist())
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
                    parsed[row] = files.loads(found[row][1])
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
        metadata = [files.dumps(m) for m in metadata] if metadata is not None else [None] * n_items
        texts = list(texts) if texts is not None else [None] * n_items
        codes = self.index._check(codes)
        if not (len(codes) == len(metadata) == len(texts) == n_items):
            raise ValueError("ids, codes, metadata and texts must have the same length")
        if len(set(ids)) != n_items:
            raise ValueError("duplicate ids in one upsert")
        blobs = [row.tobytes() for row in codes]
        with self._lock:
            self.sync()
            with files.transaction(self.conn):
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
            self._after_commit(self._index_upsert, [existing[ids[i]] for i in upd_pos], codes[upd_pos],
                               codes[new_pos])
            return UpsertStats(inserted=len(new_pos), updated=len(upd_pos), count=len(self.index))

    def _index_upsert(self, rows: list[int], replaced: np.ndarray, added: np.ndarray) -> None:
        if rows:
            self.index.replace(rows, replaced)
        if len(added):
            self.index.add(added)

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete items; returns the ids that existed. Durable when this returns."""
        ids = list(dict.fromkeys(ids))
        with self._lock:
            self.sync()
            with files.transaction(self.conn):
                found = self._slots_of(ids)
                if not found:
                    return []
                slots = list(found.values())
                for part in files.chunks(slots):
                    self.conn.execute(f"DELETE FROM items WHERE slot IN ({','.join('?' * len(part))})", part)
                moves = swap_remove_plan(len(self.index), slots)
                self.conn.executemany("UPDATE items SET slot = ? WHERE slot = ?", [(d, s) for s, d in moves])
            self._after_commit(self.index.remove, slots, moves)
            return [i for i in ids if i in found]

    def set_description(self, description: str) -> None:
        with self._lock:
            self.sync()
            with files.transaction(self.conn):
                self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('description', ?)", (description,))
            self.meta["description"] = description

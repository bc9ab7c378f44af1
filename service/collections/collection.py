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

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from service.collections import files, fitted, partitions, vectors
from service.collections.binding import StoreModel, check_compatible
from service.collections.errors import (
    CollectionBusy,
    CollectionCorrupt,
    CollectionNotFound,
    ModelChanged,
    NoKeptVectors,
)
from service.collections.filters import Filter, MetadataColumns
from vqvae.api import Monolith
from vqvae.health import CodebookHealth, codebook_health, count_codes
from vqvae.ivf import IVFCodeIndex
from vqvae.search import Backend, CodeIndex, SearchResult, rerank_by_cosine, swap_remove_plan

log = logging.getLogger(__name__)

T = TypeVar("T")

LOAD_CHUNK = 8192  # rows fetched at a time when rebuilding an index (bounds the transient Python objects)


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
    text: str | None = None


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
    weights_sha256: str | None = None
    created: str | None = None
    description: str | None = None
    size_bytes: int | None = None
    model: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    index: dict[str, Any] = field(default_factory=dict)  # kind and, for IVF, lists/probe (``partitions``)
    vectors: str | None = None  # kept vectors: int8, float16 or none (``vectors``)
    bytes_per_item: dict[str, float] | None = None  # RAM and disk per item
    auto_fit: bool | None = None  # fits itself as it grows (``fitting``)
    fit: dict[str, Any] | None = None  # its own model and the fair report of the fit that made it


def _binding(meta: dict[str, str]) -> tuple[str | None, ...]:
    """What in ``meta`` says which model made the codes."""
    return meta.get(fitted.META_KEY), meta.get("weights_sha256"), meta.get("checkpoint_sha256")


class Collection:
    """One open collection: its SQLite connection, its CodeIndex and the lock around both."""

    def __init__(self, name: str, path: Path, model: StoreModel, synchronous: str, backend: Backend) -> None:
        self.name = name
        self.path = path
        self.server_model = model
        self.own: Monolith | None = None  # the collection's own model, once fitted (``fitted``)
        self._lock = threading.RLock()
        self._closed = False
        meta = files.read_meta(path)
        self.model = self._model_for(meta)
        self.meta = meta
        self.conn = files.connect(path, synchronous)
        files.upgrade(self.conn, self.meta)  # a version 1 file gains the (empty) vector column
        self._inode = os.stat(path).st_ino
        self.index = self._new_index(backend)
        self.columns = MetadataColumns()  # metadata of the keys filters use, by row (``filters``)
        self._data_version = -1
        self._reload()

    def _model_for(self, meta: dict[str, str]) -> StoreModel:
        """The model whose codes the file holds: its own fitted model where ``meta`` names one
        (``fitted``), else the server's checkpoint, which must be the one that made them."""
        own = meta.get(fitted.META_KEY)
        if not own:
            check_compatible(self.name, meta, self.server_model)
            self.own = None
            return self.server_model
        files.check_schema(self.name, meta)
        self.own, model = fitted.store_model(self.path, own)
        if not model.made(meta):
            raise CollectionCorrupt(f"collection {self.name!r}: its codes name weights {meta.get('weights_sha256')} "
                                    f"but its fitted model is {own}")
        return model

    @property
    def encoder(self) -> Monolith | None:
        """The collection's own model when it has one (encode its items and queries with it);
        None: the server's."""
        return self.own

    def check_encoded_with(self, weights_sha256: str | None) -> None:
        """``ModelChanged`` when codes or query latents made by ``weights_sha256`` are not the
        collection's model's any more (a fit switched in between); the caller encodes again."""
        if weights_sha256 is not None and weights_sha256 != self.model.weights_sha256:
            raise ModelChanged(f"collection {self.name!r} switched to model {self.model.weights_sha256} meanwhile")

    @property
    def vector_kind(self) -> str:
        """What the collection keeps of each input vector (``vectors.KINDS``)."""
        return self.meta.get(vectors.META_KEY, "none")

    def _new_index(self, backend: Backend) -> CodeIndex | IVFCodeIndex:
        """Flat, or partitioned as the collection's meta says (``partitions``)."""
        return partitions.new_index(self.model, self.meta, backend)

    def _codes_at(self, slots: Sequence[int]) -> dict[int, bytes]:
        """The stored codes of ``slots`` (a partitioned index finds an entry from its codes)."""
        found: dict[int, bytes] = {}
        for part in files.chunks(list(slots)):
            marks = ",".join("?" * len(part))
            found.update(self.conn.execute(f"SELECT slot, codes FROM items WHERE slot IN ({marks})", part))
        return found

    # ---- consistency ---------------------------------------------------------------------

    def _reload(self) -> None:
        """Rebuild the index from SQLite (at open, and after another process wrote)."""
        t0 = time.perf_counter()
        self._data_version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())  # index config may change
        if _binding(meta) != _binding(self.meta):  # a fit or a migration switched the model
            self.model = self._model_for(meta)
        self.meta = meta
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
        if isinstance(index, IVFCodeIndex):
            index.finish_load()  # loaded by chunks: allocate each list once, at its size
        self.index = index
        self.columns.reset(n)
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

    @contextlib.contextmanager
    def switching(self, reload: bool = True) -> Iterator[sqlite3.Connection]:
        """The collection's connection with its lock held, for a job that switches its codes and
        model in one transaction (a fit): no write or search of this process runs meanwhile, and
        the index and model are rebuilt from the file when the block ends (``reload=False``: for
        changes that leave items and meta alone, such as the fit's write tracking)."""
        with self._lock:
            self.sync()
            try:
                yield self.conn
            finally:
                if reload:
                    self._reload()

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
                weights_sha256=self.meta.get("weights_sha256"),
                created=self.meta.get("created"),
                description=self.meta.get("description") or None,
                size_bytes=files.size_on_disk(self.path),
                model=json.loads(self.meta.get("model_config", "{}")),
                index=partitions.describe(self.index, self.meta),
                vectors=self.vector_kind,
                bytes_per_item=self._bytes_per_item(),
                auto_fit=self.meta.get("auto_fit", "true") == "true",
                fit=self._fit_info(),
            )

    def _fit_info(self) -> dict[str, Any] | None:
        """The collection's own model (weights, provenance) and the report of the fit that made it
        (or of the last fit, when it was not applied); None before any fit."""
        report = json.loads(self.meta[fitted.REPORT_KEY]) if self.meta.get(fitted.REPORT_KEY) else None
        if self.own is None and report is None:
            return None
        model = None
        if self.own is not None:
            prov = self.own.checkpoint.metadata.get("provenance") or {}
            model = {"weights_sha256": self.model.weights_sha256, "fitted_from": prov.get("fitted_from"),
                     "fitted_from_weights_sha256": prov.get("fitted_from_weights_sha256"),
                     "rows": (prov.get("fit") or {}).get("rows"), "created": (prov.get("fit") or {}).get("created"),
                     "recipe": (prov.get("fit") or {}).get("recipe")}
        return {"model": model, "report": report}

    def _bytes_per_item(self) -> dict[str, float]:
        """RAM: the index's bytes (codes, and lists for IVF) per item; disk: the file per item,
        and what one kept vector takes of it."""
        n = max(len(self.index), 1)
        return {"ram": round(self.index.nbytes / n, 2), "disk": round(files.size_on_disk(self.path) / n, 1),
                "vector": float(vectors.row_bytes(self.vector_kind, self.model.input_dim))}

    def codebook_health(self) -> CodebookHealth:
        """Usage, entropy and Zipf fit of the collection's codes, per head, under its model."""
        counts = np.zeros((self.model.num_heads, self.model.codebook_size), dtype=np.int64)
        with self._lock:
            self.sync()
            cur = self.conn.execute("SELECT slot, codes FROM items")
            while rows := cur.fetchmany(LOAD_CHUNK):
                counts += count_codes(self._stored_codes(rows), self.model.codebook_size)
        return codebook_health(counts)

    def get(self, item_id: str) -> StoredItem | None:
        with self._lock:
            self.sync()
            row = self.conn.execute("SELECT id, codes, metadata, text FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            return None
        return StoredItem(id=row[0], codes=list(row[1]), metadata=files.loads(row[2]), text=row[3])

    def get_many(self, ids: Sequence[str]) -> dict[str, StoredItem]:
        """The items of those ``ids`` that exist, by id (one read transaction: a consistent view)."""
        found: dict[str, StoredItem] = {}
        with self._lock:
            self.sync()
            with files.read_snapshot(self.conn):
                for part in files.chunks(list(dict.fromkeys(ids))):
                    marks = ",".join("?" * len(part))
                    for row in self.conn.execute(
                        f"SELECT id, codes, metadata, text FROM items WHERE id IN ({marks})", part
                    ):
                        found[row[0]] = StoredItem(id=row[0], codes=list(row[1]), metadata=files.loads(row[2]),
                                                   text=row[3])
        return found

    def page(self, limit: int, after: str | None = None,
             flt: Filter | None = None) -> tuple[list[StoredItem], str | None]:
        """Up to ``limit`` items in id order, after the id ``after``; and the id to continue
        after (None when this page is the last). Keyset pagination: each page is a fresh
        indexed query, so concurrent writes never make a listing skip or repeat an item that
        stays in the collection (items added or deleted meanwhile may or may not be seen).
        ``flt``: only items whose metadata match (evaluated on the in-memory columns first)."""
        with self._lock:
            self.sync()
            if flt is not None:
                rows = self._filtered_page(limit + 1, after, flt)
            elif after is None:
                cur = self.conn.execute("SELECT id, codes, metadata, text FROM items ORDER BY id LIMIT ?", (limit + 1,))
                rows = cur.fetchall()
            else:
                cur = self.conn.execute("SELECT id, codes, metadata, text FROM items WHERE id > ? ORDER BY id LIMIT ?",
                                        (after, limit + 1))
                rows = cur.fetchall()
        items = [StoredItem(id=r[0], codes=list(r[1]), metadata=files.loads(r[2]), text=r[3]) for r in rows[:limit]]
        return items, (items[-1].id if len(rows) > limit else None)

    def count(self, flt: Filter | None = None) -> int:
        """Items whose metadata match ``flt`` (every item without one), from the in-memory columns."""
        with self._lock:
            self.sync()
            if flt is None:
                return len(self.index)
            return int(np.count_nonzero(self.columns.mask(flt, self.conn)))

    def _filtered_page(self, want: int, after: str | None, flt: Filter) -> list[tuple[Any, ...]]:
        """(id, codes, metadata, text) of the first ``want`` matching items after ``after``, in id
        order (lock held). The mask comes first; then whichever reads fewer rows: walking the id
        index keeping matching rows (about want · n / matched rows), or reading the matching rows'
        ids and sorting them (matched rows). Python's str order is SQLite's: UTF-8 keeps code point order."""
        mask = self.columns.mask(flt, self.conn)  # bool [n]
        n, matched = len(mask), int(np.count_nonzero(mask))
        if matched == 0:
            return []
        with files.read_snapshot(self.conn):
            if want * n <= matched * matched:
                picked = self._walk_ids(mask, want, after)
            else:
                slots = json.dumps(np.flatnonzero(mask).tolist())
                pairs = self.conn.execute(
                    "SELECT id, slot FROM items WHERE slot IN (SELECT value FROM json_each(?))", (slots,)).fetchall()
                pairs.sort()
                picked = [slot for item_id, slot in pairs if after is None or item_id > after][:want]
            found = {r[0]: r[1:] for r in self.conn.execute(
                "SELECT slot, id, codes, metadata, text FROM items WHERE slot IN (SELECT value FROM json_each(?))",
                (json.dumps(picked),))}
        return [found[s] for s in picked if s in found]

    def _walk_ids(self, mask: np.ndarray, want: int, after: str | None) -> list[int]:
        """The slots of the first ``want`` rows after ``after`` in id order that ``mask`` admits."""
        if after is None:
            cur = self.conn.execute("SELECT slot FROM items ORDER BY id")
        else:
            cur = self.conn.execute("SELECT slot FROM items WHERE id > ? ORDER BY id", (after,))
        picked: list[int] = []
        chunk = min(LOAD_CHUNK, max(64, want * 4))
        while len(picked) < want and (batch := cur.fetchmany(chunk)):
            slots = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch))
            slots = slots[slots < len(mask)]  # rows another process added since the mask: not judged
            picked += slots[mask[slots]][: want - len(picked)].tolist()
            chunk = LOAD_CHUNK
        cur.close()
        return picked

    def _slots_of(self, ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for part in files.chunks(ids):
            marks = ",".join("?" * len(part))
            found.update(self.conn.execute(f"SELECT id, slot FROM items WHERE id IN ({marks})", part).fetchall())
        return found

    def _items_at(self, slots: list[int]) -> dict[int, tuple[str, str | None, str | None]]:
        found: dict[int, tuple[str, str | None, str | None]] = {}
        for part in files.chunks(slots):
            marks = ",".join("?" * len(part))
            for slot, item_id, meta, text in self.conn.execute(
                f"SELECT slot, id, metadata, text FROM items WHERE slot IN ({marks})", part
            ):
                found[slot] = (item_id, meta, text)
        return found

    def prepare_filter(self, flt: Filter | None) -> None:
        """Build the in-memory columns ``flt`` needs (a scan of the file, the first time a key
        is filtered on), so that the search itself, on the model thread, only evaluates it; and
        refuse a filter the collection shows to be a mistake (``InvalidFilter``) before the
        queries are encoded."""
        if flt is not None:
            with self._lock:
                self.sync()
                self.columns.check(flt, self.conn)

    def search(
        self,
        z_e: np.ndarray,
        queries: np.ndarray | None,
        k: int,
        candidates: int = 0,
        flt: Filter | None = None,
        score_threshold: float | None = None,
        probe: int | None = None,
        rescore: bool = False,
        encoded_with: str | None = None,
    ) -> tuple[list[list[Hit]], str]:
        """Top-k hits per query; see :meth:`vqvae.search.CodeIndex.search` for the scores.

        ``flt``: only items whose metadata match are scanned (the filter runs before the
        scan, so k hits come back whenever k items match); ``score_threshold``: hits scoring
        below it are left out. ``probe``: lists a partitioned collection visits (flat ones scan all).
        ``rescore``: the top ``candidates`` of the scan are ranked by exact cosine with their kept
        vectors (``NoKeptVectors`` where the collection keeps none); otherwise ``candidates`` > 0
        re-ranks them by their decoded codes.
        """
        if rescore and self.vector_kind == "none":
            raise NoKeptVectors(f"collection {self.name!r} keeps no vectors, so it cannot rescore exactly; search "
                                "with rescore=false, or create the collection with \"vectors\": \"int8\" or "
                                "\"float16\" and upsert its items again")
        with self._lock:
            self.sync()
            self.check_encoded_with(encoded_with)
            res = self._scan(z_e, queries, k, candidates, flt, probe, rescore)
            found = self._items_at(np.unique(res.rows[res.rows >= 0]).tolist())
        return self._hits(res, found, score_threshold), res.metric

    def _scan(self, z_e: np.ndarray, queries: np.ndarray | None, k: int, candidates: int, flt: Filter | None,
              probe: int | None, rescore: bool) -> SearchResult:
        """The index's answer (with the lock held): ADC, then re-ranked or rescored."""
        extra = {"probe": probe} if isinstance(self.index, IVFCodeIndex) else {}
        rows = self.columns.mask(flt, self.conn) if flt is not None else None  # bool [n]
        if rows is not None and isinstance(self.index, IVFCodeIndex):
            rows = np.flatnonzero(rows)  # the partitioned index takes row numbers
        if not (rescore and candidates > 0):
            return self.index.search(z_e, k, candidates=candidates, queries=queries, decoder=self.model.decoder,
                                     rows=rows, **extra)
        if queries is None:
            raise ValueError("exact rescoring needs the query embeddings")
        shortlist = self.index.search(z_e, max(candidates, k), rows=rows, **extra)
        return rerank_by_cosine(queries, shortlist.rows, k, lambda r: self.kept_vectors(r, scaled=False))

    def kept_vectors(self, rows: np.ndarray, scaled: bool = True) -> np.ndarray:
        """float32 [len(rows), d]: the kept vectors of ``rows`` (slots), read from the file in one
        query (rescoring reads thousands per search; json_each binds them as one parameter); rows
        stored without one (imported from an older export) give their decoded codes instead.
        ``scaled=False``: int8 rows each off by a positive factor, which no cosine sees."""
        uniq, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
        got = self.conn.execute("SELECT slot, vector FROM items WHERE slot IN (SELECT value FROM json_each(?))",
                                (json.dumps(uniq.tolist()),)).fetchall()
        if len(got) != len(uniq):
            raise CollectionCorrupt(f"collection {self.name!r}: {len(uniq) - len(got)} rows of the index have no item")
        order = np.argsort(np.fromiter((r[0] for r in got), dtype=np.int64, count=len(got)))
        pick = order[inverse.reshape(-1)]  # fetched row of each asked row: one gather at the end
        dim = self.model.input_dim
        lack = [i for i, r in enumerate(got) if r[1] is None]
        if not lack:
            return vectors.unpack(self.vector_kind, [r[1] for r in got], dim, scaled)[pick]
        out = np.zeros((len(got), dim), dtype=np.float32)
        have = [i for i, r in enumerate(got) if r[1] is not None]
        if have:
            out[have] = vectors.unpack(self.vector_kind, [got[i][1] for i in have], dim)
        if self.model.decoder is not None:
            stored = self._codes_at([got[i][0] for i in lack])
            codes = self._stored_codes([(0, stored[got[i][0]]) for i in lack])
            out[lack] = self.model.decoder(codes.astype(np.int64))
        return out[pick]

    def _hits(self, res: SearchResult, found: dict[int, tuple[str, str | None, str | None]],
              score_threshold: float | None) -> list[list[Hit]]:
        parsed: dict[int, dict[str, Any] | None] = {}
        hits: list[list[Hit]] = []
        for rows, scores in zip(res.rows.tolist(), res.scores.tolist(), strict=True):
            out = []
            for row, score in zip(rows, scores, strict=True):
                if row < 0 or (score_threshold is not None and score < score_threshold):
                    break  # best first: every later hit scores lower
                if row not in found:  # cannot happen while slots and rows agree; never invent hits
                    log.error("collection %s: row %d has no item", self.name, row)
                    continue
                if row not in parsed:
                    parsed[row] = files.loads(found[row][1])
                out.append(Hit(id=found[row][0], score=float(score), metadata=parsed[row], text=found[row][2]))
            hits.append(out)
        return hits

    # ---- writes --------------------------------------------------------------------------

    def upsert(
        self,
        ids: Sequence[str],
        codes: np.ndarray,
        metadata: Sequence[str | dict[str, Any] | None] | None = None,
        texts: Sequence[str | None] | None = None,
        inputs: np.ndarray | None = None,
        encoded_with: str | None = None,
    ) -> UpsertStats:
        """Insert or replace items (a known id keeps its row). ``metadata``: JSON objects as
        dicts or as JSON text (the server passes text it has already size-checked). ``inputs``:
        the float vectors the codes were made from, kept as the collection's ``vectors`` kind says
        (in the same transaction as the codes). ``encoded_with``: the weights that made ``codes``;
        ``ModelChanged`` if the collection has switched from them (nothing is written).

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
        kept = self._pack_inputs(inputs, n_items)
        with self._lock:
            self.sync()
            self.check_encoded_with(encoded_with)
            with files.transaction(self.conn):
                existing = self._slots_of(ids)
                n = len(self.index)
                upd_pos = [i for i, item_id in enumerate(ids) if item_id in existing]
                new_pos = [i for i, item_id in enumerate(ids) if item_id not in existing]
                old = self._codes_at([existing[ids[i]] for i in upd_pos]) if self._keyed_by_codes() else None
                self.conn.executemany(
                    "UPDATE items SET codes = ?, metadata = ?, text = ?, vector = ? WHERE slot = ?",
                    [(blobs[i], metadata[i], texts[i], kept[i], existing[ids[i]]) for i in upd_pos],
                )
                self.conn.executemany(
                    "INSERT INTO items (slot, id, codes, metadata, text, vector) VALUES (?, ?, ?, ?, ?, ?)",
                    [(n + j, ids[i], blobs[i], metadata[i], texts[i], kept[i]) for j, i in enumerate(new_pos)],
                )
            self._after_commit(self._index_upsert, [existing[ids[i]] for i in upd_pos], codes[upd_pos],
                               codes[new_pos], [metadata[i] for i in upd_pos], [metadata[i] for i in new_pos], old)
            self.train_if_due()
            return UpsertStats(inserted=len(new_pos), updated=len(upd_pos), count=len(self.index))

    def _pack_inputs(self, inputs: np.ndarray | None, n_items: int) -> list[bytes | None]:
        """The blobs to keep for an upsert's input vectors (Nones where none are kept or given)."""
        if inputs is None or self.vector_kind == "none":
            return [None] * n_items
        x = np.asarray(inputs, dtype=np.float32)
        if x.shape != (n_items, self.model.input_dim):
            raise ValueError(f"inputs must have shape [{n_items}, {self.model.input_dim}], got {list(x.shape)}")
        return vectors.pack(self.vector_kind, x)

    def _keyed_by_codes(self) -> bool:
        """Whether the index finds an entry from its codes (partitioned), so writes pass them."""
        return isinstance(self.index, IVFCodeIndex)

    def _index_upsert(self, rows: list[int], replaced: np.ndarray, added: np.ndarray,
                      replaced_meta: list[str | None], added_meta: list[str | None],
                      old: dict[int, bytes] | None = None) -> None:
        if rows:
            if old is not None and isinstance(self.index, IVFCodeIndex):
                self.index.replace(rows, replaced, old_codes=old)
            else:
                self.index.replace(rows, replaced)
            self.columns.replace(rows, replaced_meta)
        if len(added):
            self.index.add(added)
            self.columns.add(added_meta)

    def _index_remove(self, slots: list[int], moves: list[tuple[int, int]],
                      old: dict[int, bytes] | None = None) -> None:
        if old is not None and isinstance(self.index, IVFCodeIndex):
            self.index.remove(slots, moves, codes=old)
        else:
            self.index.remove(slots, moves)
        self.columns.remove(len(slots), moves)

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
                moves = swap_remove_plan(len(self.index), slots)
                old = self._codes_at(sorted(set(slots) | {s for s, _ in moves})) if self._keyed_by_codes() else None
                for part in files.chunks(slots):
                    self.conn.execute(f"DELETE FROM items WHERE slot IN ({','.join('?' * len(part))})", part)
                self.conn.executemany("UPDATE items SET slot = ? WHERE slot = ?", [(d, s) for s, d in moves])
            self._after_commit(self._index_remove, slots, moves, old)
            return [i for i in ids if i in found]

    def delete_matching(self, flt: Filter) -> int:
        """Delete every item whose metadata match ``flt``, in one transaction; returns how many.
        The filter is evaluated on the in-memory columns first (as a search does), so only the
        matching rows are touched. Durable when this returns."""
        with self._lock:
            for _attempt in range(3):
                self.sync()
                slots = np.flatnonzero(self.columns.mask(flt, self.conn)).tolist()
                if not slots:
                    return 0
                with files.transaction(self.conn):
                    if self.conn.execute("PRAGMA data_version").fetchone()[0] != self._data_version:
                        continue  # another process wrote since the mask: judge the filter again
                    moves = swap_remove_plan(len(self.index), slots)
                    old = self._codes_at(sorted(set(slots) | {s for s, _ in moves})) if self._keyed_by_codes() else None
                    self.conn.execute("DELETE FROM items WHERE slot IN (SELECT value FROM json_each(?))",
                                      (json.dumps(slots),))
                    self.conn.executemany("UPDATE items SET slot = ? WHERE slot = ?", [(d, s) for s, d in moves])
                self._after_commit(self._index_remove, slots, moves, old)
                return len(slots)
            raise CollectionBusy(f"collection {self.name!r} kept changing under a delete by filter; retry")

    def train(self, lists: int | None = None) -> dict[str, Any]:
        """(Re-)train a partitioned collection's lists on its stored codes (no re-encoding) and
        persist the centroids; returns what ``info().index`` shows."""
        with self._lock:
            self.sync()
            if not isinstance(self.index, IVFCodeIndex):
                raise ValueError(f"collection {self.name!r} is flat: create it with "
                                 '{"index": {"kind": "ivf"}} (PUT again with that body converts it)')
            rows = partitions.train(self.index, self.meta, lists)
            files.write_meta(self.conn, rows)
            self.meta.update(rows)
            return partitions.describe(self.index, self.meta)

    def train_if_due(self) -> None:
        """Train an untrained IVF collection once it reaches its ``train_at`` (after a commit)."""
        if partitions.due(self.index, self.meta):
            self.train()

    def set_index(self, spec: partitions.IndexSpec) -> bool:
        """Change how the collection is indexed (flat ↔ ivf, other lists): the codes stay, the
        index is rebuilt from them. Returns whether anything changed."""
        with self._lock:
            self.sync()
            if spec.public() == partitions.spec_of(self.meta).public():
                return False
            files.write_meta(self.conn, partitions.meta_for(spec), drop=partitions.META_KEYS)
            self._reload()
            self.train_if_due()
            return True

    def set_meta(self, rows: dict[str, str]) -> None:
        """Set settings rows of ``meta`` (e.g. ``auto_fit``) in one transaction."""
        with self._lock:
            self.sync()
            files.write_meta(self.conn, rows)
            self.meta.update(rows)

    def set_description(self, description: str) -> None:
        with self._lock:
            self.sync()
            with files.transaction(self.conn):
                self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('description', ?)", (description,))
            self.meta["description"] = description

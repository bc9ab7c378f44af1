"""Migration: re-encode a collection for the serving checkpoint from its kept vectors (or texts).

Codes belong to the weights that made them, so a server moved to another checkpoint answers 409
for every collection built with the old one. A migration makes such a collection the new
checkpoint's without rebuilding it from its sources: each item's kept vector (or, where the
collection keeps none, its text, embedded again) is encoded by the serving model.

Crash safety comes from SQLite alone, inside the collection's own file: the new codes are staged
chunk by chunk in a ``migration`` table beside ``items`` (each chunk one transaction), and one
last transaction copies them into ``items``, rewrites the model binding in ``meta`` and drops the
stage. A kill -9 before that commit leaves the collection exactly as it was, on the old
checkpoint (a later migration starts the stage again); after it, the collection is whole on the
new one. A full disk fails a chunk or the switch, rolls it back and leaves the collection as it
was (``StorageFull``, 507). The in-memory index is built from the file when the collection is next
opened, and an IVF collection's lists, whose centroids were codes of the old model, train again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from service.collections import files, fitted, partitions, vectors
from service.collections.binding import made_with
from service.collections.collection import Collection
from service.collections.errors import CollectionBusy, NotMigratable
from service.collections.store import Store

log = logging.getLogger(__name__)

CHUNK = 4096  # items read, encoded and staged per transaction
SHOWN_IDS = 10  # ids named in the 409 for items that cannot be re-encoded


@dataclass
class Chunk:
    """One batch to re-encode: its slots, the kept vectors (rows without one are zero) and the
    positions whose text must be embedded first."""

    slots: list[int]
    x: np.ndarray  # float32 [n, d]
    text_pos: list[int]
    texts: list[str]


@dataclass
class MigrationResult:
    changed: bool  # False when the collection already belonged to the serving checkpoint
    items: int = 0
    from_vectors: int = 0
    from_texts: int = 0
    seconds: float = 0.0
    previous: dict[str, str] = field(default_factory=dict)  # the binding it had before

    def public(self) -> dict[str, Any]:
        return {"changed": self.changed, "items": self.items, "from_vectors": self.from_vectors,
                "from_texts": self.from_texts, "seconds": round(self.seconds, 3), "previous": self.previous}


class Migration:
    """One running migration; :meth:`open` it, feed it chunks, then :meth:`finish` (or :meth:`abort`).

    Drivers differ only in how they embed and encode (the server through its model worker, the
    CLI in process), so the stepping lives here and :func:`run` is the synchronous driver."""

    def __init__(self, store: Store, name: str) -> None:
        self.store, self.name = store, name
        self.path = store.path(name)
        self.meta = files.read_meta(self.path)
        files.check_schema(name, self.meta)
        self.current = store.model.made(self.meta)
        self.result = MigrationResult(changed=not self.current)
        self._t0 = time.perf_counter()
        self._after = -1
        self.conn: sqlite3.Connection | None = None
        self._claimed = False

    @classmethod
    def open(cls, store: Store, name: str) -> Migration:
        """Claim the collection (``CollectionBusy`` while another migration runs) and check that
        every item can be re-encoded (``NotMigratable`` naming those that cannot)."""
        mig = cls(store, name)
        if mig.current:
            return mig
        store.claim(name, "migration")
        mig._claimed = True
        try:
            mig.conn = files.connect(mig.path, store.synchronous)
            files.upgrade(mig.conn, mig.meta)
            mig._check_sources()
            with files.transaction(mig.conn):
                mig.conn.execute("DROP TABLE IF EXISTS migration")
                mig.conn.execute("CREATE TABLE migration (slot INTEGER PRIMARY KEY, codes BLOB NOT NULL, vector BLOB)")
        except BaseException:
            mig.abort()
            raise
        return mig

    def _check_sources(self) -> None:
        assert self.conn is not None
        bad = [r[0] for r in self.conn.execute(
            "SELECT id FROM items WHERE vector IS NULL AND text IS NULL ORDER BY slot LIMIT ?", (SHOWN_IDS + 1,))]
        if bad:
            total = self.conn.execute("SELECT count(*) FROM items WHERE vector IS NULL AND text IS NULL").fetchone()[0]
            raise NotMigratable(
                f"collection {self.name!r}: {total} items keep neither a vector nor a text, so nothing can re-encode "
                f"them for this checkpoint (e.g. {', '.join(map(repr, bad[:SHOWN_IDS]))}). Upsert them again with "
                "their embeddings (or delete them), or serve the collection with the checkpoint that made it "
                f"({made_with(self.meta)}). Nothing was changed.")

    def next_chunk(self) -> Chunk | None:
        """The next items to re-encode, in slot order; None when all are staged."""
        if self.current:
            return None
        assert self.conn is not None
        rows = self.conn.execute("SELECT slot, vector, text FROM items WHERE slot > ? ORDER BY slot LIMIT ?",
                                 (self._after, CHUNK)).fetchall()
        if not rows:
            return None
        self._after = rows[-1][0]
        dim = self.store.model.input_dim
        kind = self.meta.get(vectors.META_KEY, "none")
        x = np.zeros((len(rows), dim), dtype=np.float32)
        kept = [i for i, r in enumerate(rows) if r[1] is not None]
        if kept:
            x[kept] = vectors.unpack(kind, [rows[i][1] for i in kept], dim)
        text_pos = [i for i, r in enumerate(rows) if r[1] is None]
        return Chunk(slots=[r[0] for r in rows], x=x, text_pos=text_pos, texts=[rows[i][2] for i in text_pos])

    def stage(self, chunk: Chunk, codes: np.ndarray) -> None:
        """Stage a chunk's new codes (``chunk.x`` by now holds the embedded texts too), in one
        transaction; rows embedded from text gain a kept vector where the collection keeps them."""
        assert self.conn is not None
        kind = self.meta.get(vectors.META_KEY, "none")
        fresh = set(chunk.text_pos)
        blobs = vectors.pack(kind, chunk.x)
        with files.transaction(self.conn):
            self.conn.executemany(
                "INSERT INTO migration (slot, codes, vector) VALUES (?, ?, ?)",
                [(slot, np.asarray(codes[i], dtype=np.uint8).tobytes(), blobs[i] if i in fresh else None)
                 for i, slot in enumerate(chunk.slots)])
        self.result.items += len(chunk.slots)
        self.result.from_texts += len(fresh)
        self.result.from_vectors += len(chunk.slots) - len(fresh)

    def finish(self) -> Collection:
        """Switch to the staged codes in one transaction and open the migrated collection."""
        if self.current:
            return self.store.get(self.name)
        assert self.conn is not None
        try:
            self._switch()
        finally:
            self.abort()
        self.result.seconds = time.perf_counter() - self._t0
        self.store.forget(self.name)
        fitted.prune(self.path, None)
        col = self.store.get(self.name)
        col.train_if_due()
        log.info("collection %s migrated from %s: %d items (%d from kept vectors, %d from texts) in %.1fs",
                 self.name, made_with(self.result.previous), self.result.items, self.result.from_vectors,
                 self.result.from_texts, self.result.seconds)
        return col

    def _switch(self) -> None:
        assert self.conn is not None
        model = self.store.model
        with files.transaction(self.conn):
            missing = self.conn.execute("SELECT count(*) FROM items LEFT JOIN migration USING (slot) "
                                        "WHERE migration.slot IS NULL").fetchone()[0]
            extra = self.conn.execute("SELECT count(*) FROM migration LEFT JOIN items USING (slot) "
                                      "WHERE items.slot IS NULL").fetchone()[0]
            if missing or extra:
                raise CollectionBusy(f"collection {self.name!r} was written by another process during its migration; "
                                     "nothing was changed: migrate it again")
            self.conn.execute("UPDATE items SET codes = m.codes, vector = coalesce(items.vector, m.vector) "
                              "FROM migration AS m WHERE m.slot = items.slot")
            self.result.previous = {k: self.meta[k] for k in ("checkpoint_sha256", "weights_sha256") if k in self.meta}
            rows = {**model.file_meta(), "migrated": json.dumps({
                **self.result.previous, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "items": self.result.items})}
            gone = ("weights_sha256", partitions.META_CENTROIDS, fitted.META_KEY, fitted.REPORT_KEY, "fitted_rows",
                    "fit_attempt_rows")  # a fitted collection starts again from the checkpoint (and fits again)
            self.conn.execute(f"DELETE FROM meta WHERE key IN ({','.join('?' * len(gone))})", gone)
            self.conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows.items())
            self.conn.execute("DROP TABLE migration")

    def abort(self) -> None:
        """Drop the stage (best effort: a crash leaves it, and the next migration drops it) and
        release the collection."""
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("DROP TABLE IF EXISTS migration")
            self.conn.close()
            self.conn = None
        if self._claimed:
            self._claimed = False
            self.store.release(self.name)


Embed = Callable[[list[str]], np.ndarray]
Encode = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int], None]


def run(store: Store, name: str, encode: Encode, embed: Embed | None,
        progress: Progress | None = None) -> tuple[Collection, MigrationResult]:
    """Migrate ``name`` in this process (the CLI's driver); ``embed`` is needed only where some
    items keep no vector."""
    mig = Migration.open(store, name)
    try:
        while (chunk := mig.next_chunk()) is not None:
            fill_texts(chunk, embed)
            mig.stage(chunk, encode(chunk.x))
            if progress is not None:
                progress(len(chunk.slots))
        return mig.finish(), mig.result
    except BaseException:
        mig.abort()
        raise


def count_items(store: Store, name: str) -> int:
    """Items in ``name``'s file, whichever checkpoint made them (for a progress bar)."""
    files.read_meta(store.path(name))  # CollectionNotFound for a name with no file
    conn = files.connect(store.path(name), store.synchronous, readonly=True)
    try:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
    finally:
        conn.close()


def fill_texts(chunk: Chunk, embed: Embed | None) -> None:
    """Embed the chunk's texts into its vectors (the items that keep no vector)."""
    if not chunk.text_pos:
        return
    if embed is None:
        raise NotMigratable("some items keep no vector and no text model is loaded to embed their texts; "
                            "start the server with a text model (MONOLITH_TEXT_MODEL) or keep vectors")
    chunk.x[chunk.text_pos] = embed(chunk.texts)

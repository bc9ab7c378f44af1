"""The collection file format: one SQLite file per collection, written durably.

Layout: ``<data_dir>/collections/<name>.sqlite3``. Each file holds a ``meta`` table (the
checkpoint sha256 its codes were made with, the model shape, creation time, description)
and an ``items`` table ``(slot INTEGER PRIMARY KEY, id TEXT UNIQUE, codes BLOB, metadata,
text)``. ``slot`` is the item's row in the in-memory :class:`vqvae.search.CodeIndex`, so
string ids live only in SQLite and the process holds 4 bytes per vector, whatever the id length.

Durability: WAL journal, ``synchronous=FULL`` by default, every write in one ``BEGIN
IMMEDIATE … COMMIT`` that finishes before the caller answers. In WAL mode a commit appends to
the WAL and, with FULL, fsyncs it; a kill -9 after the commit returns cannot lose it (even
NORMAL would survive a process kill, because the bytes are in the OS page cache; FULL adds
power-loss safety).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from service.collections.errors import CheckpointMismatch, CollectionCorrupt, CollectionNotFound

SUFFIX = ".sqlite3"
SCHEMA_VERSION = 1
SQL_CHUNK = 500  # host parameters per IN (...) query
Synchronous = Literal["FULL", "NORMAL", "EXTRA"]


def connect(path: Path, synchronous: str, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if readonly else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)
    if not readonly:
        conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE … COMMIT``: durable when the block exits, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def chunks(seq: Sequence[Any], size: int = SQL_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def create_file(path: Path, meta: dict[str, Any], num_heads: int, description: str | None) -> None:
    """A new, empty collection file (the caller links it into place)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
        conn.execute(
            "CREATE TABLE items (slot INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
            f"codes BLOB NOT NULL CHECK (length(codes) = {int(num_heads)}), "
            "metadata TEXT, text TEXT)"
        )
        rows = {
            "schema_version": str(SCHEMA_VERSION),
            **meta,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "description": description or "",
        }
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows.items())
        conn.execute("COMMIT")
    finally:
        conn.close()


def read_meta(path: Path) -> dict[str, str]:
    """The meta table, read through a read-only connection: opening never writes."""
    if not path.is_file():
        raise CollectionNotFound(f"collection {path.stem!r} not found")
    try:
        conn = connect(path, "FULL", readonly=True)
    except sqlite3.Error as exc:
        raise CollectionCorrupt(f"collection {path.stem!r} cannot be opened: {exc}") from exc
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise CollectionCorrupt(f"not a Monolith collection or unreadable: {exc}") from exc
    finally:
        conn.close()


def check_compatible(name: str, meta: dict[str, str], sha256: str) -> None:
    """Refuse files of another schema or another checkpoint before anything touches them."""
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise CollectionCorrupt(
            f"collection {name!r} has storage schema version {version}; this Monolith reads {SCHEMA_VERSION}"
        )
    recorded = meta.get("checkpoint_sha256")
    if recorded != sha256:
        raise CheckpointMismatch(
            f"collection {name!r} was encoded with checkpoint sha256 {recorded} but this server runs "
            f"{sha256}; codes from one checkpoint mean nothing to another. Serve it with the "
            "checkpoint it was built with (MONOLITH_CHECKPOINT), or delete and rebuild it. "
            "The collection was not modified."
        )


def companions(path: Path) -> tuple[Path, Path, Path]:
    """The database and the WAL and shared-memory files SQLite keeps beside it."""
    return path, Path(f"{path}-wal"), Path(f"{path}-shm")


def remove_files(path: Path) -> None:
    for p in companions(path):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def size_on_disk(path: Path) -> int:
    total = 0
    for p in companions(path)[:2]:
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def fsync_dir(path: Path) -> None:
    """Make a link or unlink in ``path`` durable (the directory entry is data too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dumps(meta: str | dict[str, Any] | None) -> str | None:
    if meta is None or isinstance(meta, str):
        return meta
    return json.dumps(meta, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def loads(raw: str | None) -> dict[str, Any] | None:
    return None if raw is None else json.loads(raw)

"""The collection file format: one SQLite file per collection, written durably.

Layout: ``<data_dir>/collections/<name>.sqlite3``. Each file holds a ``meta`` table (the
checksums of the checkpoint file and of the weights its codes were made with, the model
shape, creation time, description) and an ``items`` table ``(slot INTEGER PRIMARY KEY, id TEXT
UNIQUE, codes BLOB, metadata, text)``. ``slot`` is the item's row in the in-memory
:class:`vqvae.search.CodeIndex`, so string ids live only in SQLite and the process holds 4 bytes
per vector, whatever the id length.

Durability: WAL journal, ``synchronous=FULL`` by default, every write in one ``BEGIN
IMMEDIATE … COMMIT`` that finishes before the caller answers. In WAL mode a commit appends to
the WAL and, with FULL, fsyncs it; a kill -9 after the commit returns cannot lose it (even
NORMAL would survive a process kill, because the bytes are in the OS page cache; FULL adds
power-loss safety).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from service.collections.errors import CollectionCorrupt, CollectionNotFound, StorageFull

log = logging.getLogger(__name__)

SUFFIX = ".sqlite3"
SCHEMA_VERSION = 2  # 2: items.vector (kept vectors); version 1 files are upgraded in place at open
READABLE_VERSIONS = ("1", "2")
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
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    except (sqlite3.Error, OSError) as exc:
        if is_disk_full(exc):
            raise StorageFull(storage_full_message(_db_folder(conn))) from exc
        raise


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full") or the OS's ENOSPC / EDQUOT."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def storage_full_message(folder: Path | str | None) -> str:
    where = f"the disk holding {folder}" if folder else "the disk holding the collections"
    return (
        f"{where} is full (or over its quota): this write was rolled back and nothing stored changed. "
        "Free space there (or grow the volume, or move MONOLITH_DATA_DIR to a larger disk), then retry; "
        "reads and searches keep working meanwhile"
    )


def _db_folder(conn: sqlite3.Connection) -> Path | None:
    with contextlib.suppress(sqlite3.Error, IndexError, TypeError):
        return Path(conn.execute("PRAGMA database_list").fetchone()[2]).parent.parent
    return None


@contextlib.contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN … COMMIT`` around reads: every query inside sees one snapshot of the file (WAL),
    whatever other connections commit meanwhile."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("COMMIT")


def chunks(seq: Sequence[Any], size: int = SQL_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def create_file(path: Path, meta: dict[str, Any], num_heads: int, description: str | None) -> None:
    """A new, empty collection file (the caller links it into place); ``StorageFull`` when the
    disk has no room for it (the caller removes the partial file)."""
    try:
        _create_file(path, meta, num_heads, description)
    except (sqlite3.Error, OSError) as exc:
        if is_disk_full(exc):
            raise StorageFull(storage_full_message(path.parent.parent)) from exc
        raise


def _create_file(path: Path, meta: dict[str, Any], num_heads: int, description: str | None) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
        conn.execute(
            "CREATE TABLE items (slot INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
            f"codes BLOB NOT NULL CHECK (length(codes) = {int(num_heads)}), "
            "metadata TEXT, text TEXT, vector BLOB)"
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


def write_meta(conn: sqlite3.Connection, rows: dict[str, str], drop: Sequence[str] = ()) -> None:
    """Set ``rows`` and delete the keys ``drop`` (and rows whose value is empty) in one transaction."""
    gone = [*drop, *(k for k, v in rows.items() if v == "")]
    with transaction(conn):
        for part in chunks(gone):
            conn.execute(f"DELETE FROM meta WHERE key IN ({','.join('?' * len(part))})", list(part))
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         [(k, v) for k, v in rows.items() if v != ""])


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


def check_schema(name: str, meta: dict[str, str]) -> None:
    """Refuse a file of a storage schema this code does not read, before anything touches it."""
    version = meta.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise CollectionCorrupt(
            f"collection {name!r} has storage schema version {version}; this Monolith reads "
            f"{', '.join(READABLE_VERSIONS)}"
        )


def upgrade(conn: sqlite3.Connection, meta: dict[str, str]) -> None:
    """Bring a version 1 file (no kept vectors) to the current schema, in one transaction: the
    ``vector`` column is added empty and the collection keeps no vectors until re-created."""
    if meta.get("schema_version") == str(SCHEMA_VERSION):
        return
    with transaction(conn):
        columns = {row[1] for row in conn.execute("PRAGMA table_info(items)")}
        if "vector" not in columns:
            conn.execute("ALTER TABLE items ADD COLUMN vector BLOB")
        rows = {"schema_version": str(SCHEMA_VERSION), "vectors": meta.get("vectors", "none")}
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows.items())
    meta.update(rows)


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


# Metadata is returned nested at most this deep: pydantic's serialiser gives up near 255 levels,
# and one item that cannot be serialised would fail every search that finds it. Upserts are held
# to MONOLITH_MAX_METADATA_DEPTH (≤ this); deeper metadata stored before that limit existed is
# returned with each object or array at this depth as its JSON text.
MAX_READ_DEPTH = 128


def loads(raw: str | None) -> dict[str, Any] | None:
    """Stored metadata, parsed; always serialisable, whatever was stored (see MAX_READ_DEPTH)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        log.warning("stored metadata is not readable JSON; returned as text under '_unparsed'")
        return {"_unparsed": raw}
    if nesting_depth(value, MAX_READ_DEPTH) > MAX_READ_DEPTH:
        value = _flatten_below(value, MAX_READ_DEPTH)
    return value if isinstance(value, dict) else {"_value": value}


def nesting_depth(value: Any, stop: int) -> int:
    """Levels of objects and arrays in a parsed JSON value (a scalar is 0; ``{}`` is 1), counted
    without recursion and only up to ``stop + 1``: enough to refuse, whatever the nesting."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, dict | list):
            level += 1
            deepest = max(deepest, level)
            if level > stop:
                return level
            todo.extend((child, level) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _flatten_below(value: Any, levels: int) -> Any:
    """``value`` with every object or array ``levels`` deep replaced by its compact JSON text
    (built without recursion: the stack is the thing that is short here)."""
    root: list[Any] = [value]
    todo: list[tuple[Any, Any, Any, int]] = [(root, 0, value, 1)]
    while todo:
        parent, key, node, level = todo.pop()
        if not isinstance(node, dict | list):
            continue
        if level >= levels:
            try:
                parent[key] = json.dumps(node, ensure_ascii=False, separators=(",", ":"))
            except (ValueError, RecursionError):
                parent[key] = "(nested too deeply to show)"
            continue
        copy: Any = dict(node) if isinstance(node, dict) else list(node)
        parent[key] = copy
        todo.extend((copy, k, v, level + 1) for k, v in (copy.items() if isinstance(copy, dict) else enumerate(copy)))
    return root[0]

"""Export and import: a collection as one portable file.

The file is gzip-compressed UTF-8 JSON lines (``zcat wiki.monolith.gz | head`` shows it):

1. a header: ``{"format": "monolith-collection", "format_version": 2, "name", "description",
   "created", "exported", "checkpoint_sha256", "weights_sha256", "model", "num_heads", "codebook_size",
   "count", "vectors", "collection_meta"}``. An import is refused unless the serving checkpoint has those
   weights (``StoreModel.made``); ``collection_meta`` holds the index settings of a partitioned
   collection (``partitions.META_KEYS``), so that a copy keeps its lists;
2. ``count`` items in index order: ``{"id", "codes": [c0, c1, c2, c3], "metadata", "text", "vector"}``,
   ``vector`` the kept vector's blob (``service.collections.vectors``, of the header's ``vectors``
   kind) in base64, or null. Version 1 files (no kept vectors) still import, keeping none;
3. a trailer: ``{"end": true, "count": N, "sha256": "<hex>"}``, the sha256 of every
   (uncompressed) byte before the trailer line.

An export reads one snapshot of the file (one SQLite read transaction), so exporting a live
collection while it is written is safe and consistent. Items keep their order, so an imported
collection has the same rows in the same order and answers every search exactly as the
original did (ties included). Import checks the header before reading further (another
checkpoint's codes: ``CheckpointMismatch``, 409), then every item and the trailer's count and
checksum (``InvalidExport``, 422, for a truncated, altered or foreign file), writing into a
hidden file beside the collections that is put in place only when all of it checked out.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hashlib
import io
import json
import os
import sqlite3
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from service.collections import files, partitions, vectors
from service.collections.binding import StoreModel, made_with
from service.collections.collection import Collection
from service.collections.errors import CheckpointMismatch, CollectionExists, InvalidExport
from service.collections.store import Store

FORMAT = "monolith-collection"
FORMAT_VERSION = 2  # 2: kept vectors (header "vectors", item "vector")
READABLE_VERSIONS = (1, 2)
SUFFIX = ".monolith.gz"
MEDIA_TYPE = "application/gzip"
ROWS_PER_CHUNK = 4096  # items read, encoded and compressed at a time
MAX_LINE_BYTES = 16 * 1024 * 1024  # no item line is longer (ids, metadata and texts have limits)
INSERT_BATCH = 8192
INSERT_ITEM = "INSERT INTO items (slot, id, codes, metadata, text, vector) VALUES (?, ?, ?, ?, ?, ?)"
ITEM_KEYS = frozenset({"id", "codes", "metadata", "text", "vector"})
CARRIED_META = partitions.META_KEYS  # collection settings beyond the model's that travel with it

Progress = Callable[[int, int], None]  # (items done, items in all)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# ---- export ---------------------------------------------------------------------------------


def export_lines(path: Path, name: str, progress: Progress | None = None) -> Iterator[bytes]:
    """The uncompressed lines of ``path``'s export, read in one snapshot."""
    conn = files.connect(path, "FULL", readonly=True)
    try:
        with files.read_snapshot(conn):
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
            header = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "name": name,
                "description": meta.get("description") or None,
                "created": meta.get("created"),
                "exported": datetime.now(UTC).isoformat(timespec="seconds"),
                "checkpoint_sha256": meta.get("checkpoint_sha256"),
                "weights_sha256": meta.get("weights_sha256"),
                "model": json.loads(meta.get("model_config", "{}")),
                "num_heads": int(meta.get("num_heads", 0)),
                "codebook_size": int(meta.get("codebook_size", 0)),
                "count": count,
                "vectors": meta.get(vectors.META_KEY, "none"),
                "collection_meta": {k: meta[k] for k in CARRIED_META if k in meta},
            }
            digest = hashlib.sha256()
            line = (_dump(header) + "\n").encode()
            digest.update(line)
            yield line
            done = 0
            cur = conn.execute("SELECT id, codes, metadata, text, vector FROM items ORDER BY slot")
            while rows := cur.fetchmany(ROWS_PER_CHUNK):
                parts = []
                for item_id, codes, metadata, text, vector in rows:
                    if metadata is not None and "\n" in metadata:  # stored compact; never split a line
                        metadata = _dump(json.loads(metadata))
                    kept = f'"{base64.b64encode(vector).decode()}"' if vector is not None else "null"
                    parts.append(
                        f'{{"id":{_dump(item_id)},"codes":{_dump(list(codes))},'
                        f'"metadata":{metadata if metadata is not None else "null"},"text":{_dump(text)},'
                        f'"vector":{kept}}}\n'
                    )
                block = "".join(parts).encode()
                digest.update(block)
                yield block
                done += len(rows)
                if progress is not None:
                    progress(done, count)
            if done != count:  # cannot happen inside one snapshot
                raise InvalidExport(f"collection {name!r} changed during its export")
            yield (_dump({"end": True, "count": count, "sha256": digest.hexdigest()}) + "\n").encode()
    finally:
        conn.close()


def export_gzip(path: Path, name: str, progress: Progress | None = None) -> Iterator[bytes]:
    """The export file as gzip chunks (what ``GET /collections/{name}/export`` streams)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip container
    for line in export_lines(path, name, progress):
        if out := comp.compress(line):
            yield out
    yield comp.flush()


def export_to_file(path: Path, name: str, out: Path, progress: Progress | None = None) -> int:
    """Write the export to ``out`` atomically (temp file + rename); returns its size in bytes."""
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as fh:
            for chunk in export_gzip(path, name, progress):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return out.stat().st_size


# ---- import ---------------------------------------------------------------------------------


@dataclass
class ImportLimits:
    """The server's item limits, applied to imported items as to upserted ones (None: no limit)."""

    max_id_chars: int | None = None
    max_metadata_bytes: int | None = None


@dataclass
class Imported:
    header: dict[str, Any]
    count: int


def _bad(message: str) -> InvalidExport:
    return InvalidExport(f"not a valid Monolith collection export: {message}")


class _Lines:
    """Lines of the decompressed stream, hashed as read; gzip damage becomes ``InvalidExport``."""

    def __init__(self, src: IO[bytes]) -> None:
        self._gz = io.BufferedReader(gzip.GzipFile(fileobj=src, mode="rb"))
        self.digest = hashlib.sha256()
        self.number = 0

    def next(self, hashed: bool = True) -> bytes:
        try:
            line = self._gz.readline(MAX_LINE_BYTES + 1)
        except EOFError:
            raise _bad("the file is truncated (the compressed stream ends early)") from None
        except (gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise _bad(f"the file is damaged or not gzip ({exc})") from None
        self.number += 1
        if len(line) > MAX_LINE_BYTES:
            raise _bad(f"line {self.number} is longer than {MAX_LINE_BYTES} bytes")
        if line and not line.endswith(b"\n"):
            raise _bad("the file is truncated (its last line is incomplete)")
        if hashed:
            self.digest.update(line)
        return line

    def json(self, line: bytes) -> Any:
        if not line:
            raise _bad("the file is truncated (it ends before its trailer)")
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _bad(f"line {self.number} is not JSON") from None


def read_header(lines: _Lines, model: StoreModel) -> dict[str, Any]:
    header = lines.json(lines.next())
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _bad(f"it has no {FORMAT!r} header")
    version = header.get("format_version")
    if version not in READABLE_VERSIONS:
        raise _bad(f"format version {version!r}; this Monolith reads versions {list(READABLE_VERSIONS)}")
    if header.setdefault("vectors", "none") not in vectors.KINDS:
        raise _bad(f"'vectors' must be one of {list(vectors.KINDS)}")
    if not model.made(header):
        raise CheckpointMismatch(
            f"the export was made with {made_with(header)} but this server runs "
            f"{made_with(model.file_meta())}; codes from one checkpoint mean nothing to another. Import it "
            "where that checkpoint is served (MONOLITH_CHECKPOINT), or rebuild the collection from its source data. "
            "Nothing was written."
        )
    num_heads, codebook_size = model.num_heads, model.codebook_size
    if header.get("num_heads") != num_heads or header.get("codebook_size") != codebook_size:
        raise _bad(f"codes of {header.get('num_heads')} heads × {header.get('codebook_size')} entries; "
                   f"the checkpoint has {num_heads} × {codebook_size}")
    if not isinstance(header.get("count"), int) or header["count"] < 0:
        raise _bad("the header has no item count")
    carried = header.get("collection_meta") or {}
    if not isinstance(carried, dict) or not all(k in CARRIED_META and isinstance(v, str) for k, v in carried.items()):
        raise _bad(f"collection_meta may only hold the text settings {list(CARRIED_META)}")
    return header


@dataclass
class _Shape:
    """What every imported item must fit: the checkpoint's codes, the kept vectors' kind, the limits."""

    num_heads: int
    codebook_size: int
    kind: str
    dim: int
    limits: ImportLimits


Row = tuple[int, str, bytes, str | None, str | None, bytes | None]


def _vector_blob(raw: Any, where: str, shape: _Shape) -> bytes | None:
    if raw is None:
        return None
    width = vectors.row_bytes(shape.kind, shape.dim)
    try:
        blob = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
    except (binascii.Error, ValueError):
        blob = None
    if blob is None or not width or len(blob) != width:
        raise _bad(f"{where}: vector must be null or the base64 of {width} bytes ({shape.kind} kept vectors)")
    return blob


def _item_row(obj: Any, n: int, lines: _Lines, shape: _Shape) -> Row:
    where = f"line {lines.number}"
    num_heads, codebook_size, limits = shape.num_heads, shape.codebook_size, shape.limits
    if not isinstance(obj, dict) or not {"id", "codes"} <= obj.keys() or not obj.keys() <= ITEM_KEYS:
        raise _bad(f"{where} is not an item (id, codes, metadata, text, vector)")
    item_id, codes, metadata, text = obj["id"], obj["codes"], obj.get("metadata"), obj.get("text")
    if not isinstance(item_id, str) or not item_id or "\x00" in item_id:
        raise _bad(f"{where}: the id must be a non-empty string without NUL")
    if limits.max_id_chars is not None and len(item_id) > limits.max_id_chars:
        raise _bad(f"{where}: id longer than {limits.max_id_chars} characters (MONOLITH_MAX_ID_CHARS)")
    if (not isinstance(codes, list) or len(codes) != num_heads
            or not all(type(c) is int and 0 <= c < codebook_size for c in codes)):
        raise _bad(f"{where}: codes must be {num_heads} integers in 0..{codebook_size - 1}")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad(f"{where}: metadata must be an object or null")
    if text is not None and not isinstance(text, str):
        raise _bad(f"{where}: text must be a string or null")
    raw_meta = None if metadata is None else _dump(metadata)
    if raw_meta is not None and limits.max_metadata_bytes is not None \
            and len(raw_meta.encode()) > limits.max_metadata_bytes:
        raise _bad(f"{where}: metadata over {limits.max_metadata_bytes} bytes (MONOLITH_MAX_METADATA_BYTES)")
    return n, item_id, bytes(codes), raw_meta, text, _vector_blob(obj.get("vector"), where, shape)


def read_into(
    src: IO[bytes],
    dest: Path,
    model: StoreModel,
    limits: ImportLimits | None = None,
    progress: Progress | None = None,
) -> Imported:
    """Check the export in ``src`` and write it as a new collection file ``dest`` (which must
    not exist; it is removed again if anything is wrong). ``model`` is the serving one: the
    header's checkpoint must be that one."""
    limits = limits or ImportLimits()
    lines = _Lines(src)
    header = read_header(lines, model)
    num_heads, codebook_size = model.num_heads, model.codebook_size
    description = header.get("description")
    meta = {**model.file_meta(), **(header.get("collection_meta") or {}), vectors.META_KEY: header["vectors"]}
    shape = _Shape(num_heads, codebook_size, header["vectors"], model.input_dim, limits)
    files.create_file(dest, meta, num_heads, description if isinstance(description, str) else None)
    try:
        conn = sqlite3.connect(dest, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=OFF")  # not visible until complete; fsynced below
            n = _copy_items(conn, lines, header["count"], shape, progress)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        with dest.open("rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        files.remove_files(dest)
        raise
    return Imported(header=header, count=n)


def _copy_items(conn: sqlite3.Connection, lines: _Lines, count: int, shape: _Shape,
                progress: Progress | None) -> int:
    n = 0
    batch: list[Row] = []

    def flush() -> None:
        try:
            with files.transaction(conn):
                conn.executemany(INSERT_ITEM, batch)
        except sqlite3.IntegrityError:
            raise _bad(f"an id appears twice (ids are unique): {_first_repeat(conn, batch)!r}") from None
        batch.clear()
        if progress is not None:
            progress(n, count)

    while True:
        if n == count:
            checksum = lines.digest.hexdigest()  # of every line before the trailer
            trailer = lines.json(lines.next(hashed=False))
            break
        line = lines.next()
        obj = lines.json(line)
        if isinstance(obj, dict) and obj.get("end") is True:
            raise _bad(f"the trailer comes after {n} items but the header promised {count}")
        batch.append(_item_row(obj, n, lines, shape))
        n += 1
        if len(batch) >= INSERT_BATCH:
            flush()
    if batch:
        flush()
    if not isinstance(trailer, dict) or trailer.get("end") is not True:
        raise _bad(f"more items than the {count} its header promised, or no trailer")
    if trailer.get("count") != count:
        raise _bad(f"the trailer counts {trailer.get('count')} items, the header {count}")
    if trailer.get("sha256") != checksum:
        raise _bad("its checksum does not match its content: the file was altered or damaged")
    if lines.next(hashed=False):
        raise _bad("there is data after its trailer")
    return n


def _first_repeat(conn: sqlite3.Connection, batch: list[Row]) -> str:
    """The first id of a refused batch that repeats one before it (in the batch or the file)."""
    seen: set[str] = set()
    for row in batch:
        if row[1] in seen or conn.execute("SELECT 1 FROM items WHERE id = ?", (row[1],)).fetchone():
            return row[1]
        seen.add(row[1])
    return "?"


def import_collection(
    store: Store,
    name: str,
    src: IO[bytes],
    replace: bool = False,
    limits: ImportLimits | None = None,
    progress: Progress | None = None,
) -> tuple[Collection, int, bool]:
    """Import the export in ``src`` as collection ``name`` of ``store``, all or nothing:
    returns the collection, the items imported and whether the name was new."""
    if not replace and store.path(name).exists():
        raise CollectionExists(f"collection {name!r} already exists; import with replace=true (CLI: --replace) "
                               "to replace it, or import under another name")
    model = store.model
    tmp = store.staging_path(name)
    try:
        done = read_into(src, tmp, model, limits, progress)
        try:  # the index settings it carried must make an index (a hand-edited file may not)
            partitions.new_index(model, files.read_meta(tmp), store.backend)
        except Exception as exc:
            raise _bad(f"its index settings (collection_meta) are not usable: {exc}") from None
    except BaseException:
        files.remove_files(tmp)
        raise
    col, created = store.install(name, tmp, replace)
    return col, done.count, created

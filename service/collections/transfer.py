"""Export and import: a collection as one portable file.

The file is gzip-compressed UTF-8 JSON lines (``zcat wiki.monolith.gz | head`` shows it):

1. a header: ``{"format": "monolith-collection", "format_version": 3, "name", "description",
   "created", "exported", "checkpoint_sha256", "weights_sha256", "model", "num_heads", "codebook_size",
   "count", "vectors", "collection_meta", "fit_meta", "model_file"}``. An import is refused unless the
   serving checkpoint has those weights (``StoreModel.made``), or the file carries the collection's
   own model (``fitted``) and the weights are that one's; ``collection_meta`` holds the index settings
   of a partitioned collection (``partitions.META_KEYS``), so that a copy keeps its lists;
   ``fit_meta`` its fit rows (``FIT_META``: ``fitted_model``, the own model's weights sha256, where
   it has one); ``model_file`` is null, or ``{"weights_sha256", "sha256", "bytes"}`` of that model's
   safetensors file when ``fit_meta`` names one;
2. (version 3, a fitted collection) the model file: ``{"model_chunk": i, "base64": "..."}`` lines,
   i = 0, 1, …, of at most ``MODEL_CHUNK`` bytes each, until ``model_file.bytes`` are given; their
   bytes must have ``model_file.sha256`` and be a checkpoint of those weights;
3. ``count`` items in index order: ``{"id", "codes": [c0, c1, c2, c3], "metadata", "text", "vector"}``,
   ``vector`` the kept vector's blob (``service.collections.vectors``, of the header's ``vectors``
   kind) in base64, or null. Version 1 files (no kept vectors) still import, keeping none; version 1
   and 2 files carry no model (their codes are the server checkpoint's);
4. a trailer: ``{"end": true, "count": N, "sha256": "<hex>"}``, the sha256 of every
   (uncompressed) byte before the trailer line (the model's lines included).

An export reads one snapshot of the file (one SQLite read transaction), so exporting a live
collection while it is written is safe and consistent. Items keep their order, so an imported
collection has the same rows in the same order and answers every search exactly as the
original did (ties included). Import checks the header before reading further (another
checkpoint's codes: ``CheckpointMismatch``, 409), then the model it carries, every item and the
trailer's count and checksum (``InvalidExport``, 422, for a truncated, altered or foreign file),
writing into a hidden file beside the collections that is put in place only when all of it checked
out. A fitted collection's codes are bound to the model it carries, so it imports on a server of
any checkpoint: ``Store.install`` places that model in the collection's models folder before the
file.
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

from service.collections import files, fitted, partitions, vectors
from service.collections.binding import StoreModel, made_with
from service.collections.collection import Collection
from service.collections.errors import CheckpointMismatch, CollectionCorrupt, CollectionExists, InvalidExport
from service.collections.store import Store
from vqvae.api import Monolith
from vqvae.checkpoint import CheckpointError, load_checkpoint

FORMAT = "monolith-collection"
FORMAT_VERSION = 3  # 2: kept vectors (header "vectors", item "vector"); 3: fit rows and the own model
READABLE_VERSIONS = (1, 2, 3)
SUFFIX = ".monolith.gz"
MEDIA_TYPE = "application/gzip"
ROWS_PER_CHUNK = 4096  # items read, encoded and compressed at a time
MAX_LINE_BYTES = 16 * 1024 * 1024  # no item line is longer (ids, metadata and texts have limits)
INSERT_BATCH = 8192
INSERT_ITEM = "INSERT INTO items (slot, id, codes, metadata, text, vector) VALUES (?, ?, ?, ?, ?, ?)"
ITEM_KEYS = frozenset({"id", "codes", "metadata", "text", "vector"})
CARRIED_META = partitions.META_KEYS  # collection settings beyond the model's that travel with it
FIT_META = (fitted.META_KEY, fitted.REPORT_KEY, "fitted_rows", "fit_attempt_rows", "auto_fit")  # ``fitting``
MODEL_CHUNK = 4 * 1024 * 1024  # model bytes per line (base64: 5.6 MB, under MAX_LINE_BYTES)
MAX_MODEL_BYTES = 1024 * 1024 * 1024
MODEL_SUFFIX = ".model"  # the carried model, written beside the staged collection file

Progress = Callable[[int, int], None]  # (items done, items in all)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# ---- export ---------------------------------------------------------------------------------


def export_lines(path: Path, name: str, progress: Progress | None = None) -> Iterator[bytes]:
    """The uncompressed lines of ``path``'s export, read in one snapshot."""
    conn = files.connect(path, "FULL", readonly=True)
    model_fh: IO[bytes] | None = None
    try:
        with files.read_snapshot(conn):
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
            own = meta.get(fitted.META_KEY)
            model_file = None
            if own:  # opened at once: a fit switching meanwhile may delete it, not this snapshot's copy
                model_fh, model_file = _open_model(path, name, own)
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
                "fit_meta": {k: meta[k] for k in FIT_META if k in meta},
                "model_file": model_file,
            }
            digest = hashlib.sha256()
            line = (_dump(header) + "\n").encode()
            digest.update(line)
            yield line
            if model_fh is not None:
                for chunk in _model_lines(model_fh):
                    digest.update(chunk)
                    yield chunk
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
        if model_fh is not None:
            model_fh.close()


def _open_model(path: Path, name: str, weights_sha256: str) -> tuple[IO[bytes], dict[str, Any]]:
    """The collection's own model file, open, and what the header says of it (its bytes' sha256)."""
    try:
        fh = fitted.model_path(path, weights_sha256).open("rb")
    except FileNotFoundError:
        raise CollectionCorrupt(f"collection {name!r}: its fitted model {weights_sha256} is missing (a fit "
                                "switched it meanwhile?); export it again") from None
    h = hashlib.sha256()
    size = 0
    while block := fh.read(MODEL_CHUNK):
        h.update(block)
        size += len(block)
    fh.seek(0)
    return fh, {"weights_sha256": weights_sha256, "sha256": h.hexdigest(), "bytes": size}


def _model_lines(fh: IO[bytes]) -> Iterator[bytes]:
    i = 0
    while block := fh.read(MODEL_CHUNK):
        yield f'{{"model_chunk":{i},"base64":"{base64.b64encode(block).decode()}"}}\n'.encode()
        i += 1


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
    model: StoreModel  # whose codes the file holds: the server's, or the model it carried
    model_file: Path | None = None  # that model's checkpoint, beside ``dest``, when it carried one


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
    if version < 3:  # no fit rows, no model: the codes are the server checkpoint's
        header["fit_meta"], header["model_file"] = {}, None
    own = _check_fit_meta(header)
    if own:  # the codes are the carried model's: checked when its lines are read (_read_model)
        if header.get("weights_sha256") != own:
            raise _bad(f"its codes name weights {header.get('weights_sha256')!r} but it carries model {own}")
    elif header.get("model_file") is not None:
        raise _bad("it carries a model but fit_meta names none")
    elif not model.made(header):
        raise CheckpointMismatch(
            f"the export was made with {made_with(header)} but this server runs "
            f"{made_with(model.file_meta())}; codes from one checkpoint mean nothing to another. Import it "
            "where that checkpoint is served (MONOLITH_CHECKPOINT), or rebuild the collection from its source data. "
            "Nothing was written."
        )
    if not own:
        _check_shape(header, model)
    if not isinstance(header.get("count"), int) or header["count"] < 0:
        raise _bad("the header has no item count")
    carried = header.get("collection_meta") or {}
    if not isinstance(carried, dict) or not all(k in CARRIED_META and isinstance(v, str) for k, v in carried.items()):
        raise _bad(f"collection_meta may only hold the text settings {list(CARRIED_META)}")
    return header


def _check_shape(header: dict[str, Any], model: StoreModel) -> None:
    num_heads, codebook_size = model.num_heads, model.codebook_size
    if header.get("num_heads") != num_heads or header.get("codebook_size") != codebook_size:
        raise _bad(f"codes of {header.get('num_heads')} heads × {header.get('codebook_size')} entries; "
                   f"the checkpoint has {num_heads} × {codebook_size}")


def _check_fit_meta(header: dict[str, Any]) -> str | None:
    """The header's fit rows, checked; returns the own model they name (None: the server's)."""
    rows = header.setdefault("fit_meta", {})
    if not isinstance(rows, dict) or not all(k in FIT_META and isinstance(v, str) for k, v in rows.items()):
        raise _bad(f"fit_meta may only hold the text rows {list(FIT_META)}")
    if rows.get("auto_fit", "true") not in ("true", "false"):
        raise _bad("fit_meta: auto_fit must be 'true' or 'false'")
    for key in ("fitted_rows", "fit_attempt_rows"):
        if key in rows and not rows[key].isdigit():
            raise _bad(f"fit_meta: {key} must be a whole number")
    if fitted.REPORT_KEY in rows:
        try:
            report = json.loads(rows[fitted.REPORT_KEY])
        except json.JSONDecodeError:
            report = None
        if not isinstance(report, dict):
            raise _bad(f"fit_meta: {fitted.REPORT_KEY} must be a JSON object")
    own = rows.get(fitted.META_KEY)
    if own is None:
        return None
    spec = header.get("model_file")
    if (not _is_sha256(own) or not isinstance(spec, dict) or set(spec) != {"weights_sha256", "sha256", "bytes"}
            or spec["weights_sha256"] != own or not _is_sha256(spec["sha256"])
            or type(spec["bytes"]) is not int or not 0 < spec["bytes"] <= MAX_MODEL_BYTES):
        raise _bad(f"fit_meta names model {own!r}, so model_file must be its weights_sha256, the sha256 of its "
                   f"bytes and their number (1..{MAX_MODEL_BYTES})")
    return own


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_model(lines: _Lines, header: dict[str, Any], out: Path) -> StoreModel:
    """Write the model the file carries to ``out`` (its bytes' sha256 checked) and load it: it must
    be a code-producing checkpoint of the weights the header names."""
    spec = header["model_file"]
    size, own = spec["bytes"], spec["weights_sha256"]
    h = hashlib.sha256()
    got = 0
    with out.open("wb") as fh:
        while got < size:
            obj = lines.json(lines.next())
            where = f"line {lines.number}"
            if (not isinstance(obj, dict) or set(obj) != {"model_chunk", "base64"}
                    or type(obj["model_chunk"]) is not int or obj["model_chunk"] != got // MODEL_CHUNK):
                raise _bad(f"{where} is not the model's next chunk ({got} of its {size} bytes given)")
            try:
                block = base64.b64decode(obj["base64"], validate=True) if isinstance(obj["base64"], str) else b""
            except (binascii.Error, ValueError):
                block = b""
            if len(block) != min(MODEL_CHUNK, size - got):
                raise _bad(f"{where}: the model chunk must be the base64 of {min(MODEL_CHUNK, size - got)} bytes")
            fh.write(block)
            h.update(block)
            got += len(block)
        fh.flush()
        os.fsync(fh.fileno())
    if h.hexdigest() != spec["sha256"]:
        raise _bad("its model's bytes do not match their sha256: the file was altered or damaged")
    try:
        ckpt = load_checkpoint(out)
        monolith = Monolith(ckpt)
    except CheckpointError as exc:
        raise _bad(f"its model is not a usable checkpoint: {str(exc).replace(str(out), 'the model')}") from None
    if ckpt.weights_sha256 != own:
        raise _bad(f"its model holds weights {ckpt.weights_sha256}, but its codes belong to {own}")
    return StoreModel.from_monolith(monolith)


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
    header's checkpoint must be that one, unless the file carries its own model: then that is
    written beside ``dest`` (``Imported.model_file``, the caller's to remove) and its codes are its."""
    limits = limits or ImportLimits()
    lines = _Lines(src)
    header = read_header(lines, model)
    model_file = None
    base = model.file_meta()
    if header["fit_meta"].get(fitted.META_KEY):
        model_file = dest.with_name(dest.name + MODEL_SUFFIX)
        try:
            model = _read_model(lines, header, model_file)
            _check_shape(header, model)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                model_file.unlink()
            raise
        recorded = header.get("checkpoint_sha256")  # the checkpoint it was fitted from, as the original says
        base = {**model.file_meta(), **({"checkpoint_sha256": recorded} if isinstance(recorded, str) else {})}
    num_heads, codebook_size = model.num_heads, model.codebook_size
    description = header.get("description")
    meta = {**base, **(header.get("collection_meta") or {}), vectors.META_KEY: header["vectors"],
            **header["fit_meta"]}
    shape = _Shape(num_heads, codebook_size, header["vectors"], model.input_dim, limits)
    try:
        files.create_file(dest, meta, num_heads, description if isinstance(description, str) else None)
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
        if model_file is not None:
            with contextlib.suppress(FileNotFoundError):
                model_file.unlink()
        raise
    return Imported(header=header, count=n, model=model, model_file=model_file)


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
    tmp = store.staging_path(name)
    model_file = tmp.with_name(tmp.name + MODEL_SUFFIX)  # where read_into writes a carried model
    try:
        try:
            done = read_into(src, tmp, store.model, limits, progress)
            try:  # the index settings it carried must make an index (a hand-edited file may not)
                partitions.new_index(done.model, files.read_meta(tmp), store.backend)
            except Exception as exc:
                raise _bad(f"its index settings (collection_meta) are not usable: {exc}") from None
        except BaseException:
            files.remove_files(tmp)
            raise
        col, created = store.install(name, tmp, replace, done.model_file)
    finally:
        with contextlib.suppress(FileNotFoundError):
            model_file.unlink()
    return col, done.count, created

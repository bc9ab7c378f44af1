"""``monolith-collection``: build, inspect and query collections without the server.

Collections are the same SQLite files the server reads (``<data-dir>/collections``), so a
collection built here is served as soon as the server opens it (at start-up, or on first use
when the server is already running). Writes commit batch by batch: an interrupted build keeps
every batch that finished, and re-running it upserts the same ids again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from service.cli_errors import fail, user_errors
from service.collections import migrate, transfer
from service.collections.binding import StoreModel
from service.collections.collection import Collection
from service.collections.errors import StoreError
from service.collections.store import Store
from service.collections.vectors import KINDS as VECTOR_KINDS
from service.collections.vectors import VectorKind
from vqvae.api import check_embeddings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Build, inspect and query Monolith collections without the server (same files as the server).",
)
console = Console(stderr=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", envvar="MONOLITH_DATA_DIR", help="Folder holding collections/ (the server's)")
]
Checkpoint = Annotated[
    Path | None,
    typer.Option("--checkpoint", envvar="MONOLITH_CHECKPOINT", help="Checkpoint; default: the shipped one"),
]


PROGRESS_ROWS = 256  # items embedded and encoded between two updates of a progress bar
RESCORE_CANDIDATES = 3000  # the server's defaults (service.settings: rescore_candidates, default_candidates)
RERANK_CANDIDATES = 100


class CliError(Exception):
    """A mistake in the command line or its input files."""


# What a user can cause, and so sees as one line (``service.cli_errors``); OSError: unreadable
# or unwritable paths.
handled = user_errors(CliError, StoreError, ValueError, OSError)


def _load_model(checkpoint: Path | None) -> Any:
    from vqvae import Monolith
    from vqvae.checkpoint import CheckpointError

    try:
        return Monolith.load(checkpoint)
    except CheckpointError as exc:
        raise CliError(str(exc)) from None


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise CliError(f"{what} file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        return [line.rstrip("\r\n") for line in fh]


def _read_ids(path: Path | None, n: int) -> list[str]:
    if path is None:
        return [str(i) for i in range(n)]
    ids = _read_lines(path, "ids")
    if len(ids) != n:
        raise CliError(f"{path} has {len(ids)} ids but there are {n} vectors; give one id per line")
    seen: dict[str, int] = {}
    for i, item_id in enumerate(ids, 1):
        if not item_id:
            raise CliError(f"{path}:{i}: empty id")
        if item_id in seen:
            raise CliError(f"{path}:{i}: id {item_id!r} repeats line {seen[item_id]}")
        seen[item_id] = i
    return ids


def _read_metadata(path: Path | None, n: int) -> list[str | None]:
    if path is None:
        return [None] * n
    lines = _read_lines(path, "metadata")
    if len(lines) != n:
        raise CliError(f"{path} has {len(lines)} lines but there are {n} vectors; give one JSON object per line")
    out: list[str | None] = []
    for i, line in enumerate(lines, 1):
        try:
            value = json.loads(line) if line.strip() else None
        except json.JSONDecodeError as exc:
            raise CliError(f"{path}:{i}: not JSON ({exc.msg})") from None
        if value is not None and not isinstance(value, dict):
            raise CliError(f"{path}:{i}: metadata must be a JSON object or null")
        out.append(None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return out


def _load_npy(path: Path, dim: int) -> np.ndarray:
    if not path.is_file():
        raise CliError(f".npy file not found: {path}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise CliError(f"{path} is not a plain .npy array: {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise CliError(f"{path} has shape {list(arr.shape)}; it must be [N, {dim}] embeddings")
    return arr


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _open_collection(store: Store, name: str, description: str | None, recreate: bool,
                     kept: VectorKind | None = None) -> Collection:
    if recreate and name in store.names():
        store.drop(name)
        console.print(f"deleted existing collection {name!r}")
    col, created = store.create(name, description, kept=kept)
    console.print(f"{'created' if created else 'adding to'} collection {name!r} ({len(col)} items)")
    return col


@app.command()
@handled
def build(
    name: Annotated[str, typer.Argument(help="Collection name (A-Z a-z 0-9 _ . -)")],
    npy: Annotated[Path | None, typer.Option(help="float32 [N, 384] embeddings")] = None,
    texts: Annotated[Path | None, typer.Option(help="Text file, one item per line (embedded here)")] = None,
    ids: Annotated[Path | None, typer.Option(help="One id per line; default: the row number")] = None,
    metadata: Annotated[Path | None, typer.Option(help="JSON lines, one object (or empty) per item")] = None,
    description: Annotated[str | None, typer.Option(help="Shown by GET /collections/NAME")] = None,
    store_text: Annotated[bool, typer.Option(help="Keep each text as the item's payload")] = True,
    recreate: Annotated[bool, typer.Option(help="Delete the collection first if it exists")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per committed batch")] = 8192,
    kept: Annotated[
        str | None, typer.Option("--vectors", help="Kept vectors of a new collection: int8 (default), float16, none")
    ] = None,
    data_dir: DataDir = Path("data"),
    checkpoint: Checkpoint = None,
) -> None:
    """Encode embeddings (--npy) or texts (--texts) and upsert them into a collection."""
    if kept is not None and kept not in VECTOR_KINDS:
        fail(f"--vectors must be one of {', '.join(VECTOR_KINDS)}")
    if (npy is None) == (texts is None):
        fail("give exactly one of --npy or --texts")
    console.print("loading the model…")
    monolith = _load_model(checkpoint)
    vectors, lines = _read_items(npy, texts, monolith.config.input_dim)
    n = len(vectors) if vectors is not None else len(lines or [])
    item_ids = _read_ids(ids, n)
    metas = _read_metadata(metadata, n)
    if lines is not None:
        console.print(f"embedding {n} texts (the text model loads with the first {PROGRESS_ROWS})…")
    store = Store(data_dir, StoreModel.from_monolith(monolith))
    try:
        col = _open_collection(store, name, description, recreate, kept)  # type: ignore[arg-type]
        encoder = col.encoder or monolith  # a fitted collection's codes are its own model's
        # The bar (stderr) moves every PROGRESS_ROWS items; writes still commit per --batch-size.
        with tqdm(total=n, unit="item", desc=f"build {name}", dynamic_ncols=True) as bar:
            for part in _batches(n, batch_size):
                codes, inputs = [], []
                for sub in _batches(part.stop - part.start, PROGRESS_ROWS):
                    rows = slice(part.start + sub.start, part.start + sub.stop)
                    if vectors is not None:
                        x = _checked_rows(vectors, rows, monolith.config.input_dim)
                    else:
                        assert lines is not None
                        x = monolith.embed_text(lines[rows])
                    codes.append(encoder.encode(x))
                    inputs.append(x)
                    bar.update(rows.stop - rows.start)
                payload = lines[part] if lines is not None and store_text else None
                col.upsert(item_ids[part], np.concatenate(codes), metas[part], payload, np.concatenate(inputs),
                           encoder.weights_sha256)
                bar.set_postfix(stored=part.stop)
        typer.echo(f"done: {name!r} holds {len(col)} items in {col.path}")
    finally:
        store.close()


def _read_items(npy: Path | None, texts: Path | None, dim: int) -> tuple[np.ndarray | None, list[str] | None]:
    """Embeddings from --npy, or the lines of --texts; at least one item either way."""
    if npy is not None:
        vectors = _load_npy(npy, dim)
        if len(vectors) == 0:
            raise CliError("no items to add")
        return vectors, None
    assert texts is not None
    lines = _read_lines(texts, "texts")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise CliError(f"{texts}:{i}: empty line; every line is one item")
    if not lines:
        raise CliError("no items to add")
    return None, lines


def _checked_rows(vectors: np.ndarray, part: slice, dim: int) -> np.ndarray:
    try:
        return check_embeddings(np.array(vectors[part], dtype=np.float32), dim)
    except ValueError as exc:
        raise CliError(f"rows {part.start}..{part.stop - 1}: {exc}") from None


@app.command("list")
@handled
def list_(data_dir: DataDir = Path("data"), checkpoint: Checkpoint = None) -> None:
    """Collections under --data-dir, and whether the checkpoint can serve each."""
    infos = Store(data_dir, StoreModel.from_monolith(_load_model(checkpoint))).list()
    table = Table("name", "status", "items", "checkpoint", "created", "size", "description")
    for info in infos:
        table.add_row(
            info.name, info.status, "" if info.count is None else str(info.count),
            (info.checkpoint_sha256 or "")[:12], info.created or "",
            "" if info.size_bytes is None else f"{info.size_bytes / 1e6:.1f} MB", info.description or "",
        )
    Console().print(table)
    for info in infos:
        if info.error:
            typer.echo(f"{info.name}: {info.error}")


@app.command()
@handled
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask")] = False,
    data_dir: DataDir = Path("data"),
    checkpoint: Checkpoint = None,
) -> None:
    """Delete a collection and its files."""
    if not yes and not typer.confirm(f"delete collection {name!r} under {data_dir}?", err=True):
        fail(f"collection {name!r} not deleted (answer y, or pass --yes)")
    Store(data_dir, StoreModel.from_monolith(_load_model(checkpoint))).drop(name)
    typer.echo(f"deleted {name!r}")


@app.command()
@handled
def search(
    name: str,
    text: Annotated[list[str] | None, typer.Option("--text", help="Query text (repeatable)")] = None,
    npy: Annotated[Path | None, typer.Option(help="Query embeddings [Q, 384]")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=1000, help="Hits per query")] = 10,
    candidates: Annotated[
        int | None, typer.Option(min=0, help="ADC candidates ranked again; default 3000 rescored, 100 re-ranked")
    ] = None,
    rescore: Annotated[
        bool | None,
        typer.Option(help="Rank by exact cosine with kept vectors (default: where the collection keeps them)"),
    ] = None,
    data_dir: DataDir = Path("data"),
    checkpoint: Checkpoint = None,
) -> None:
    """Query a collection; prints JSON lines, one per query."""
    if (not text) == (npy is None):
        fail("give --text (one or more) or --npy")
    monolith = _load_model(checkpoint)
    dim = monolith.config.input_dim
    col = Store(data_dir, StoreModel.from_monolith(monolith)).get(name)  # before the slow text model
    x = check_embeddings(monolith.embed_text(text) if text else np.array(_load_npy(npy, dim), np.float32), dim)
    exact = rescore if rescore is not None else col.vector_kind != "none"
    shortlist = candidates if candidates is not None else (RESCORE_CANDIDATES if exact else RERANK_CANDIDATES)
    encoder = col.encoder or monolith  # a fitted collection is searched with its own model
    hits, metric = col.search(encoder.search_latent(x), x, k, shortlist, rescore=exact,
                              encoded_with=encoder.weights_sha256)
    for row in hits:
        typer.echo(json.dumps({"metric": metric, "hits": [h.__dict__ for h in row]}, ensure_ascii=False))


@app.command("migrate")
@handled
def migrate_(
    name: str,
    data_dir: DataDir = Path("data"),
    checkpoint: Checkpoint = None,
) -> None:
    """Re-encode a collection for this checkpoint from its kept vectors (or its texts), atomically.

    A kill or a full disk before the end leaves it as it was, on its old checkpoint."""
    monolith = _load_model(checkpoint)
    store = Store(data_dir, StoreModel.from_monolith(monolith))
    try:
        total = migrate.count_items(store, name)
        with tqdm(total=total, unit="item", desc=f"migrate {name}", dynamic_ncols=True) as bar:
            col, result = migrate.run(store, name, monolith.encode, monolith.embed_text, bar.update)
        if not result.changed:
            typer.echo(f"{name!r} already belongs to this checkpoint: nothing to do")
        else:
            typer.echo(f"migrated {name!r}: {result.items} items ({result.from_vectors} from kept vectors, "
                       f"{result.from_texts} from texts) in {result.seconds:.1f}s")
    finally:
        store.close()


@app.command("export")
@handled
def export_(
    name: str,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Default: NAME.monolith.gz")] = None,
    data_dir: DataDir = Path("data"),
    checkpoint: Checkpoint = None,
) -> None:
    """Write a collection to one file (codes, ids, texts, metadata, checkpoint sha256, checksum).

    Safe while the server writes to the collection: the file is one consistent snapshot."""
    out = output or Path(f"{name}{transfer.SUFFIX}")
    col = Store(data_dir, StoreModel.from_monolith(_load_model(checkpoint))).get(name)
    with tqdm(total=len(col), unit="item", desc=f"export {name}", dynamic_ncols=True) as bar:
        size = transfer.export_to_file(col.path, name, out, lambda done, total: bar.update(done - bar.n))
    typer.echo(f"exported {name!r}: {len(col)} items, {size / 1e6:.1f} MB in {out}")


@app.command("import")
@handled
def import_(
    file: Annotated[Path, typer.Argument(help="An export file (monolith-collection export, or GET …/export)")],
    name: Annotated[str | None, typer.Option(help="Collection name; default: the name in the file")] = None,
    replace: Annotated[bool, typer.Option(help="Replace the collection if it exists")] = False,
    data_dir: DataDir = Path("data"),
    checkpoint: Checkpoint = None,
) -> None:
    """Create a collection from an export file, all or nothing (refused if it was made with
    another checkpoint, or is truncated or altered)."""
    if not file.is_file():
        raise CliError(f"export file not found: {file}")
    store = Store(data_dir, StoreModel.from_monolith(_load_model(checkpoint)))
    with file.open("rb") as fh, tqdm(unit="item", desc="import", dynamic_ncols=True) as bar:
        target = name or _name_in(fh)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        col, count, created = transfer.import_collection(store, target, fh, replace, progress=progress)
    typer.echo(f"imported {count} items into {target!r} ({'new' if created else 'replaced'}) in {col.path}")


def _name_in(fh: Any) -> str:
    """The collection name an export's header records; the file is rewound after."""
    import gzip

    try:
        header = json.loads(gzip.GzipFile(fileobj=fh).readline(1 << 20))
        found = header["name"]
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        raise CliError(f"{fh.name} is not a Monolith collection export (no readable header); "
                       "give --name to try anyway") from None
    finally:
        fh.seek(0)
    if not isinstance(found, str):
        raise CliError("the export's header has no collection name; give --name")
    return found


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()

"""Bulk encoding: a large embedding file → a uint8 [N, H] ``.npy`` of codes, chunked, parallel,
resumable, and bit for bit what ``Monolith.encode`` gives.

Input: a float ``.npy`` [N, D] (memory-mapped, so any size) or one column of a Parquet file
(lists of floats; needs ``pyarrow``). Output: a ``.npy`` preallocated at its final size
(``np.lib.format.open_memmap``), written chunk by chunk; beside it ``OUT.progress.json`` records
which chunks are done. A chunk is marked done only after its rows were flushed to the file, and the
record is replaced atomically, so after a crash (kill -9, power loss) the next run redoes at most
the chunks that were in flight and the output is identical to an uninterrupted run. The record
also pins the input (path, size, rows), the model's weights (their sha256, so recording a report in
the checkpoint mid-job does not block the resume) and the encoding, so a resume with anything else
is refused; it is removed when the job completes.

Encoding runs on all cores as worker processes (each loads the model once, on one torch thread,
and reads and writes its chunks through its own memory maps: no data crosses a pipe), or in one
process on ``threads`` torch threads, or as a Ray Data job (:func:`encode_ray`:
``map_batches`` over model replicas on whatever Ray cluster ``ray.init`` finds; Ray is the
optional extra ``monolith[ray]``). Every path calls ``Monolith.encode`` on the same chunks,
whose rows do not depend on the batch they are in, so all give the same bytes
(tests/trainer/test_bulk.py; speed in bench/bench_encode.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqvae.checkpoint import made_by

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 16_384
FORMAT = "monolith-bulk-encode"
FORMAT_VERSION = 1


class BulkError(Exception):
    """A bulk job that cannot run as asked (bad input, a progress record from another job)."""


# ---- sources --------------------------------------------------------------------------------


class NpySource:
    """Rows of a float ``.npy`` through a memory map (never loaded whole)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.array = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise BulkError(f"cannot read {self.path} as .npy: {exc}") from exc
        if self.array.ndim != 2 or not np.issubdtype(self.array.dtype, np.floating):
            raise BulkError(f"{self.path}: expected a float array [N, D], got {self.array.dtype} "
                            f"{list(self.array.shape)}")
        self.rows, self.dim = (int(s) for s in self.array.shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[start:stop], dtype=np.float32)


class ParquetSource:
    """Rows of one list-of-floats column of a Parquet file, read by row groups."""

    def __init__(self, path: Path, column: str) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise BulkError("reading Parquet needs pyarrow: pip install pyarrow (or monolith[ray])") from exc
        self.path = Path(path)
        self.column = column
        try:
            self.file = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises its own error types
            raise BulkError(f"cannot read {self.path} as Parquet: {exc}") from exc
        if column not in self.file.schema_arrow.names:
            raise BulkError(f"{self.path} has no column {column!r}; columns: {self.file.schema_arrow.names}")
        meta = self.file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.rows = int(self.group_starts[-1])
        self._cache: tuple[int, np.ndarray] | None = None
        first = self.read(0, min(1, self.rows)) if self.rows else np.zeros((0, 0), np.float32)
        self.dim = int(first.shape[1]) if first.size else 0

    def _group(self, g: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != g:
            table = self.file.read_row_group(g, columns=[self.column])
            col = table.column(0).combine_chunks()
            flat = np.asarray(col.flatten() if hasattr(col, "flatten") else col.values, dtype=np.float32)
            n = len(col)
            if n and flat.size % n:
                raise BulkError(f"{self.path}: column {self.column!r} has rows of different lengths")
            self._cache = (g, flat.reshape(n, -1) if n else flat.reshape(0, 0))
        return self._cache[1]

    def read(self, start: int, stop: int) -> np.ndarray:
        parts = []
        g = int(np.searchsorted(self.group_starts, start, side="right") - 1)
        pos = start
        while pos < stop:
            base = int(self.group_starts[g])
            block = self._group(g)
            end = min(stop, base + len(block))
            parts.append(block[pos - base : end - base])
            pos, g = end, g + 1
        return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, 0), np.float32))


def open_source(path: Path, column: str | None = None) -> NpySource | ParquetSource:
    path = Path(path)
    if not path.is_file():
        raise BulkError(f"input not found: {path}")
    if path.suffix.lower() in {".parquet", ".pq"} or column is not None:
        if column is None:
            raise BulkError(f"{path}: name the embedding column with --column")
        return ParquetSource(path, column)
    return NpySource(path)


# ---- the job and its progress record -------------------------------------------------------


@dataclass
class Job:
    """One bulk encoding: what is read, what is written, in which chunks."""

    source: Path
    out: Path
    column: str | None
    rows: int
    dim: int
    num_heads: int
    chunk: int
    checkpoint: str | None  # path, for workers to load the same model (None: the shipped one)
    checkpoint_sha256: str
    encoding: dict[str, Any]
    weights_sha256: str = ""
    earlier_sha256: tuple[str, ...] = ()  # file sha256s the weights had (records written before weights_sha256)

    @property
    def chunks(self) -> int:
        return (self.rows + self.chunk - 1) // self.chunk

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.chunk, min(self.rows, (i + 1) * self.chunk)

    @property
    def progress_path(self) -> Path:
        return self.out.with_name(self.out.name + ".progress.json")

    def identity(self) -> dict[str, Any]:
        st = self.source.stat()
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "input": str(self.source.resolve()),
                "input_bytes": st.st_size, "column": self.column, "rows": self.rows, "dim": self.dim,
                "chunk": self.chunk, "weights_sha256": self.weights_sha256, "encoding": self.encoding}

    def same_model(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` was made with this model: by the weights, or for a record written
        before they were pinned, by the checkpoint file's sha256, current or earlier."""
        return made_by(record, self.weights_sha256, self.checkpoint_sha256, self.earlier_sha256)


def _ranges(done: Iterable[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(done):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


class Progress:
    """``OUT.progress.json``: the job's identity and the chunks done, replaced atomically."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.done: set[int] = set()

    def load(self) -> bool:
        """Read an earlier run's record; False if none. Refuses one made for another job."""
        path = self.job.progress_path
        if not path.exists():
            return False
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BulkError(f"{path} is unreadable ({exc}); delete it and {self.job.out} to start over") from exc
        want = self.job.identity()
        diff = [k for k in want if k != "weights_sha256" and record.get(k) != want[k]]
        if not self.job.same_model(record):
            diff.insert(0, "model weights")
        if diff:
            raise BulkError(f"{path} belongs to another job (it differs in {', '.join(diff)}); run with the same "
                            f"input and settings, or delete it and {self.job.out} to start over")
        self.done = {i for a, b in record.get("done", []) for i in range(a, b)}
        return True

    def save(self) -> None:
        path = self.job.progress_path
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps({**self.job.identity(), "done": _ranges(self.done)})
        with open(tmp, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename is durable once the directory is synced
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _open_output(job: Job, resume: bool) -> np.memmap:
    if resume and job.out.exists():
        out = np.load(job.out, mmap_mode="r+")
        if out.shape != (job.rows, job.num_heads) or out.dtype != np.uint8:
            raise BulkError(f"{job.out} does not match its progress record; delete both to start over")
        return out
    job.out.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(job.out, mode="w+", dtype=np.uint8, shape=(job.rows, job.num_heads))


def _flush(out: np.memmap) -> None:
    out.flush()  # msync: the chunk's bytes are on disk before the record says so


# ---- workers --------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _load_model(checkpoint: str | None, encoding: dict[str, Any]) -> Any:
    from vqvae.api import Monolith
    from vqvae.config import EncodeConfig

    return Monolith.load(checkpoint, encoding=EncodeConfig.model_validate(encoding))


def _worker_init(job: Job) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER["model"] = _load_model(job.checkpoint, job.encoding)
    _WORKER["source"] = open_source(job.source, job.column)
    _WORKER["out"] = np.load(job.out, mmap_mode="r+")
    _WORKER["job"] = job


def _worker_chunk(i: int) -> int:
    job: Job = _WORKER["job"]
    start, stop = job.bounds(i)
    out = _WORKER["out"]
    out[start:stop] = _WORKER["model"].encode(_WORKER["source"].read(start, stop))
    _flush(out)
    return i


# ---- entry points ---------------------------------------------------------------------------


def plan(source: Path, out: Path, monolith: Any, column: str | None = None, chunk: int = DEFAULT_CHUNK,
         checkpoint: str | Path | None = None) -> Job:
    src = open_source(source, column)
    if src.rows and src.dim != monolith.config.input_dim:
        raise BulkError(f"{source}: rows have {src.dim} values; the model takes {monolith.config.input_dim}")
    if chunk < 1:
        raise BulkError("chunk must be at least 1")
    return Job(source=Path(source), out=Path(out), column=column, rows=src.rows, dim=src.dim,
               num_heads=monolith.config.num_heads, chunk=int(chunk),
               checkpoint=str(checkpoint) if checkpoint else None, checkpoint_sha256=monolith.sha256,
               encoding=monolith.encoding.model_dump(mode="json"), weights_sha256=monolith.weights_sha256,
               earlier_sha256=tuple(monolith.checkpoint.earlier_sha256))


def prepare(job: Job, overwrite: bool = False) -> tuple[Progress, list[int]]:
    """The progress record (resumed when one matches) and the chunks still to do."""
    progress = Progress(job)
    resumed = False if overwrite else progress.load()
    if not resumed and job.out.exists() and not overwrite:
        raise BulkError(f"{job.out} exists and no unfinished job writes it; pass --overwrite to encode again")
    if overwrite:
        with contextlib.suppress(FileNotFoundError):
            job.progress_path.unlink()
    out = _open_output(job, resumed)
    del out
    progress.save()
    todo = [i for i in range(job.chunks) if i not in progress.done]
    if resumed:
        log.info("resuming %s: %d of %d chunks already done", job.out, job.chunks - len(todo), job.chunks)
    return progress, todo


def finish(job: Job) -> None:
    with contextlib.suppress(FileNotFoundError):
        job.progress_path.unlink()


Callback = Callable[[int], None]  # rows just finished


def run_local(job: Job, todo: list[int], progress: Progress, workers: int = 0, threads: int = 0,
              monolith: Any = None, on_rows: Callback | None = None) -> None:
    """Encode ``todo`` chunks: in ``workers`` processes (0: one per core), or, with ``workers=1``,
    in this process on ``threads`` torch threads (0: torch's default)."""
    if not todo:
        return
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        import torch

        model = monolith or _load_model(job.checkpoint, job.encoding)
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            src = open_source(job.source, job.column)
            out = np.load(job.out, mmap_mode="r+")
            for i in todo:
                start, stop = job.bounds(i)
                out[start:stop] = model.encode(src.read(start, stop))
                _flush(out)
                progress.done.add(i)
                progress.save()
                if on_rows:
                    on_rows(stop - start)
        finally:
            torch.set_num_threads(before)
        return
    ctx = mp.get_context("spawn")  # no fork after torch/OpenMP started their threads
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_worker_init,
                             initargs=(job,)) as pool:
        pending: set[Future[int]] = set()
        queue: Iterator[int] = iter(todo)
        for i in queue:  # a few chunks in flight per worker: bounded redo after a crash
            pending.add(pool.submit(_worker_chunk, i))
            if len(pending) >= 2 * workers:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = fut.result()
                progress.done.add(i)
                start, stop = job.bounds(i)
                if on_rows:
                    on_rows(stop - start)
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(_worker_chunk, nxt))
            progress.save()


class _RayEncoder:
    """One model replica of a Ray Data ``map_batches``: chunk numbers in, codes out."""

    def __init__(self, job: Job) -> None:
        import torch

        torch.set_num_threads(1)
        self.job = job
        self.model = _load_model(job.checkpoint, job.encoding)
        self.source = open_source(job.source, job.column)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks, codes = [], []
        for i in batch["chunk"].tolist():
            start, stop = self.job.bounds(int(i))
            chunks.append(int(i))
            codes.append(self.model.encode(self.source.read(start, stop)).reshape(-1))
        width = self.job.chunk * self.job.num_heads
        padded = np.zeros((len(codes), width), dtype=np.uint8)
        for j, c in enumerate(codes):
            padded[j, : len(c)] = c
        return {"chunk": np.asarray(chunks, dtype=np.int64), "codes": padded}


def run_ray(job: Job, todo: list[int], progress: Progress, replicas: int = 2, address: str | None = None,
            on_rows: Callback | None = None, init: bool = True) -> None:
    """The same job as a Ray Data pipeline: a dataset of chunk numbers, ``map_batches`` over
    ``replicas`` model replicas (actors) that read their chunks from ``job.source`` (a path every
    node must see: a shared file system), and this process writing the codes and the progress
    record as results stream back. ``ray.init(address)`` joins the configured cluster (``RAY_ADDRESS``
    or ``address``), or starts a local one."""
    try:
        import ray
    except ImportError as exc:
        raise BulkError("--ray needs Ray: pip install 'monolith[ray]' (ray[data])") from exc
    if not todo:
        return
    if init and not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    ds = ray.data.from_items([{"chunk": i} for i in todo])
    encoded = ds.map_batches(_RayEncoder, fn_constructor_args=(job,), batch_size=1, concurrency=replicas,
                             num_cpus=1, batch_format="numpy")
    out = np.load(job.out, mmap_mode="r+")
    for batch in encoded.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
        for i, flat in zip(batch["chunk"].tolist(), batch["codes"], strict=True):
            start, stop = job.bounds(int(i))
            out[start:stop] = flat[: (stop - start) * job.num_heads].reshape(stop - start, job.num_heads)
            _flush(out)
            progress.done.add(int(i))
            progress.save()
            if on_rows:
                on_rows(stop - start)


def encode_file(source: Path, out: Path, monolith: Any, column: str | None = None, chunk: int = DEFAULT_CHUNK,
                workers: int = 0, threads: int = 0, ray: bool = False, replicas: int = 2,
                ray_address: str | None = None, overwrite: bool = False, checkpoint: str | Path | None = None,
                progress_bar: bool = True) -> dict[str, Any]:
    """Encode ``source`` into ``out`` (resuming an interrupted run); returns a small report."""
    job = plan(source, out, monolith, column, chunk, checkpoint)
    progress, todo = prepare(job, overwrite)
    t0 = time.perf_counter()
    bar = None
    if progress_bar:
        from tqdm import tqdm

        bar = tqdm(total=job.rows, initial=job.rows - sum(b - a for a, b in map(job.bounds, todo)),
                   unit="vec", unit_scale=True, desc=f"encode {Path(source).name}")
    on_rows = bar.update if bar is not None else None
    try:
        if ray:
            run_ray(job, todo, progress, replicas=replicas, address=ray_address, on_rows=on_rows)
        else:
            run_local(job, todo, progress, workers=workers, threads=threads, monolith=monolith, on_rows=on_rows)
    finally:
        if bar is not None:
            bar.close()
    finish(job)
    seconds = time.perf_counter() - t0
    done_rows = sum(b - a for a, b in map(job.bounds, todo))
    return {"rows": job.rows, "encoded": done_rows, "resumed_chunks": job.chunks - len(todo),
            "seconds": round(seconds, 3), "vectors_per_s": round(done_rows / seconds, 1) if seconds > 0 else None,
            "out": str(out)}

"""Micro-batching of model work, off the event loop.

A forward pass over one row costs almost as much as over a hundred (weights are read either
way, and per-call overhead dominates on CPU), so many small concurrent requests are
coalesced: the first waiting request opens a batch, which then collects more for at most
``batch_wait_ms`` or until ``batch_max_size`` rows, and runs as one pass. All model work runs
on one dedicated worker thread: the event loop stays free to accept and parse requests,
and torch's own intra-op threads already use every core, so parallel passes would only
contend. Requests of ``batch_max_size`` rows or more (bulk ``.npy`` uploads) skip the wait
and go straight to the worker in large chunks, interleaving with small batches between
chunks. Past ``queue_limit`` outstanding requests, new ones are refused with
``Overloaded`` (the app answers 503 + Retry-After) instead of growing an unbounded queue.

Inputs are trusted: the routes validate each request once (``service.validation``), and
checking again per batch would scan every row twice. Internal callers stay safe all the same:
a batch that fails is re-run one request at a time, so one caller's bad input fails only that
caller (with the model's own message from ``vqvae.api``), never the others it was batched with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from service.drift import CollectionDrift, DriftWatch
from vqvae.api import Monolith
from vqvae.drift import CodeDrift, reconstruction_cosines
from vqvae.health import count_codes

log = logging.getLogger(__name__)

T = TypeVar("T")
In = TypeVar("In")

# Bulk requests are cut into chunks of this many rows so that a 100k-row upload does not
# hold the worker for seconds while single-row requests wait behind it.
BULK_CHUNK_ROWS = 8192
# Below this many rows a forward pass runs on one torch thread: splitting a tiny matmul
# across threads costs more than it saves, and on a busy machine the threads' barrier waits
# for a descheduled peer (measured on 2 cores: 1 row 30 ms with 2 threads, 0.6 ms with 1).
SMALL_BATCH_ROWS = 256
# Rows per encode pass whose reconstruction cosine is measured (decoded once more), for the
# drift check (vqvae.drift, service.drift): every row of a pass up to this many, else this many
# spread evenly through the whole pass, so one bulk request of a few thousand rows is judged on
# its own (the cosine is judged from 256). Decoding 512 rows costs a few ms beside the seconds an
# encode pass of thousands takes.
FIDELITY_ROWS = 512


class Overloaded(RuntimeError):
    """Too many requests are waiting for the model; retry after ``retry_after`` seconds."""

    def __init__(self, pending: int, limit: int, retry_after: int = 1) -> None:
        super().__init__(
            f"server is overloaded: {pending} requests are waiting for the model (limit {limit}, "
            f"MONOLITH_QUEUE_LIMIT); retry after {retry_after} s"
        )
        self.retry_after = retry_after


class TextModelUnavailable(RuntimeError):
    """Texts were sent to a server started without the text model."""


class TooMuchText(RuntimeError):
    """One request's texts add up to more characters than ``MONOLITH_MAX_REQUEST_CHARS`` (413)."""

    def __init__(self, chars: int, limit: int) -> None:
        super().__init__(
            f"the texts of this request have {chars} characters in all, more than the limit of {limit} "
            "per request (MONOLITH_MAX_REQUEST_CHARS); split them over several requests"
        )


class BatcherClosed(RuntimeError):
    """The server is shutting down."""

    retry_after = 5


@dataclass
class _Job(Generic[In]):
    payload: In
    rows: int
    future: asyncio.Future[Any] = field(repr=False)


class _Lane(Generic[In]):
    """One kind of work (encode, decode or embed): a queue and the task that batches it."""

    def __init__(
        self,
        name: str,
        batcher: MicroBatcher,
        run: Callable[[In], Any],
        join: Callable[[list[In]], In],
        split: Callable[[Any, list[int]], list[Any]],
    ) -> None:
        self.name = name
        self.batcher = batcher
        self.run = run
        self.join = join
        self.split = split
        self.queue: deque[_Job[In]] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=f"monolith-batcher-{self.name}")

    async def submit(self, payload: In, rows: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append(_Job(payload, rows, future))
        self.wakeup.set()
        return await future

    async def _next_batch(self) -> list[_Job[In]]:
        """Wait for a first job, then gather more until the size cap or the wait runs out."""
        while not self.queue:
            self.wakeup.clear()
            await self.wakeup.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batcher.wait_s
        batch = [self.queue.popleft()]
        rows = batch[0].rows
        while rows < self.batcher.max_size:
            if self.queue:
                if rows + self.queue[0].rows > self.batcher.max_size:
                    break  # it opens the next batch
                job = self.queue.popleft()
                batch.append(job)
                rows += job.rows
                continue
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout)
        return batch

    async def _loop(self) -> None:
        while True:
            batch = [job for job in await self._next_batch() if not job.future.done()]  # callers gone
            if not batch:
                continue
            try:
                await self._run(batch)
            except asyncio.CancelledError:
                _fail(batch, BatcherClosed("server is shutting down"))
                raise

    async def _run(self, batch: list[_Job[In]]) -> None:
        """One pass for the whole batch; if it fails, one pass per job, so that a bad input
        fails only its own caller."""
        try:
            joined = batch[0].payload if len(batch) == 1 else self.join([j.payload for j in batch])
            result = await self.batcher.call(self.run, joined)
            parts = self.split(result, [j.rows for j in batch])
        except Exception as exc:
            if len(batch) == 1:
                log.exception("%s pass of %d rows failed", self.name, batch[0].rows)
                _fail(batch, exc)
                return
            log.warning("%s batch of %d requests failed; running them one by one", self.name, len(batch))
            for job in batch:
                await self._run([job])
            return
        for job, part in zip(batch, parts, strict=True):
            if not job.future.done():
                job.future.set_result(part)

    def fail_pending(self) -> None:
        _fail(list(self.queue), BatcherClosed("server is shutting down"))
        self.queue.clear()


def _fail(jobs: list[_Job[Any]], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)


def _split_rows(result: np.ndarray, rows: list[int]) -> list[np.ndarray]:
    bounds = np.cumsum(rows)[:-1]
    return np.split(result, bounds)


class MicroBatcher:
    """Coalesces concurrent model calls; every public method is a coroutine.

    ``encode(x)`` float32 [N, D] → uint8 [N, H] codes (also counted in ``traffic_counts``);
    ``decode(codes)`` → float32 [N, D]; ``embed(texts)`` → float32 [N, D] unit vectors;
    ``call(fn, *args)`` runs any other CPU-bound model work (search, search_latent) on the
    same worker thread. Callers pass validated inputs (see the module docstring).
    """

    def __init__(
        self,
        monolith: Monolith,
        embedder: Any | None = None,
        *,
        wait_ms: float = 2.0,
        max_size: int = 4096,
        queue_limit: int = 1024,
        metrics: Any | None = None,
        executor: ThreadPoolExecutor | None = None,
        torch_threads: int = 0,
        max_request_chars: int | None = None,
    ) -> None:
        self.monolith = monolith
        self.embedder = embedder
        self.max_request_chars = max_request_chars  # text one request may ask of the text model
        self.wait_s = max(0.0, wait_ms) / 1000.0
        self.max_size = max(1, max_size)
        self.queue_limit = queue_limit
        self.metrics = metrics
        cfg = monolith.config
        self.traffic_counts = np.zeros((cfg.num_heads, cfg.codebook_size), dtype=np.int64)
        self.counts_lock = threading.Lock()
        self.cosine_sum, self.cosine_rows = 0.0, 0  # sampled cos(x, decode(codes)), under counts_lock
        self.drift = DriftWatch(monolith, metrics)  # re-judged after every encode pass
        self._collection_drift: dict[str, CollectionDrift] = {}  # fitted collections' own traffic
        self._own_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="monolith-model")
        self.pending = 0
        self._closed = False
        self.bulk_threads = torch_threads or torch.get_num_threads()
        self._threads_now: int | None = None
        self._lanes: list[_Lane[Any]] = []
        self._encode_lane: _Lane[np.ndarray] | None = None
        self._decode_lane: _Lane[np.ndarray] | None = None
        self._embed_lane: _Lane[list[str]] | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the lane tasks; call from the event loop that will serve requests."""
        self._encode_lane = _Lane("encode", self, self._encode_now, np.concatenate, _split_rows)
        self._decode_lane = _Lane("decode", self, self._decode_now, np.concatenate, _split_rows)
        self._embed_lane = _Lane("embed", self, self._embed_now, _join_texts, _split_rows)
        self._lanes = [self._encode_lane, self._decode_lane, self._embed_lane]
        for lane in self._lanes:
            lane.start()

    async def close(self) -> None:
        self._closed = True
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
            lane.fail_pending()
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)

    # -- public API -------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model worker thread and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def encode(self, x: np.ndarray, *, bulk: bool = False) -> np.ndarray:
        """Codes uint8 [N, H] for float32 embeddings [N, D]; ``bulk`` skips the coalescing wait."""
        if len(x) == 0:
            return np.zeros((0, self.monolith.config.num_heads), dtype=np.uint8)
        async with self._slot():
            if bulk or len(x) >= self.max_size:
                return await self._chunked(self._encode_now, x)
            assert self._encode_lane is not None
            return await self._encode_lane.submit(x, len(x))

    async def decode(self, codes: np.ndarray, *, bulk: bool = False) -> np.ndarray:
        """Reconstructions float32 [N, D] for integer codes [N, H] within the codebook."""
        if len(codes) == 0:
            return np.zeros((0, self.monolith.config.input_dim), dtype=np.float32)
        async with self._slot():
            if bulk or len(codes) >= self.max_size:
                return await self._chunked(self._decode_now, codes)
            assert self._decode_lane is not None
            return await self._decode_lane.submit(codes, len(codes))

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings float32 [N, D] of non-empty texts, from the text model.

        All of one request's texts come in one call, so this is where the work a request may
        ask of the text model is bounded (``TooMuchText``, 413)."""
        self.require_text_model()
        if self.max_request_chars is not None:
            chars = sum(len(t) for t in texts)
            if chars > self.max_request_chars:
                raise TooMuchText(chars, self.max_request_chars)
        if not texts:
            return np.zeros((0, self.monolith.config.input_dim), dtype=np.float32)
        async with self._slot():
            assert self._embed_lane is not None
            if len(texts) >= self.max_size:
                return await self._chunked(self._embed_now, texts)
            return await self._embed_lane.submit(texts, len(texts))

    def require_text_model(self) -> None:
        """Raise ``TextModelUnavailable`` (a 422 that says why) when texts cannot be embedded."""
        if self.embedder is None:
            raise TextModelUnavailable(
                "texts cannot be handled: this server was started without the text model "
                "(MONOLITH_LOAD_TEXT_MODEL=false); send 'embeddings' instead, or restart it with "
                "MONOLITH_LOAD_TEXT_MODEL=true"
            )

    # -- internals --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._closed or not self._lanes:
            raise BatcherClosed("the model worker is not running (server starting or shutting down)")
        if self.pending >= self.queue_limit:
            if self.metrics is not None:
                self.metrics.rejected.inc()
            raise Overloaded(self.pending, self.queue_limit)
        self.pending += 1
        self._gauge()
        try:
            yield
        finally:
            self.pending -= 1
            self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.pending)

    async def _chunked(self, fn: Callable[[Any], np.ndarray], data: Any) -> np.ndarray:
        step = max(self.max_size, BULK_CHUNK_ROWS)
        parts = [await self.call(fn, data[i : i + step]) for i in range(0, len(data), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _observe(self, op: str, rows: int) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.labels(op).observe(rows)

    def _use_threads(self, rows: int) -> None:
        """Worker thread: one torch thread for small passes, ``bulk_threads`` for large ones."""
        want = 1 if rows < SMALL_BATCH_ROWS else self.bulk_threads
        if want != self._threads_now:
            torch.set_num_threads(want)
            self._threads_now = want

    def _encode_now(self, x: np.ndarray) -> np.ndarray:
        """Worker thread: one forward pass, then count the codes it assigned."""
        self._use_threads(len(x))
        codes = self.monolith.encode(x)
        self._observe("encode", len(x))
        counts = count_codes(codes, self.monolith.config.codebook_size)
        sample = fidelity_sample(len(x))
        cosines = reconstruction_cosines(x[sample], self.monolith.decode(codes[sample])) if len(x) else np.zeros(0)
        with self.counts_lock:
            self.traffic_counts += counts
            self.cosine_sum += float(cosines.sum())
            self.cosine_rows += len(cosines)
        self.drift.check(self.snapshot_traffic)  # logs and sets the metrics when the status changes
        if self.metrics is not None:
            self.metrics.vectors_encoded.inc(len(codes))
        return codes

    def _decode_now(self, codes: np.ndarray) -> np.ndarray:
        self._use_threads(len(codes))
        out = self.monolith.decode(codes)
        self._observe("decode", len(codes))
        if self.metrics is not None:
            self.metrics.vectors_decoded.inc(len(out))
        return out

    def _embed_now(self, texts: list[str]) -> np.ndarray:
        assert self.embedder is not None
        self._use_threads(len(texts))
        out = self.embedder.embed(texts)
        self._observe("embed", len(texts))
        if self.metrics is not None:
            self.metrics.texts_embedded.inc(len(texts))
        return out

    def snapshot_counts(self) -> np.ndarray:
        """A consistent copy of the traffic counts (the worker may be adding to them)."""
        with self.counts_lock:
            return self.traffic_counts.copy()

    def snapshot_traffic(self) -> tuple[np.ndarray, float, int]:
        """Counts, and the sum and number of sampled reconstruction cosines, taken together."""
        with self.counts_lock:
            return self.traffic_counts.copy(), self.cosine_sum, self.cosine_rows

    def collection_drift(self, name: str, model: Monolith) -> CollectionDrift:
        """The traffic of collection ``name`` under its own ``model`` (counted afresh after a new fit)."""
        with self.counts_lock:
            watch = self._collection_drift.get(name)
            if watch is None or watch.weights_sha256 != model.weights_sha256:
                watch = self._collection_drift[name] = CollectionDrift(name, model)
            return watch

    async def encode_with(self, name: str, model: Monolith, x: np.ndarray) -> np.ndarray:
        """Codes of ``x`` by a fitted collection's own ``model`` on the worker thread (not micro-batched:
        requests of different collections cannot share a pass), counted as that collection's traffic."""
        watch = self.collection_drift(name, model)

        def run() -> np.ndarray:
            self._use_threads(len(x))
            codes = model.encode(x, progress=False)
            sample = fidelity_sample(len(x))
            cosines = reconstruction_cosines(x[sample], model.decode(codes[sample])) if len(x) else np.zeros(0)
            watch.observe(count_codes(codes, model.config.codebook_size), cosines)
            return codes

        if len(x) == 0:
            return np.zeros((0, model.config.num_heads), dtype=np.uint8)
        async with self._slot():
            return await self.call(run)

    def traffic_drift(self) -> tuple[np.ndarray, CodeDrift | None]:
        """The traffic counts and their drift from the checkpoint's reference, judged now (None
        where the checkpoint stores nothing to compare with)."""
        return self.drift.check(self.snapshot_traffic)


def fidelity_sample(rows: int, limit: int = FIDELITY_ROWS) -> np.ndarray:
    """Indices of at most ``limit`` rows spread evenly over ``rows`` (all of them when fewer)."""
    if rows <= limit:
        return np.arange(rows)
    return np.arange(limit) * rows // limit


def _join_texts(parts: list[list[str]]) -> list[str]:
    return [t for part in parts for t in part]

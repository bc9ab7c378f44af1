"""The micro-batcher: coalesces, isolates bad input, refuses when full, stays correct."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import BatcherClosed, MicroBatcher, Overloaded, TextModelUnavailable
from service.metrics import ServiceMetrics
from tests.service.conftest import unit_rows
from vqvae.api import Monolith


def passes(metrics: ServiceMetrics, op: str = "encode") -> float:
    return metrics.registry.get_sample_value("monolith_batch_size_count", {"op": op}) or 0.0


def run(coro):
    return asyncio.run(coro)


def test_concurrent_small_requests_share_forward_passes(monolith: Monolith) -> None:
    x = unit_rows(32, seed=10)
    metrics = ServiceMetrics()

    async def main() -> list[np.ndarray]:
        b = MicroBatcher(monolith, wait_ms=50, max_size=4096, metrics=metrics)
        await b.start()
        try:
            return await asyncio.gather(*(b.encode(x[i : i + 1]) for i in range(len(x))))
        finally:
            await b.close()

    results = run(main())
    np.testing.assert_array_equal(np.concatenate(results), monolith.encode(x))
    assert passes(metrics) <= 4  # 32 requests, a handful of passes (1 when the loop is quick)
    assert metrics.registry.get_sample_value("monolith_vectors_encoded_total") == 32


def test_batching_off_runs_one_pass_per_request(monolith: Monolith) -> None:
    x = unit_rows(8, seed=11)
    metrics = ServiceMetrics()

    async def main() -> list[np.ndarray]:
        b = MicroBatcher(monolith, wait_ms=0, max_size=1, metrics=metrics)
        await b.start()
        try:
            return await asyncio.gather(*(b.encode(x[i : i + 1]) for i in range(len(x))))
        finally:
            await b.close()

    np.testing.assert_array_equal(np.concatenate(run(main())), monolith.encode(x))
    assert passes(metrics) == 8


def test_batches_respect_max_size(monolith: Monolith) -> None:
    x = unit_rows(12, seed=12)
    metrics = ServiceMetrics()

    async def main() -> list[np.ndarray]:
        b = MicroBatcher(monolith, wait_ms=50, max_size=5, metrics=metrics)
        await b.start()
        try:
            return await asyncio.gather(*(b.encode(x[i : i + 2]) for i in range(0, 12, 2)))
        finally:
            await b.close()

    np.testing.assert_array_equal(np.concatenate(run(main())), monolith.encode(x))
    # 6 requests of 2 rows under a 5-row cap: at most 2 requests (4 rows) per pass
    assert passes(metrics) >= 3
    assert metrics.registry.get_sample_value("monolith_batch_size_sum", {"op": "encode"}) == 12


def test_one_callers_bad_input_fails_only_that_caller(monolith: Monolith) -> None:
    good = unit_rows(3, seed=13)
    bad = np.full((1, 384), np.nan, np.float32)

    async def main() -> list[object]:
        b = MicroBatcher(monolith, wait_ms=50)
        await b.start()
        try:
            return await asyncio.gather(b.encode(good), b.encode(bad), b.decode([[0, 0, 0, 999]]),
                                        return_exceptions=True)
        finally:
            await b.close()

    ok, nan, out_of_range = run(main())
    np.testing.assert_array_equal(ok, monolith.encode(good))
    assert isinstance(nan, ValueError) and "NaN" in str(nan)
    assert isinstance(out_of_range, ValueError)


def test_traffic_counts_count_every_assigned_code(monolith: Monolith) -> None:
    x = unit_rows(50, seed=14)

    async def main() -> MicroBatcher:
        b = MicroBatcher(monolith, wait_ms=1)
        await b.start()
        await asyncio.gather(b.encode(x[:20]), b.encode(x[20:]), b.encode(x[:5], bulk=True))
        await b.close()
        return b

    b = run(main())
    codes = np.concatenate([monolith.encode(x), monolith.encode(x[:5])])
    expected = np.stack([np.bincount(codes[:, h], minlength=monolith.config.codebook_size)
                         for h in range(monolith.config.num_heads)])
    np.testing.assert_array_equal(b.snapshot_counts(), expected)


def test_full_queue_raises_overloaded(monolith: Monolith) -> None:
    release = threading.Event()

    async def main() -> tuple[object, list[np.ndarray]]:
        b = MicroBatcher(monolith, wait_ms=0, queue_limit=2)
        await b.start()
        blocker = b.executor.submit(release.wait)
        waiting = [asyncio.create_task(b.encode(unit_rows(1, seed=s))) for s in (1, 2)]
        await asyncio.sleep(0.05)
        try:
            await b.encode(unit_rows(1))
            refused: object = None
        except Overloaded as exc:
            refused = exc
        release.set()
        done = await asyncio.gather(*waiting)
        blocker.result(5)
        await b.close()
        return refused, done

    refused, done = run(main())
    assert isinstance(refused, Overloaded) and refused.retry_after >= 1
    assert [d.shape for d in done] == [(1, 4), (1, 4)]


def test_embed_without_text_model_and_after_close(monolith: Monolith) -> None:
    async def main() -> None:
        b = MicroBatcher(monolith, embedder=None)
        await b.start()
        with pytest.raises(TextModelUnavailable, match="MONOLITH_LOAD_TEXT_MODEL"):
            await b.embed(["hello"])
        await b.close()
        with pytest.raises(BatcherClosed):
            await b.encode(unit_rows(1))

    run(main())


def test_texts_are_coalesced_and_match_the_embedder(monolith: Monolith, embedder) -> None:
    texts = [f"sentence number {i}" for i in range(6)]
    metrics = ServiceMetrics()

    async def main() -> list[np.ndarray]:
        b = MicroBatcher(monolith, embedder=embedder, wait_ms=50, metrics=metrics)
        await b.start()
        try:
            return await asyncio.gather(*(b.embed([t]) for t in texts))
        finally:
            await b.close()

    np.testing.assert_allclose(np.concatenate(run(main())), embedder.embed(texts), atol=1e-5)
    assert passes(metrics, "embed") < len(texts)


def test_small_passes_use_one_torch_thread(monolith: Monolith) -> None:
    import torch

    from service.batcher import SMALL_BATCH_ROWS

    async def main() -> tuple[int, int]:
        b = MicroBatcher(monolith, wait_ms=0, torch_threads=2)
        await b.start()
        try:
            await b.encode(unit_rows(1))
            small = await b.call(torch.get_num_threads)
            await b.encode(unit_rows(SMALL_BATCH_ROWS), bulk=True)
            large = await b.call(torch.get_num_threads)
            return small, large
        finally:
            await b.close()

    assert run(main()) == (1, 2)

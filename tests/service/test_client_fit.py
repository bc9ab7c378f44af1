"""The Python clients' fit routes against the real app: fit a collection's own model (waiting
for it, or giving up waiting), follow and cancel the job, read the collection's codebook health,
and create a collection without automatic fits; the async twin too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.client import AsyncMonolithClient, FitJob, FitTimeout, MonolithClient, MonolithError
from service.settings import Settings
from tests.service.conftest import AppFactory, unit_rows
from tests.service.test_client_collections import AppTransport
from vqvae.api import Monolith

# A fit of a few seconds. On these rows (seed 0) it ends applied or not applied; on some other
# random rows (seed 3) the full recipe collapses the codebooks and the job fails.
QUICK: dict[str, Any] = {"min_rows": 200, "epochs": 1, "baselines": False}


@pytest.fixture
def mc(make_client: AppFactory) -> Iterator[MonolithClient]:
    with MonolithClient("http://testserver", transport=AppTransport(make_client())) as client:
        yield client


def filled(mc: MonolithClient, name: str, n: int = 300, **create: Any) -> None:
    mc.create_collection(name, **create)
    mc.upsert(name, [f"r{i}" for i in range(n)], embeddings=unit_rows(n, seed=0))


def test_fit_waits_for_the_job_to_end(mc: MonolithClient) -> None:
    filled(mc, "docs")
    job = mc.fit("docs", wait=True, poll_s=0.2, timeout_s=300, **QUICK)
    # the outcome is the fit's (300 random rows may not beat, or may collapse: a reason either way);
    # the client's part is to wait for the end and hand back the whole job
    assert isinstance(job, FitJob) and job.status in ("applied", "not_applied", "failed"), job.reason
    assert job.collection == "docs" and job.trigger == "request" and job.recipe["epochs"] == 1
    assert job.finished and (job.status == "applied" or job.reason)
    assert job.status == "failed" or (job.report is not None and job.applied == (job.status == "applied"))
    again = mc.fit_status("docs")
    assert again.id == job.id and again.status == job.status
    assert mc.get_collection("docs").fit is not None
    with pytest.raises(MonolithError) as err:  # it ended: nothing to cancel
        mc.cancel_fit("docs")
    assert err.value.status == 404


def test_giving_up_waiting_leaves_the_fit_running_until_cancelled(mc: MonolithClient) -> None:
    filled(mc, "docs")
    with pytest.raises(FitTimeout) as err:
        mc.fit("docs", wait=True, timeout_s=0, **QUICK)
    assert isinstance(err.value, TimeoutError) and isinstance(err.value, MonolithError)
    assert err.value.job.running and "cancel_fit" in str(err.value)
    assert mc.fit_status("docs").id == err.value.job.id
    cancelled = mc.cancel_fit("docs")
    assert cancelled.id == err.value.job.id and cancelled.status == "cancelled"


def test_fit_errors_are_monolith_errors(mc: MonolithClient) -> None:
    filled(mc, "bare", n=10, vectors="none")
    with pytest.raises(MonolithError) as err:
        mc.fit("bare", min_rows=200)
    assert err.value.status == 422 and "keeps no vectors" in str(err.value)
    for call in (mc.fit_status, mc.cancel_fit):  # no fit since the server started
        with pytest.raises(MonolithError) as err:
            call("bare")
        assert err.value.status == 404
    with pytest.raises(MonolithError) as err:
        mc.fit("nope")
    assert err.value.status == 404


def test_bad_wait_arguments_fail_before_sending(mc: MonolithClient) -> None:
    filled(mc, "docs", n=10)
    for bad in ({"poll_s": 0}, {"timeout_s": -1}):
        with pytest.raises(ValueError):
            mc.fit("docs", wait=True, **bad)
    with pytest.raises(MonolithError) as err:
        mc.fit_status("docs")  # nothing was started
    assert err.value.status == 404


def test_collection_health_and_auto_fit(mc: MonolithClient, monolith: Monolith) -> None:
    filled(mc, "docs", n=50, auto_fit=False)
    info = mc.get_collection("docs")
    assert info.auto_fit is False and info.fit is None
    health = mc.collection_health("docs")
    assert health["source"] == "collection" and health["total_assignments"] == 50 * len(health["heads"])
    assert len(health["heads"]) == monolith.encode(unit_rows(1)).shape[1]
    assert mc.create_collection("docs", auto_fit=True).auto_fit is True
    assert mc.create_collection("other").auto_fit is True  # the server's default


def test_async_client_fits_too(monolith: Monolith, tmp_path: Path) -> None:
    async def main() -> None:
        app = create_app(Settings(data_dir=tmp_path / "data", load_text_model=False, auto_fit_at=0),
                         monolith=monolith)
        async with app.router.lifespan_context(app):
            async with AsyncMonolithClient("http://app", transport=httpx.ASGITransport(app=app)) as client:
                for _ in range(200):
                    if await client.ready():
                        break
                    await asyncio.sleep(0.05)
                assert (await client.create_collection("docs", auto_fit=False)).auto_fit is False
                await client.upsert("docs", [f"r{i}" for i in range(300)], embeddings=unit_rows(300, seed=0))
                assert (await client.collection_health("docs"))["source"] == "collection"
                with pytest.raises(MonolithError) as err:
                    await client.cancel_fit("docs")
                assert err.value.status == 404
                job = await client.fit("docs", wait=True, poll_s=0.2, timeout_s=300, parts="decoder_codebooks",
                                       **QUICK)
                assert job.status in ("applied", "not_applied", "failed") and job.finished, job.reason
                assert job.recipe["parts"] == "decoder_codebooks" and (await client.fit_status("docs")).id == job.id

    asyncio.run(main())


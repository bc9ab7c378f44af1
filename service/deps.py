"""Route dependencies, declared once as ``Annotated`` aliases: ``batcher: Batcher`` in a
signature says "503 until the model is loaded" without repeating how.

They are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a thread
pool, a thread hand-off per dependency per request for what is an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.batcher import MicroBatcher
from service.collections.fitting import FitJobs
from service.collections.store import Store
from service.errors import NotReady
from service.settings import Settings
from service.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


async def get_settings(state: State) -> Settings:
    return state.settings


AppSettings = Annotated[Settings, Depends(get_settings)]


async def ready_batcher(state: State) -> MicroBatcher:
    """The micro-batcher once the model is loaded; ``NotReady`` (503 + Retry-After) before."""
    if state.ready:
        return state.batcher
    if state.load_error:
        raise NotReady(f"the model failed to load: {state.load_error}; fix the checkpoint or text model "
                       "settings and restart the server", retry_after=None)
    raise NotReady("the model is still loading; retry in a few seconds (GET /readyz says when it is ready)")


Batcher = Annotated[MicroBatcher, Depends(ready_batcher)]


async def ready_store(state: State, _: Batcher) -> Store:
    """The collection store: open whenever the server is ready (start-up opens it before that)."""
    return state.store


Collections = Annotated[Store, Depends(ready_store)]


async def ready_fits(state: State, _: Batcher) -> FitJobs:
    """The fit jobs of the collections: there whenever the store is."""
    return state.fits


Fits = Annotated[FitJobs, Depends(ready_fits)]

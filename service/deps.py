"""Shared route dependencies: the loaded model's pieces, or 503 while there are none.

They are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a thread
pool, a thread hand-off per dependency per request for what is an attribute lookup.
"""

from __future__ import annotations

from fastapi import Request

from service.batcher import MicroBatcher
from service.errors import NotReady
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def ready_batcher(request: Request) -> MicroBatcher:
    """The micro-batcher once the model is loaded; ``NotReady`` (503 + Retry-After) before."""
    state = request.app.state
    if state.ready:
        return state.batcher
    if state.load_error:
        raise NotReady(f"the model failed to load: {state.load_error}; fix the checkpoint or text model "
                       "settings and restart the server", retry_after=None)
    raise NotReady("the model is still loading; retry in a few seconds (GET /readyz says when it is ready)")

"""Bearer-token auth: one shared key from ``MONOLITH_API_KEY``.

A dependency rather than middleware so that every router — including the collections
router — states it where its routes are declared, and OpenAPI shows the lock. Keys are
compared with ``hmac.compare_digest`` so response timing does not leak how much of a
guessed key was right.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.deps import State
from service.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="The server's MONOLITH_API_KEY")


async def require_api_key(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless auth is off (key unset or empty) or ``Authorization: Bearer <key>`` carries the right key."""
    key = state.settings.api_key
    if not key:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>' with the server's "
                           "MONOLITH_API_KEY")
    if not hmac.compare_digest(credentials.credentials.encode("utf-8"), key.encode("utf-8")):
        raise Unauthorized("wrong API key: the bearer token does not match the server's MONOLITH_API_KEY")

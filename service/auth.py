"""Bearer-token auth: one shared key from ``MONOLITH_API_KEY``.

A dependency rather than middleware so that every router — including the collections
router — states it where its routes are declared, and OpenAPI shows the lock. Keys are
compared with ``hmac.compare_digest`` so response timing does not leak how much of a
guessed key was right.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="The server's MONOLITH_API_KEY")


def configured_key(request: Request) -> str | None:
    """The key the server expects, or None when auth is off (unset or empty)."""
    key = getattr(request.app.state.settings, "api_key", None)
    return key or None


async def require_api_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """401 unless auth is off or ``Authorization: Bearer <key>`` carries the right key."""
    key = configured_key(request)
    if key is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing API key: send the header 'Authorization: Bearer <key>' with the server's "
            "MONOLITH_API_KEY",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(credentials.credentials.encode("utf-8"), key.encode("utf-8")):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="wrong API key: the bearer token does not match the server's MONOLITH_API_KEY",
            headers={"WWW-Authenticate": "Bearer"},
        )

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
from fastapi.security.utils import get_authorization_scheme_param

from service.deps import State
from service.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="The server's MONOLITH_API_KEY")


async def require_api_key(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless auth is off (key unset or empty) or ``Authorization: Bearer <key>`` carries the right key."""
    if credentials is None:
        problem = key_problem(None, None, state.settings.api_key)
    else:
        problem = key_problem(credentials.scheme, credentials.credentials, state.settings.api_key)
    if problem is not None:
        raise Unauthorized(problem)


def key_problem(scheme: str | None, token: str | None, key: str | None) -> str | None:
    """Why a request's credentials are refused, or None when they pass (or auth is off).

    Shared by the dependency above and by ``service.limits``, which checks the key of a body
    request before reading its body."""
    if not key:
        return None
    if not scheme or not token or scheme.lower() != "bearer":
        return ("missing API key: send the header 'Authorization: Bearer <key>' with the server's "
                "MONOLITH_API_KEY")
    if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), key.encode("utf-8")):
        return "wrong API key: the bearer token does not match the server's MONOLITH_API_KEY"
    return None


def header_problem(authorization: str | None, key: str | None) -> str | None:
    """:func:`key_problem` of a raw ``Authorization`` header value (parsed as ``HTTPBearer`` does)."""
    if not key:
        return None
    scheme, token = get_authorization_scheme_param(authorization)
    return key_problem(scheme, token, key)

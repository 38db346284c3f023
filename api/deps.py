"""Request-scoped dependencies: the app's store and publisher, and the bearer-token guard.

They are ``async def`` on purpose: they only read ``app.state``, and FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from anneal.outbox import Publisher
from api.errors import ApiError
from wsm.store import Store, validate_name

_bearer = HTTPBearer(auto_error=False, description="WSM_API_TOKEN, required on mutating endpoints when set")


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Mutating endpoints: the bearer token must equal ``WSM_API_TOKEN`` (if one is configured)."""
    expected = request.app.state.settings.api_token
    if not expected:
        return  # no token configured: `wsm serve` binds to loopback only
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong bearer token: send 'Authorization: Bearer <WSM_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def run_name(run: str) -> str:
    """A path's run name, validated by the store's naming rules (400 otherwise)."""
    return validate_name(run, "run name")


StoreDep = Annotated[Store, Depends(get_store)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]

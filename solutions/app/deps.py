"""Dependencies shared by the routers.

Everything stateful is built once per app in ``create_app`` and kept on ``app.state``; these
functions hand it to the routes. Routes declare what they need with the ``...Dep`` aliases,
and tests can swap any of them through ``app.dependency_overrides``.

They are ``async def`` although none of them awaits anything: FastAPI runs a plain ``def``
dependency in a worker thread, and that hop costs far more than reading ``app.state``.
"""

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .cache import CacheStats
from .cache_backends import CacheBackend
from .jobs import JobQueue
from .metrics import Metrics
from .models import UserRecord
from .sessions import SessionBackend
from .settings import Settings
from .store import UserRepository

# auto_error=False: we raise our own 401 below, with a clearer message. The scheme still
# gives the OpenAPI docs their "Authorize" button.
bearer_scheme = HTTPBearer(auto_error=False)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_store(request: Request) -> UserRepository:
    return request.app.state.store


async def get_sessions(request: Request) -> SessionBackend:
    return request.app.state.sessions


async def get_cache(request: Request) -> CacheBackend | None:
    """The response cache's backend; ``None`` when ``CACHE_ENABLED=false``."""
    return request.app.state.cache


async def get_cache_stats(request: Request) -> CacheStats:
    return request.app.state.cache_stats


async def get_jobs(request: Request) -> JobQueue:
    """The app's job queue (exercise 10.2)."""
    return request.app.state.jobs


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
StoreDep = Annotated[UserRepository, Depends(get_store)]
SessionsDep = Annotated[SessionBackend, Depends(get_sessions)]
CacheDep = Annotated[CacheBackend | None, Depends(get_cache)]
CacheStatsDep = Annotated[CacheStats, Depends(get_cache_stats)]
JobsDep = Annotated[JobQueue, Depends(get_jobs)]
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def unauthorized(detail: str) -> HTTPException:
    """A 401 with the ``WWW-Authenticate`` header that HTTP requires on it."""
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


async def get_bearer_token(credentials: CredentialsDep) -> str:
    """The token from ``Authorization: Bearer <token>``; 401 if the header is missing."""
    if credentials is None:
        raise unauthorized("Not authenticated")
    return credentials.credentials


BearerTokenDep = Annotated[str, Depends(get_bearer_token)]


async def get_current_user(
    token: BearerTokenDep, sessions: SessionsDep, store: StoreDep
) -> UserRecord:
    """The logged-in user; 401 if the token is unknown or expired, or the user deleted."""
    user_id = await sessions.get_user_id(token)
    user = await store.get_user(user_id) if user_id is not None else None
    if user is None:
        raise unauthorized("Invalid or expired token")
    return user


CurrentUserDep = Annotated[UserRecord, Depends(get_current_user)]


async def require_admin(token: BearerTokenDep, settings: SettingsDep) -> None:
    """Let the request through only with ``Authorization: Bearer <ADMIN_TOKEN>``."""
    # compare_digest takes the same time wherever the first wrong character is, so the
    # token cannot be guessed one character at a time from response times. It compares
    # bytes because on str it raises for non-ASCII input, which a client controls.
    if not secrets.compare_digest(token.encode(), settings.admin_token.encode()):
        raise unauthorized("Invalid admin token")

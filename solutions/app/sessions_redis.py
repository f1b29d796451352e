"""Login sessions in Redis, shared by every instance (exercise 10.4, ``SESSION_BACKEND=redis``).

One key per session, ``<REDIS_KEY_PREFIX>session:<token>``, holding the user id, with a Redis
TTL of SESSION_TTL_SECONDS: Redis forgets expired sessions by itself, so no instance has to
sweep them. A login on one instance is honoured by all, and a logout (a DEL) ends the
session on all of them at once.

Failure policy, unlike the cache's: the cache can fall back to the store, but a session
exists nowhere else. When Redis cannot be reached, every method raises
``SessionStoreUnavailableError``, which the app answers with 503 (``main.py``): "try
again", rather than a 500, or a 401 that would tell a logged-in user their token is wrong.
The socket timeouts are the cache's (a fraction of a second), so a dead Redis costs a
request little; redis-py reconnects on the next command by itself.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .redis_clients import async_redis
from .sessions import SessionStoreUnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RedisSessionStore:
    """A ``SessionBackend`` on a Redis server, through redis-py's asyncio client."""

    def __init__(self, redis: Redis, *, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self._reachable = True

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str, ttl_seconds: int, timeout: float
    ) -> RedisSessionStore:
        """A store on the server at ``url``; it connects lazily, on its first command."""
        return cls(async_redis(url, timeout=timeout), prefix=prefix, ttl_seconds=ttl_seconds)

    async def create(self, user_id: int) -> str:
        """Start a session for ``user_id`` and return its token."""
        token = secrets.token_urlsafe(32)
        await self._call(self.redis.set(self._key(token), user_id, ex=self.ttl_seconds))
        return token

    async def get_user_id(self, token: str) -> int | None:
        """The user id behind ``token``, or ``None`` if unknown or expired."""
        value = await self._call(self.redis.get(self._key(token)))
        return int(value) if value is not None else None

    async def revoke(self, token: str) -> bool:
        """End the session everywhere; ``False`` if the token was unknown or expired."""
        return bool(await self._call(self.redis.delete(self._key(token))))

    async def aclose(self) -> None:
        await self.redis.aclose()  # also closes the connection pool from_url made

    def _key(self, token: str) -> str:
        return f"{self.prefix}session:{token}"

    async def _call(self, command: Awaitable[T]) -> T:
        """Await a Redis command; raise ``SessionStoreUnavailableError`` if it fails."""
        try:
            result = await command
        except (RedisError, OSError) as exc:
            # Logged when Redis goes away and when it comes back, not once per request.
            if self._reachable:
                self._reachable = False
                # redis-py's message names host and port, never the password of the URL.
                logger.warning("redis session store unreachable, answering 503: %s", exc)
            raise SessionStoreUnavailableError(str(exc)) from exc
        if not self._reachable:
            self._reachable = True
            logger.warning("redis session store reachable again")
        return result

"""The Redis clients of the app: one way to connect, for every feature that uses Redis.

The response cache (10.1), the instance registry (10.3), and the sessions, locks and rate
limits (10.4) all talk to the Redis at ``REDIS_URL``, and all want the same two things of
their client:

- **short timeouts** (``REDIS_SOCKET_TIMEOUT_SECONDS``, a fraction of a second) to connect
  and for each answer: a request that waits seconds for a dead Redis is worse than one
  that goes without it, and redis-py's default waits and retries with back-off;
- **one immediate retry on a broken connection**: after Redis restarts, the pool still holds
  connections to the old process, and the first command on each would fail. Timeouts are
  not retried: that would double the wait.

Each client connects lazily, on its first command, so building one at startup costs
nothing and needs no Redis yet.
"""

from __future__ import annotations

import redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry as SyncRetry


def async_redis(url: str, *, timeout: float) -> Redis:
    """An asyncio client for the event loop that first uses it."""
    return Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
    )


def sync_redis(url: str, *, timeout: float) -> redis.Redis:
    """A blocking client, for code that runs in a thread of its own (the job scheduler)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=SyncRetry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
    )

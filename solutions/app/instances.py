"""Which instances of the API run, and which of them are draining (exercise 10.3, stretch).

With ``INSTANCE_REGISTRY=redis`` every instance keeps one Redis hash,
``<INSTANCE_REGISTRY_PREFIX>instance:<INSTANCE_ID>``, with its ``state`` (``serving`` or
``draining``) and ``last_seen``, rewritten every second with a TTL of five. So:

- a replica, an operator or a deploy script sees who serves (``GET /admin/instances``), and
  who is on the way out, the moment its shutdown starts;
- an instance that shuts down deletes its key at the end;
- one that dies without a word (``kill -9``, a lost machine) disappears within the TTL.

Redis is a convenience here, never a dependency: when it cannot be reached the app serves
on, logs a warning (once, and once more when Redis is back) and retries at the next beat.

Two processes may claim one id: with an explicit ``INSTANCE_ID``, a graceful restart runs
the old and the new server side by side for a moment. The newest claim wins: an instance
takes the key over when it registers, and later writes and the final delete only touch a key
it still owns, so the old server, draining, cannot mark the new one draining or delete it.

With ``INSTANCE_REGISTRY=none`` an instance knows only itself (``LocalInstanceRegistry``).

Every response also names the instance that gave it, in an ``X-Instance-Id`` header
(``InstanceIdMiddleware``, exercise 10.4): behind a load balancer, that is how a client, a
test or a person with curl sees the requests spread, and which instance answered wrongly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal, Protocol

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .redis_clients import async_redis

logger = logging.getLogger(__name__)

InstanceState = Literal["serving", "draining"]

HEARTBEAT_SECONDS = 1.0
TTL_SECONDS = 5.0

# KEYS[1] the instance's key; ARGV: owner, state, last_seen, ttl in ms, takeover (1 or 0).
# One script, so that "is it still mine?" and the write are one step for Redis.
_WRITE_IF_OWNER = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] and ARGV[5] == '0' then
    return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'state', ARGV[2], 'last_seen', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
_DELETE_IF_OWNER = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Instance(BaseModel):
    """One instance, as ``GET /admin/instances`` lists it."""

    id: str
    state: InstanceState
    last_seen: datetime


class InstanceRegistry(Protocol):
    """Where this instance says what it is doing, and learns what the others do."""

    async def start(self) -> None:
        """Register as serving; keep the registration alive until ``aclose``."""

    async def publish(self) -> None:
        """Write this instance's current state now (the start of a shutdown)."""

    async def instances(self) -> list[Instance]:
        """The instances registered, this one included, by id."""
        ...

    async def aclose(self) -> None:
        """Unregister and let go of any connection."""


def _now() -> datetime:
    return datetime.now(UTC)


class LocalInstanceRegistry:
    """No shared registry: an instance knows only itself."""

    def __init__(self, instance_id: str, state: Callable[[], InstanceState]) -> None:
        self.instance_id = instance_id
        self._state = state

    async def start(self) -> None:
        pass

    async def publish(self) -> None:
        pass

    async def instances(self) -> list[Instance]:
        return [Instance(id=self.instance_id, state=self._state(), last_seen=_now())]

    async def aclose(self) -> None:
        pass


class RedisInstanceRegistry:
    """The instances in Redis, each a hash with a TTL that its heartbeat renews."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        instance_id: str,
        state: Callable[[], InstanceState],
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.instance_id = instance_id
        self._state = state
        self._key = f"{prefix}instance:{instance_id}"
        # This process's claim on the key (see the module docstring).
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._write = redis.register_script(_WRITE_IF_OWNER)
        self._delete = redis.register_script(_DELETE_IF_OWNER)
        self._heartbeat: asyncio.Task[None] | None = None
        self._reachable = True

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str,
        instance_id: str,
        state: Callable[[], InstanceState],
        timeout: float,
    ) -> RedisInstanceRegistry:
        # Short timeouts: a beat that waits seconds for a dead Redis delays nothing that
        # matters, but the draining update at the start of a shutdown would.
        redis = async_redis(url, timeout=timeout)
        return cls(redis, prefix=prefix, instance_id=instance_id, state=state)

    async def start(self) -> None:
        await self._beat(takeover=True)
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="instance-heartbeat")

    async def publish(self) -> None:
        await self._beat()

    async def instances(self) -> list[Instance]:
        found: list[Instance] = []
        try:
            keys = [key async for key in self.redis.scan_iter(match=f"{self.prefix}instance:*")]
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                hashes = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._set_reachable(False, exc)
            raise
        self._set_reachable(True)
        for key, fields in zip(keys, hashes, strict=True):
            if not fields:  # expired between the scan and the read
                continue
            instance_id = key.decode()[len(f"{self.prefix}instance:") :]
            found.append(
                Instance(
                    id=instance_id,
                    state=fields[b"state"].decode(),
                    last_seen=datetime.fromisoformat(fields[b"last_seen"].decode()),
                )
            )
        return sorted(found, key=lambda instance: instance.id)

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        try:
            await self._delete(keys=[self._key], args=[self._owner])
        except (RedisError, OSError) as exc:
            # The key expires by itself within TTL_SECONDS.
            logger.warning("could not unregister instance %s: %s", self.instance_id, exc)
        await self.redis.aclose()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self._beat()

    async def _beat(self, *, takeover: bool = False) -> None:
        args = [
            self._owner,
            self._state(),
            _now().isoformat(),
            round(TTL_SECONDS * 1000),
            int(takeover),
        ]
        try:
            await self._write(keys=[self._key], args=args)
        except (RedisError, OSError) as exc:
            self._set_reachable(False, exc)
            return
        self._set_reachable(True)

    def _set_reachable(self, reachable: bool, error: Exception | None = None) -> None:
        # A warning when Redis goes away and one when it is back, not one per beat.
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if reachable:
            logger.warning("instance registry reachable again")
        else:
            logger.warning("instance registry unreachable, serving on: %s", error)


INSTANCE_ID_HEADER = b"x-instance-id"


class InstanceIdMiddleware:
    """Add ``X-Instance-Id: <instance name>`` to every HTTP response.

    A plain ASGI middleware, outside the response cache, so that cache hits carry it too
    (and name the instance that served the hit, not the one that cached it). The header is
    encoded once, here: per response it costs one list append.
    """

    def __init__(self, app: ASGIApp, instance_id: str) -> None:
        self.app = app
        self.header = (INSTANCE_ID_HEADER, instance_id.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = self.header

        async def send_with_instance_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A new message and list: the ones received may be shared (a cache hit's).
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, send_with_instance_id)

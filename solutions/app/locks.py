"""A lock in Redis, and a gate that lets one instance run each recurring job (10.4, stretch).

Every instance runs the same scheduler, so a recurring cleanup would run once per instance
per interval. ``RecurringRunGate.should_run()`` lets exactly one of them through per
interval: the first to ask takes the key ``<prefix>lock:<name>`` (``SET NX PX``); the
others find it taken and skip.

The gate's key is never released, only left to expire a little before the next interval
(``interval * 0.9``, at least 100 ms). Releasing it when the run is over would let an
instance whose scheduler fires later in the same interval run the job again; keeping it
a full interval would make the holder's own next run find it still taken. And since it
expires by itself, an instance that dies holding it blocks nobody for long.

``RedisLock`` is the general lock beneath: a random token per holder, so that only the
holder can release or extend it (a compare-and-delete in one Lua script). Without the
token, a holder whose lock expired while it was still working would delete the lock that
someone else took meanwhile.

Failure policy of the gate: when Redis cannot be reached it answers True, and the job runs
locally, on every instance. The recurring job is an idempotent cleanup: a run too many
costs a little work, a run skipped by every instance for the length of an outage leaves
data that should be gone. The fallback is logged once when Redis goes away and once when
it is back. ``RedisLock`` itself raises Redis errors: whether to go ahead without the lock
is the caller's decision.

The recurring jobs are scheduled from huey's scheduler thread, not from the event loop,
so the gate has a synchronous twin, ``SyncRecurringRunGate``, on redis-py's blocking client:
the same command on the same key, so async and sync gates of one name exclude each other.
"""

from __future__ import annotations

import logging
import secrets
from types import TracebackType

import redis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .redis_clients import async_redis, sync_redis

logger = logging.getLogger(__name__)

# Below this a lock could expire between two polls of the scheduler (0.25 s) and the
# timing of Redis' expiry (about a millisecond) would start to matter.
MIN_GATE_TTL_MS = 100
GATE_TTL_FRACTION = 0.9

# KEYS[1] the lock; ARGV[1] the holder's token. Reading the owner and deleting must be one
# step for Redis: between a GET and a DEL the lock could expire and be taken by another.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
# ARGV[2] the new time to live in milliseconds.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisLock:
    """A lock on ``key`` that expires after ``ttl_seconds`` unless its holder extends it.

    Not re-entrant, and it does not wait: ``acquire()`` answers at once. Use it as
    ``async with RedisLock(redis, key, ttl_seconds=30) as held: if held: ...``, which
    releases on the way out if it was acquired.
    """

    def __init__(self, redis: Redis, key: str, *, ttl_seconds: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = max(1, round(ttl_seconds * 1000))
        # Who holds it: unguessable, so no other holder (process, task) can match it.
        self.token = secrets.token_hex(16)
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)
        self._held = False  # by the `async with` form, so that its exit releases only if so

    async def acquire(self) -> bool:
        """Take the lock if nobody holds it; ``True`` if this holder now does."""
        return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def release(self) -> bool:
        """Let go of the lock; ``False`` if this holder no longer held it (it expired)."""
        return bool(await self._release(keys=[self.key], args=[self.token]))

    async def extend(self) -> bool:
        """Restart the lock's time to live; ``False`` if this holder no longer held it."""
        return bool(await self._extend(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def __aenter__(self) -> bool:
        self._held = await self.acquire()
        return self._held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._held:
            await self.release()


def gate_ttl_ms(interval_seconds: float) -> int:
    """How long a gate's key lives: a bit less than one interval, at least 100 ms."""
    return max(MIN_GATE_TTL_MS, round(interval_seconds * 1000 * GATE_TTL_FRACTION))


class _GateState:
    """What both gates share: the key, its time to live, and the outage log."""

    def __init__(self, *, prefix: str, name: str, interval_seconds: float) -> None:
        self.name = name
        self.key = f"{prefix}lock:{name}"
        self.ttl_ms = gate_ttl_ms(interval_seconds)
        # Only for reading the key in a debugger or redis-cli: nobody releases a gate.
        self.token = secrets.token_hex(16)
        self._reachable = True

    def set_reachable(self, reachable: bool, error: Exception | None = None) -> None:
        # A warning when Redis goes away and one when it is back, not one per interval.
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if reachable:
            logger.warning(
                "recurring job %s: redis reachable again; one instance runs it", self.name
            )
        else:
            logger.warning(
                "recurring job %s: redis unreachable, every instance runs it: %s", self.name, error
            )


class RecurringRunGate(_GateState):
    """Let one instance per interval run the recurring job ``name`` (on the event loop)."""

    def __init__(self, redis: Redis, *, prefix: str, name: str, interval_seconds: float) -> None:
        super().__init__(prefix=prefix, name=name, interval_seconds=interval_seconds)
        self.redis = redis

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str, name: str, interval_seconds: float, timeout: float
    ) -> RecurringRunGate:
        """A gate on the server at ``url``; it connects lazily, on its first question."""
        return cls(
            async_redis(url, timeout=timeout),
            prefix=prefix,
            name=name,
            interval_seconds=interval_seconds,
        )

    async def should_run(self) -> bool:
        """Whether this instance runs the job this interval (``True`` if Redis is down)."""
        try:
            taken = await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms)
        except (RedisError, OSError) as exc:
            self.set_reachable(False, exc)
            return True
        self.set_reachable(True)
        return bool(taken)

    async def aclose(self) -> None:
        await self.redis.aclose()


class SyncRecurringRunGate(_GateState):
    """``RecurringRunGate`` for a thread (huey's scheduler), on redis-py's blocking client.

    A blocking client rather than a call into the event loop: the scheduler thread does
    blocking I/O already (the SQLite queue), a call through the loop would stall whenever
    the loop is busy or shutting down, and an asyncio client is tied to the loop that
    created it.
    """

    def __init__(
        self, redis: redis.Redis, *, prefix: str, name: str, interval_seconds: float
    ) -> None:
        super().__init__(prefix=prefix, name=name, interval_seconds=interval_seconds)
        self.redis = redis

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str, name: str, interval_seconds: float, timeout: float
    ) -> SyncRecurringRunGate:
        """A gate on the server at ``url``; it connects lazily, on its first question."""
        client = sync_redis(url, timeout=timeout)
        return cls(client, prefix=prefix, name=name, interval_seconds=interval_seconds)

    def should_run(self) -> bool:
        """Whether this instance runs the job this interval (``True`` if Redis is down)."""
        try:
            taken = self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms)
        except (RedisError, OSError) as exc:
            self.set_reachable(False, exc)
            return True
        self.set_reachable(True)
        return bool(taken)

    def close(self) -> None:
        self.redis.close()

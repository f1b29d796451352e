"""The Redis backend: cached responses shared by every instance of the API.

Cache-aside: the middleware asks Redis first and, on a miss, builds the response from the
store and writes it back. Redis only ever holds copies, so it may vanish at any time; the
app then answers from the store. What lives in Redis, every key starting with
``CACHE_KEY_PREFIX``:

- ``<prefix>entry:<cache key>``: a string, an entry serialised by ``encode_entry``, with a
  Redis TTL equal to the entry's (Redis deletes it on time; nobody has to sweep);
- ``<prefix>tag:<tag>``: a set of the entry keys carrying that tag, so ``invalidate(tag)``
  finds them all without scanning the keyspace. It lives as long as its longest-lived
  member, so tags of entries that simply expired do not pile up.

Failure policy: a Redis that cannot be reached (connection refused or reset, timeout) turns
every call into a miss or a no-op, never an error for the client. The socket timeouts are a
fraction of a second, so a dead server costs a request little. redis-py reconnects on the
next command by itself, so caching resumes as soon as Redis is back. A warning is logged
when Redis goes away and again when it returns, not on every request in between.

An invalidation that fails while Redis is down is remembered and replayed before any other
call once Redis answers again: a Redis that persists its data to disk would otherwise come
back with entries the app knows to be stale. The memory of those tags is this process's, so
it is lost if the process stops first; the entries then live until their TTL.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Iterable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .cache_backends import (
    BackendName,
    CachedResponse,
    CacheUsage,
    decode_entry,
    encode_entry,
    is_compressed,
)
from .redis_clients import async_redis

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Redis is unreachable: treat the call as a miss. OSError covers a socket error that
# redis-py lets through unwrapped.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_SCAN_BATCH = 500


class RedisCache:
    """A ``CacheBackend`` on a Redis server, through redis-py's asyncio client."""

    name: BackendName = "redis"

    def __init__(self, redis: Redis, *, prefix: str, compression_min_bytes: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.compression_min_bytes = compression_min_bytes
        # The wall clock, not time.monotonic(): entries are shared between processes and
        # machines, and only the wall clock means the same thing on all of them. It is used
        # for the Age header and a request's max-age only; Redis itself enforces the TTL.
        self.clock = time.time
        self._reachable = True
        self._unconfirmed_tags: set[str] = set()

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str, compression_min_bytes: int, timeout: float
    ) -> RedisCache:
        """A backend on the server at ``url``; it connects lazily, on its first command."""
        return cls(
            async_redis(url, timeout=timeout),
            prefix=prefix,
            compression_min_bytes=compression_min_bytes,
        )

    # --- CacheBackend --------------------------------------------------------------------

    async def get(self, key: str) -> CachedResponse | None:
        return await self._guarded(self._get(key), default=None)

    async def set(self, key: str, entry: CachedResponse, tags: Iterable[str]) -> None:
        await self._guarded(self._set(key, entry, tags), default=None)

    async def invalidate(self, *tags: str) -> int:
        # Remembered first, forgotten only once Redis confirms: see the module docstring.
        self._unconfirmed_tags.update(tags)
        return await self._guarded(self._drop_unconfirmed_tags(), default=0)

    async def usage(self) -> CacheUsage | None:
        return await self._guarded(self._usage(), default=None)

    async def ping(self) -> bool:
        return await self._guarded(self._ping(), default=False)

    async def aclose(self) -> None:
        await self.redis.aclose()  # also closes the connection pool from_url made

    # --- Redis commands ------------------------------------------------------------------

    async def _get(self, key: str) -> CachedResponse | None:
        await self._drop_unconfirmed_tags()
        blob = await self.redis.get(self._entry_key(key))
        if blob is None:
            return None
        try:
            return decode_entry(blob)
        except (ValueError, KeyError, TypeError):
            # Written by another version of the app, say: a miss, and the fresh response
            # overwrites it.
            logger.warning("unreadable cache entry %r treated as a miss", key)
            return None

    async def _set(self, key: str, entry: CachedResponse, tags: Iterable[str]) -> None:
        await self._drop_unconfirmed_tags()
        entry_key = self._entry_key(key)
        ttl_ms = max(1, math.ceil(entry.ttl * 1000))
        blob = encode_entry(entry, compression_min_bytes=self.compression_min_bytes)
        # One MULTI/EXEC: no other client sees the entry without its tags.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(entry_key, blob, px=ttl_ms)
            for tag in tags:
                tag_key = self._tag_key(tag)
                pipe.sadd(tag_key, entry_key)
                # A new set gets this entry's TTL (NX); an existing one is only ever
                # extended (GT), so it outlives every entry listed in it. Redis >= 7.0.
                pipe.pexpire(tag_key, ttl_ms, nx=True)
                pipe.pexpire(tag_key, ttl_ms, gt=True)
            await pipe.execute()

    async def _drop_unconfirmed_tags(self) -> int:
        """Delete the entries of every tag invalidated but not yet confirmed by Redis."""
        if not self._unconfirmed_tags:
            return 0
        tags = set(self._unconfirmed_tags)
        tag_keys = [self._tag_key(tag) for tag in sorted(tags)]
        dropped = 0

        async def drop(pipe: Pipeline) -> None:
            # WATCH (by transaction()) + MULTI: if an entry is tagged between reading the
            # sets and deleting them, EXEC fails and this runs again, so no entry is left
            # behind without its tag set.
            nonlocal dropped
            entry_keys: set[bytes] = set()
            for tag_key in tag_keys:
                entry_keys |= await pipe.smembers(tag_key)
            pipe.multi()
            pipe.delete(*tag_keys)
            if entry_keys:
                pipe.delete(*entry_keys)
            dropped = len(entry_keys)

        results = await self.redis.transaction(drop, *tag_keys)
        self._unconfirmed_tags -= tags
        # The second DEL's answer counts the entries that still existed (others expired).
        return results[1] if dropped else 0

    async def _usage(self) -> CacheUsage:
        """Count and measure the entries with SCAN, STRLEN and GETRANGE.

        This walks every entry key of the prefix: fine for an admin endpoint over a cache
        of thousands of entries, too slow to call per request. SCAN does not block Redis
        the way KEYS would. A key that expires during the walk is left out.
        """
        await self._drop_unconfirmed_tags()
        entries = size = compressed = 0
        keys = [
            key
            async for key in self.redis.scan_iter(match=self._entry_pattern(), count=_SCAN_BATCH)
        ]
        for start in range(0, len(keys), _SCAN_BATCH):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys[start : start + _SCAN_BATCH]:
                    pipe.strlen(key)
                    pipe.getrange(key, 0, 0)  # enough for is_compressed
                results = await pipe.execute()
            for length, flag in zip(results[::2], results[1::2], strict=True):
                if length:
                    entries += 1
                    size += length
                    compressed += is_compressed(flag)
        return CacheUsage(entries=entries, bytes=size, compressed_entries=compressed)

    async def _ping(self) -> bool:
        await self._drop_unconfirmed_tags()
        return bool(await self.redis.ping())

    # --- helpers -------------------------------------------------------------------------

    async def _guarded(self, call: Awaitable[T], *, default: T) -> T:
        """Await ``call``; if Redis cannot be reached, log the change and return ``default``."""
        try:
            result = await call
        except UNREACHABLE as exc:
            self._set_reachable(False, exc)
            return default
        except RedisError as exc:
            # Redis answered, but with an error (out of memory, read-only replica...): a
            # configuration problem worth a warning every time, still not worth a 500.
            logger.warning("redis cache call failed, treated as a miss: %s", exc)
            return default
        self._set_reachable(True)
        return result

    def _set_reachable(self, reachable: bool, error: Exception | None = None) -> None:
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if reachable:
            logger.warning("redis cache reachable again; caching resumes")
        else:
            # redis-py's message names host and port, never the password of the URL.
            logger.warning("redis cache unreachable, serving from the store: %s", error)

    def _entry_key(self, key: str) -> str:
        return f"{self.prefix}entry:{key}"

    def _tag_key(self, tag: str) -> str:
        return f"{self.prefix}tag:{tag}"

    def _entry_pattern(self) -> str:
        # The prefix is data, not a pattern: escape the characters SCAN MATCH treats as glob.
        escaped = "".join(f"\\{char}" if char in "*?[]\\" else char for char in self.prefix)
        return f"{escaped}entry:*"

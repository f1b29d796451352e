"""Rate limiting that every instance of the API shares (exercise 10.4, stretch).

Each client may make ``limit`` requests per window; the next ones are answered ``429 Too
Many Requests`` with a ``Retry-After`` header until the window ends. Every counted response
says where the client stands, in the headers of the IETF draft "RateLimit header fields for
HTTP": ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds).

The window starts at the client's first request and lasts ``window_seconds`` (a fixed
window per client, not one aligned on the clock). A window aligned on the clock, say every
minute on the minute, lets a client burst twice the limit around the boundary: ``limit``
requests at 11:59:59 and ``limit`` more at 12:00:00. Anchored on the first request, the
count cannot reset in the middle of a burst.

Where the counts live decides whether the limit holds for the whole service:

- ``MemoryRateLimiter``: in this process. Right for one instance; behind a load balancer
  with N instances, each counts alone, so a client gets N times the limit (the bottleneck
  exercise 10.4 is about).
- ``RedisRateLimiter``: in Redis, one key per client, ``<prefix>ratelimit:<client>``, that
  every instance increments, so the limit holds however many instances serve.

Failure policy: the limiter protects the API, it is not part of what the API does, so a
Redis that cannot be reached lets every request through (fail open) rather than turning an
outage of Redis into an outage of the API. A warning is logged when Redis goes away and
again when it is back, not on every request in between.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .redis_clients import async_redis

logger = logging.getLogger(__name__)

DEFAULT_EXEMPT_PREFIXES = ("/health", "/metrics")

# KEYS[1] the client's counter; ARGV[1] the window in milliseconds. Returns {count, pttl}.
# One script, so that the increment and the expiry are one step for Redis: two separate
# commands could leave a counter without expiry (the client blocked for ever) if the
# process died between them.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
    -- A counter without expiry (written by someone else): give it a window, never a ban.
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


@dataclass(frozen=True)
class Decision:
    """What the limiter decided for one request, and what the response headers say."""

    allowed: bool
    limit: int
    remaining: int  # requests left in the current window
    retry_after: int  # whole seconds until the window ends (at least 1 while counted)
    # False when the limiter could not count (Redis unreachable): the request goes through
    # and the response claims nothing about the client's budget.
    counted: bool = True


class RateLimiter(Protocol):
    """Counts a client's requests and says whether one more is allowed."""

    limit: int

    async def hit(self, client: str) -> Decision:
        """Count one request of ``client`` and decide whether it may go on."""
        ...

    async def aclose(self) -> None:
        """Let go of any connection."""


def _decision(limit: int, count: int, ms_left: float) -> Decision:
    return Decision(
        allowed=count <= limit,
        limit=limit,
        remaining=max(0, limit - count),
        retry_after=max(1, math.ceil(ms_left / 1000)),
    )


class MemoryRateLimiter:
    """The counts in this process: exact for one instance, per instance for several."""

    def __init__(
        self, limit: int, window_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        # client -> (count, end of its window). Kept in the order the windows started, and
        # every window is equally long, so the expired ones are always at the front.
        self._windows: dict[str, tuple[int, float]] = {}

    async def hit(self, client: str) -> Decision:
        # No await between reading and writing: on one event loop, no lock is needed.
        now = self._clock()
        self._forget_expired(now)
        count, ends = self._windows.get(client, (0, 0.0))
        if ends <= now:
            count, ends = 0, now + self.window_seconds
        self._windows[client] = (count + 1, ends)
        return _decision(self.limit, count + 1, (ends - now) * 1000)

    def _forget_expired(self, now: float) -> None:
        # Without this, every client ever seen would stay in memory.
        while self._windows:
            oldest = next(iter(self._windows))
            if self._windows[oldest][1] > now:
                return
            del self._windows[oldest]

    async def aclose(self) -> None:
        pass


class RedisRateLimiter:
    """The counts in Redis, shared by every instance that uses the same server and prefix."""

    def __init__(self, redis: Redis, *, prefix: str, limit: int, window_seconds: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.limit = limit
        self.window_ms = max(1, round(window_seconds * 1000))
        self._hit = redis.register_script(_HIT)
        self._reachable = True

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str, limit: int, window_seconds: float, timeout: float
    ) -> RedisRateLimiter:
        """A limiter on the server at ``url``; it connects lazily, on its first request."""
        # Every request waits for this call: the client's short timeouts matter here.
        redis = async_redis(url, timeout=timeout)
        return cls(redis, prefix=prefix, limit=limit, window_seconds=window_seconds)

    def key(self, client: str) -> str:
        """The Redis key that counts ``client``'s requests."""
        return f"{self.prefix}ratelimit:{client}"

    async def hit(self, client: str) -> Decision:
        try:
            count, ms_left = await self._hit(keys=[self.key(client)], args=[self.window_ms])
        except (RedisError, OSError) as exc:
            self._set_reachable(False, exc)
            return Decision(
                allowed=True, limit=self.limit, remaining=self.limit, retry_after=0, counted=False
            )
        self._set_reachable(True)
        return _decision(self.limit, int(count), int(ms_left))

    async def aclose(self) -> None:
        await self.redis.aclose()  # also closes the connection pool from_url made

    def _set_reachable(self, reachable: bool, error: Exception | None = None) -> None:
        # A warning when Redis goes away and one when it is back, not one per request.
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if reachable:
            logger.warning("rate limiter: redis reachable again; limiting resumes")
        else:
            # redis-py's message names host and port, never the password of the URL.
            logger.warning("rate limiter: redis unreachable, letting requests through: %s", error)


class RateLimitMiddleware:
    """Answer 429 to a client over its limit; tell every counted client its budget.

    Requests to ``exempt_prefixes`` are never counted: a load balancer's health checks or a
    Prometheus scrape every few seconds must not use up a budget, nor ever be refused.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        exempt_prefixes: Sequence[str] = DEFAULT_EXEMPT_PREFIXES,
        trust_forwarded_for: bool = False,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.exempt_prefixes = tuple(exempt_prefixes)
        self.trust_forwarded_for = trust_forwarded_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        decision = await self.limiter.hit(self.client_key(scope))
        if not decision.counted:
            await self.app(scope, receive, send)
            return
        headers = _budget_headers(decision)
        if not decision.allowed:
            await _send_too_many_requests(send, decision, headers)
            return

        async def send_with_budget(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A new message and list: the ones received may be shared (a cache hit's).
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_budget)

    def client_key(self, scope: Scope) -> str:
        """Whose budget this request uses: the address of the client that sent it.

        X-Forwarded-For is ignored unless ``trust_forwarded_for``: any client can write
        that header, and a limiter that believed it could be dodged by sending a new
        made-up address with every request. Behind a load balancer, either let the server
        rewrite the client address from the header of trusted proxies only (uvicorn does
        so for FORWARDED_ALLOW_IPS, 127.0.0.1 by default), or set ``trust_forwarded_for``,
        which takes the header's first entry: right only when the balancer overwrites the
        header with the address it saw, and the instances are unreachable except through it.
        """
        if self.trust_forwarded_for:
            forwarded = _header(scope, b"x-forwarded-for").split(",")[0].strip()
            if forwarded:
                return forwarded
        client = scope.get("client")
        return client[0] if client else "unknown"

    def _exempt(self, path: str) -> bool:
        # "/health" exempts /health and /health/ready, not /healthy.
        return any(path == p or path.startswith(f"{p}/") for p in self.exempt_prefixes)


def _budget_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    return [
        (b"ratelimit-limit", str(decision.limit).encode()),
        (b"ratelimit-remaining", str(decision.remaining).encode()),
        (b"ratelimit-reset", str(decision.retry_after).encode()),
    ]


async def _send_too_many_requests(
    send: Send, decision: Decision, headers: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps({"detail": "rate limit exceeded"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(decision.retry_after).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""

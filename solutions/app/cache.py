"""Response caching for the users API (exercise 10.1).

A pure ASGI middleware sits in front of the routers: a repeated `GET /users` or
`GET /users/{id}` is answered from memory without reaching the store, and a successful
POST, PUT or DELETE drops the entries it makes stale. It is hand-written rather than taken
from a caching library because the HTTP details are the point of the exercise, and the
libraries get some of them subtly wrong (request `max-age`, invalidation by tag).

Entries are tagged (`users:list`, `users:item:7`) so one mutation invalidates every entry
that carries its tag, whatever query string the cached request had.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LIST_TAG = "users:list"

_LIST_PATH = re.compile(r"^/users$")
_ITEM_PATH = re.compile(r"^/users/(?P<user_id>\d+)$")
_MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class CachedRoute:
    """Put in the scope on a hit, where the router never runs, so that request metrics
    still label the request with its route template (they read `scope["route"].path`)."""

    path: str


def item_tag(user_id: str | int) -> str:
    # int(): /users/007 and /users/7 are the same user, so they must share a tag.
    return f"users:item:{int(user_id)}"


@dataclass(frozen=True)
class CachedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float  # time.monotonic(): immune to wall-clock jumps
    ttl: float

    def age(self, now: float) -> float:
        return now - self.stored_at

    def is_fresh(self, now: float) -> bool:
        return self.age(now) < self.ttl


class MemoryCache:
    """A bounded, TTL-aware map of cached responses with tag-based invalidation.

    The app runs on one event loop and no method awaits, so no lock is needed.
    """

    def __init__(self, *, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[CachedResponse, frozenset[str]]] = OrderedDict()

    def get(self, key: str) -> CachedResponse | None:
        found = self._entries.get(key)
        if found is None:
            return None
        entry, _ = found
        if not entry.is_fresh(self.clock()):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)  # least recently used leaves first
        return entry

    def set(self, key: str, entry: CachedResponse, tags: Iterable[str]) -> None:
        self._entries[key] = (entry, frozenset(tags))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, *tags: str) -> int:
        """Drop every entry carrying one of `tags`; returns how many were dropped."""
        wanted = set(tags)
        stale = [key for key, (_, entry_tags) in self._entries.items() if entry_tags & wanted]
        for key in stale:
            del self._entries[key]
        return len(stale)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class RequestCacheControl:
    """What the client asked for in its `Cache-Control` header."""

    no_cache: bool = False  # do not answer from the cache (but store the fresh answer)
    no_store: bool = False  # neither answer from nor write to the cache
    max_age: float | None = None  # accept a cached copy only up to this age

    @classmethod
    def parse(cls, header: str) -> RequestCacheControl:
        directives: dict[str, str | None] = {}
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            if name:
                directives[name.lower()] = value.strip().strip('"') or None
        max_age = directives.get("max-age")
        return cls(
            no_cache="no-cache" in directives,
            no_store="no-store" in directives,
            max_age=float(max_age) if max_age and max_age.isdigit() else None,
        )

    def accepts(self, entry: CachedResponse, now: float) -> bool:
        if self.no_cache or self.no_store:
            return False
        return self.max_age is None or entry.age(now) <= self.max_age


class ResponseCacheMiddleware:
    """Serve cacheable GETs from `cache`; invalidate on successful mutations of users."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        cache: MemoryCache,
        list_ttl: float,
        item_ttl: float,
        registry: CollectorRegistry,
    ) -> None:
        self.app = app
        self.cache = cache
        self.list_ttl = list_ttl
        self.item_ttl = item_ttl
        self.lookups = Counter(
            "cache_lookups",
            "Response cache lookups by result (hit, miss, bypass)",
            ["result"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and (policy := self._policy(path)) is not None:
            ttl, tags, route = policy
            await self._get(scope, receive, send, ttl=ttl, tags=tags, route=route)
        elif method in _MUTATIONS and (path == "/users" or _ITEM_PATH.match(path)):
            await self._mutation(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _policy(self, path: str) -> tuple[float, tuple[str, ...], str] | None:
        """TTL, tags and route template of a cacheable path; None if it is not cached."""
        if _LIST_PATH.match(path):
            return self.list_ttl, (LIST_TAG,), "/users"
        if match := _ITEM_PATH.match(path):
            return self.item_ttl, (item_tag(match["user_id"]),), "/users/{user_id}"
        return None

    async def _get(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        ttl: float,
        tags: tuple[str, ...],
        route: str,
    ) -> None:
        key = _cache_key(scope)
        control = RequestCacheControl.parse(_header(scope, b"cache-control"))
        now = self.cache.clock()
        entry = self.cache.get(key)
        if entry is not None and control.accepts(entry, now):
            self.lookups.labels("hit").inc()
            scope["route"] = CachedRoute(route)
            remaining = math.ceil(entry.ttl - entry.age(now))
            extra = [
                (b"x-cache", b"HIT"),
                (b"age", str(int(entry.age(now))).encode()),
                (b"cache-control", f"public, max-age={remaining}".encode()),
            ]
            await send(
                {
                    "type": "http.response.start",
                    "status": entry.status,
                    "headers": entry.headers + extra,
                }
            )
            await send({"type": "http.response.body", "body": entry.body})
            return
        self.lookups.labels("bypass" if entry is not None else "miss").inc()
        start, body = await _capture(self.app, scope, receive)
        extra = [(b"x-cache", b"MISS")]
        if start["status"] == 200 and not control.no_store:
            self.cache.set(
                key,
                CachedResponse(200, list(start["headers"]), body, self.cache.clock(), ttl),
                tags,
            )
            # Only a stored response advertises a lifetime: a 404 must not be kept downstream.
            extra.append((b"cache-control", f"public, max-age={math.ceil(ttl)}".encode()))
        await send({**start, "headers": [*start["headers"], *extra]})
        await send({"type": "http.response.body", "body": body})

    async def _mutation(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_and_invalidate(message: Message) -> None:
            # Invalidate before the client hears of success, so its next GET is fresh.
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                match = _ITEM_PATH.match(scope["path"])
                self.cache.invalidate(LIST_TAG, *([item_tag(match["user_id"])] if match else []))
            await send(message)

        await self.app(scope, receive, send_and_invalidate)


def _cache_key(scope: Scope) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    return f"GET {scope['path']}?{query}" if query else f"GET {scope['path']}"


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


async def _capture(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[Message, bytes]:
    """Run the app and collect its whole response (the cached endpoints return small JSON)."""
    start: Message = {}
    chunks: list[bytes] = []

    async def collect(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, collect)
    return start, b"".join(chunks)

"""Response caching for the users API (exercise 10.1).

A pure ASGI middleware sits in front of the routers: a repeated `GET /users`,
`GET /users/{id}` or `GET /auth/me` is answered from the cache without reaching the store,
and a successful POST, PUT or DELETE drops the entries it makes stale. It is hand-written
rather than taken from a caching library because the HTTP details are the point of the
exercise, and the libraries get some of them subtly wrong (request `max-age`, invalidation
by tag).

Entries are tagged (`users:list`, `users:item:7`) so one mutation invalidates every entry
that carries its tag, whatever query string the cached request had. Where the entries live
is the backend's business (`cache_backends.py`: in memory, or in Redis); this module decides
what is cached, for how long and for whom, and lets concurrent misses of one key share a
single trip to the store.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .cache_backends import CacheBackend, CachedResponse
from .sessions import SessionBackend, SessionStoreUnavailableError

LIST_TAG = "users:list"

_LIST_PATH = re.compile(r"^/users$")
_ITEM_PATH = re.compile(r"^/users/(?P<user_id>\d+)$")
_ME_PATH = "/auth/me"
_MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

logger = logging.getLogger(__name__)

LookupResult = Literal["hit", "miss", "bypass"]


@dataclass(frozen=True)
class CachedRoute:
    """Put in the scope on a hit, where the router never runs, so that request metrics
    still label the request with its route template (they read `scope["route"].path`)."""

    path: str


def item_tag(user_id: str | int) -> str:
    # int(): /users/007 and /users/7 are the same user, so they must share a tag.
    return f"users:item:{int(user_id)}"


@dataclass(frozen=True)
class CachePolicy:
    """How the response to one cacheable GET is cached."""

    ttl: float
    tags: tuple[str, ...]
    route: str  # the route template, for the request metrics of a hit
    # Whose response this is: part of the key, so that users never share an entry.
    partition: str = ""

    def cache_control(self, max_age: float) -> bytes:
        return _cache_control(bool(self.partition), max(0, math.ceil(max_age)))


@functools.lru_cache(maxsize=1024)  # few distinct values: seconds left of a few TTLs
def _cache_control(private: bool, max_age: int) -> bytes:
    # A per-user response must not be kept by a shared cache (a proxy, a CDN) that would
    # hand it to the next user; only the user's own browser may keep it.
    return f"{'private' if private else 'public'}, max-age={max_age}".encode()


@dataclass
class CacheStats:
    """Lookups by this app instance since it started, for `GET /admin/cache/stats`.

    Counted once, here: `/metrics` shows them as `cache_lookups_total{result}` through
    `LookupCollector`, which reads them when Prometheus scrapes. A bypass (the request's
    Cache-Control refused any cached copy, or one as old as the entry found) is neither a
    hit nor a miss, so it does not move the hit ratio.
    """

    hits: int = 0
    misses: int = 0
    bypasses: int = 0

    def record(self, result: LookupResult) -> None:
        if result == "hit":
            self.hits += 1
        elif result == "miss":
            self.misses += 1
        else:
            self.bypasses += 1

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class LookupCollector(Collector):
    """`cache_lookups_total{result="hit|miss|bypass"}` on /metrics, read from `CacheStats`.

    A custom collector rather than a `Counter` the middleware increments: the counts are
    already kept in `CacheStats`, and a `Counter.inc()` per request (a lock and a lookup)
    would cost every request what a scrape every few seconds can do instead.
    """

    def __init__(self, stats: CacheStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "cache_lookups",
            "Response cache lookups by result (hit, miss, bypass)",
            labels=["result"],
        )
        family.add_metric(["hit"], self.stats.hits)
        family.add_metric(["miss"], self.stats.misses)
        family.add_metric(["bypass"], self.stats.bypasses)
        yield family


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

    @property
    def wants_the_store(self) -> bool:
        """No cached copy may answer: not one stored, nor one another request is fetching."""
        return self.no_cache or self.no_store

    def accepts(self, entry: CachedResponse, now: float) -> bool:
        """Whether a request that may be answered from the cache takes this copy."""
        return self.max_age is None or entry.age(now) <= self.max_age


# Clients send a handful of distinct Cache-Control values ("no-cache", "max-age=0", ...):
# each is parsed once. The result is immutable, so sharing it is safe.
_parse_cache_control = functools.lru_cache(maxsize=256)(RequestCacheControl.parse)


class _Flight:
    """A miss of one key on its way to the store, which later misses of the key can join."""

    __slots__ = ("response", "versions")  # one per miss: kept lean

    def __init__(self, versions: tuple[int, ...]) -> None:
        self.versions = versions  # of its tags when it started (see _invalidation_versions)
        self.response: asyncio.Future[CachedResponse | None] = (
            asyncio.get_running_loop().create_future()
        )


class ResponseCacheMiddleware:
    """Serve cacheable GETs from `cache`; invalidate on successful mutations of users.

    Concurrent misses of one key make one trip to the store (single flight): the first
    fetches, the others wait for its answer.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        cache: CacheBackend,
        stats: CacheStats,
        sessions: SessionBackend,
        list_ttl: float,
        item_ttl: float,
        registry: CollectorRegistry,
    ) -> None:
        self.app = app
        self.cache = cache
        self.stats = stats
        self.sessions = sessions
        self.list_ttl = list_ttl
        self.item_ttl = item_ttl
        registry.register(LookupCollector(stats))
        # Policies are immutable and user ids come back: one policy per id, made once.
        self._item_policy = functools.lru_cache(maxsize=4096)(self._make_item_policy)
        self._flights: dict[str, _Flight] = {}
        # How often each tag was invalidated by this process: a fetch compares the counts
        # of its tags before and after, to tell whether a mutation happened meanwhile.
        self._invalidations: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and (policy := await self._policy(scope)) is not None:
            await self._get(scope, receive, send, policy)
        elif method in _MUTATIONS and (path == "/users" or _ITEM_PATH.match(path)):
            await self._mutation(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _policy(self, scope: Scope) -> CachePolicy | None:
        """How to cache the response to this GET; None if it is not cached."""
        path = scope["path"]
        if _LIST_PATH.match(path):
            return CachePolicy(self.list_ttl, (LIST_TAG,), "/users")
        if match := _ITEM_PATH.match(path):
            return self._item_policy(match["user_id"])
        if path == _ME_PATH:
            return await self._me_policy(scope)
        return None

    def _make_item_policy(self, user_id: str) -> CachePolicy:
        return CachePolicy(self.item_ttl, (item_tag(user_id),), "/users/{user_id}")

    async def _me_policy(self, scope: Scope) -> CachePolicy | None:
        """`GET /auth/me` is cached per user, and only for a token that is valid now.

        The token is checked first, on every request, so that a revoked or expired token
        reaches the route and its 401 however recently its user's answer was cached. A
        session lookup is not a store operation: it stands in for a token check, which
        stays cheap (a signature, or a session in Redis) when the user store is a database.
        """
        token = _bearer_token(scope)
        try:
            user_id = await self.sessions.get_user_id(token) if token else None
        except SessionStoreUnavailableError:
            # Not cached, and not answered here: the route asks the session store again
            # and answers 503 itself, like every other route that needs a session.
            return None
        if user_id is None:
            return None
        # Tagged like GET /users/{id}: a PUT or DELETE of the user drops this entry too.
        return CachePolicy(
            self.item_ttl, (item_tag(user_id),), _ME_PATH, partition=f"user:{user_id}"
        )

    async def _get(self, scope: Scope, receive: Receive, send: Send, policy: CachePolicy) -> None:
        key = _cache_key(scope, policy.partition)
        control = _parse_cache_control(_header(scope, b"cache-control"))
        if control.wants_the_store:
            # No cached copy may answer, so none is looked up: a lookup costs a decode here
            # and a round trip with Redis, on a request that is going to the store anyway.
            self._count("bypass")
            store = not control.no_store
            await self._fetch(scope, receive, send, key=key, policy=policy, store=store)
            return
        entry = await self.cache.get(key)
        if entry is not None and control.accepts(entry, self.cache.clock()):
            self._count("hit")
            await self._send_hit(scope, send, entry, policy)
            return
        if (flight := self._joinable_flight(key, policy)) is not None:
            # Stampede prevention: the store is already being asked for this key; wait for
            # that answer. shield(): if this request is cancelled (its client went away),
            # only its own wait ends, not the flight every other request waits for.
            shared = await asyncio.shield(flight.response)
            if shared is not None:
                self._count("hit")  # it did not reach the store
                await self._send_hit(scope, send, shared, policy)
                return
        # An entry older than the request's max-age is refused, like a no-cache: a bypass.
        self._count("bypass" if entry is not None else "miss")
        await self._fetch(scope, receive, send, key=key, policy=policy, store=True)

    async def _fetch(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        key: str,
        policy: CachePolicy,
        store: bool,
    ) -> None:
        """Build the response with the app, store it if it may be, and send it."""
        versions = self._invalidation_versions(policy.tags)
        flight = None
        if store and self._joinable_flight(key, policy) is None:
            flight = self._flights[key] = _Flight(versions)
        try:
            start, body = await _capture(self.app, scope, receive)
            headers = [*start["headers"], (b"x-cache", b"MISS")]
            if start["status"] == 200 and store:
                entry = CachedResponse(
                    200, list(start["headers"]), body, self.cache.clock(), policy.ttl
                )
                if flight is not None:
                    flight.response.set_result(entry)  # followers need not wait for the write
                # A mutation since the fetch began may have changed what the store said;
                # the answer is still right for this request, which was concurrent with
                # it, but must not be served to later ones.
                if versions == self._invalidation_versions(policy.tags):
                    await self.cache.set(key, entry, policy.tags)
                # Only a cacheable response advertises a lifetime: a 404 must not be kept
                # downstream.
                headers.append((b"cache-control", policy.cache_control(policy.ttl)))
        finally:
            if flight is not None:
                if not flight.response.done():
                    flight.response.set_result(None)  # not cacheable: followers fetch
                if self._flights.get(key) is flight:
                    del self._flights[key]
        start["headers"] = headers  # the message is ours: _capture built it
        await send(start)
        await send({"type": "http.response.body", "body": body})

    async def _send_hit(
        self, scope: Scope, send: Send, entry: CachedResponse, policy: CachePolicy
    ) -> None:
        scope["route"] = CachedRoute(policy.route)
        age = entry.age(self.cache.clock())
        extra = [
            (b"x-cache", b"HIT"),
            (b"age", str(int(age)).encode()),
            # What is left of the TTL, so that no downstream cache keeps it longer.
            (b"cache-control", policy.cache_control(entry.ttl - age)),
        ]
        await send(
            {
                "type": "http.response.start",
                "status": entry.status,
                "headers": entry.headers + extra,
            }
        )
        await send({"type": "http.response.body", "body": entry.body})

    async def _mutation(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_and_invalidate(message: Message) -> None:
            # Invalidate before the client hears of success, so its next GET is fresh.
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                match = _ITEM_PATH.match(scope["path"])
                await self._invalidate(LIST_TAG, *([item_tag(match["user_id"])] if match else []))
            await send(message)

        await self.app(scope, receive, send_and_invalidate)

    async def _invalidate(self, *tags: str) -> None:
        # Fetches of these tags under way read the store before this change: counting the
        # invalidation keeps them from storing their answer, and new requests from
        # joining them.
        self._invalidations.update(tags)
        await self.cache.invalidate(*tags)

    def _invalidation_versions(self, tags: Iterable[str]) -> tuple[int, ...]:
        return tuple(self._invalidations[tag] for tag in tags)

    def _joinable_flight(self, key: str, policy: CachePolicy) -> _Flight | None:
        """The fetch of `key` under way, unless a mutation has made its answer stale."""
        flight = self._flights.get(key)
        if flight is None or flight.versions != self._invalidation_versions(policy.tags):
            return None
        return flight

    def _count(self, result: LookupResult) -> None:
        self.stats.record(result)


async def warm_cache(app: ASGIApp, cache: CacheBackend, paths: Sequence[str]) -> int:
    """GET each of `paths` through the whole app, so that the cache holds the responses.

    The requests take the path of a client's (every middleware, the router, the
    endpoint), so each entry is stored exactly as a real request would store it; they are
    counted in the request metrics and cache statistics like any other. Called from the
    lifespan, before the server takes requests. Returns how many of the paths are now
    cached; a path that fails is logged and skipped, never fatal: the app works without a
    warm cache.
    """
    warmed = 0
    for path in paths:
        scope, receive = _internal_get(path)
        try:
            start, _ = await _capture(app, scope, receive)
            if start["status"] == 200 and await cache.get(_cache_key(scope)) is not None:
                warmed += 1
            else:
                logger.warning("cache warming: GET %s (%s) was not cached", path, start["status"])
        except Exception:
            logger.warning("cache warming: GET %s failed", path, exc_info=True)
    logger.info("cache warmed paths=%s entries=%d", list(paths), warmed)
    return warmed


def _internal_get(path_and_query: str) -> tuple[Scope, Receive]:
    """The ASGI scope and `receive` of a bodiless GET, as a server would build them."""
    path, _, query = path_and_query.partition("?")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"user-agent", b"users-api-cache-warmer")],
        "client": None,
        "server": None,
    }
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # Like a client that stays connected: only code that watches for a disconnect
        # asks again, and it is cancelled once the response is complete.
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return scope, receive


def _cache_key(scope: Scope, partition: str = "") -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    key = f"GET {scope['path']}?{query}" if query else f"GET {scope['path']}"
    return f"{key} [{partition}]" if partition else key


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _bearer_token(scope: Scope) -> str | None:
    """The token of `Authorization: Bearer <token>`, read as FastAPI's HTTPBearer does."""
    scheme, _, token = _header(scope, b"authorization").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


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

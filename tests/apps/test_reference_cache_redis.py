"""The reference cache on Redis: sharing, tags, the entry format, and life without Redis.

Most tests use the Redis server at 127.0.0.1:6379, each under a key prefix of its own whose
keys it deletes afterwards. The restart test starts a `redis-server` of its own on a free
port, and kills it by pid when done. Without Redis the tests are skipped, and fail under
`CI=true`: CI must run them.
"""

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from solutions.app import create_app
from solutions.app.cache_backends import CachedResponse, decode_entry, is_compressed
from solutions.app.cache_redis import RedisCache

from .helpers import ADMIN_TOKEN, bearer, create_user, login, store_operations
from .test_reference_cache import async_client, async_create_user, reference_settings, store_total

SHARED_REDIS = "redis://127.0.0.1:6379/0"
HOW_TO_START = (
    "start one with `redis-server --daemonize yes` (or `docker run -d -p 6379:6379 redis:7`)"
)
ADMIN = bearer(ADMIN_TOKEN)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def redis_missing(reason: str) -> None:
    """Skip, or fail under CI=true, where a missing Redis is a broken pipeline."""
    message = f"{reason}; {HOW_TO_START}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[redis.Redis]:
    """A client of the Redis at SHARED_REDIS, to look at what the app wrote."""
    # No retries: the default policy backs off for seconds before admitting Redis is absent.
    client = redis.Redis.from_url(
        SHARED_REDIS, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        redis_missing(f"no Redis answers at {SHARED_REDIS} ({exc})")
    yield client
    client.close()


@pytest.fixture
def prefix(shared_redis: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis; its keys are deleted after."""
    name = f"test-{uuid.uuid4().hex[:12]}:"
    yield name
    keys = list(shared_redis.scan_iter(match=f"{name}*"))
    if keys:
        shared_redis.delete(*keys)


@pytest.fixture
def redis_app(prefix: str) -> Iterator[Callable[..., TestClient]]:
    """Reference apps on the shared Redis under this test's prefix, TestClient entered."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        redis_settings = {"redis_url": SHARED_REDIS, "cache_key_prefix": prefix}
        settings = reference_settings(cache_backend="redis", **(redis_settings | overrides))
        clients.append(TestClient(create_app(settings)).__enter__())
        return clients[-1]

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# --- sharing and tags ------------------------------------------------------------------------


def test_instances_share_entries_and_every_key_has_the_prefix(
    redis_app: Callable[..., TestClient], shared_redis: redis.Redis, prefix: str
) -> None:
    first, second = redis_app(), redis_app()
    user = create_user(first, name="Shared")
    path = f"/users/{user['id']}"
    assert first.get(path).headers["X-Cache"] == "MISS"
    before = store_operations(second)
    hit = second.get(path)
    assert (hit.headers["X-Cache"], hit.json()["name"]) == ("HIT", "Shared")
    assert store_operations(second) == before
    assert second.put(path, json={"email": user["email"], "name": "Changed"}).status_code == 200
    assert first.get(path).json()["name"] == "Changed"
    keys = {key.decode() for key in shared_redis.scan_iter(match=f"{prefix}*")}
    assert {f"{prefix}entry:GET {path}", f"{prefix}tag:users:item:{user['id']}"} <= keys


def test_one_put_drops_every_variant_of_the_user_and_the_list(
    redis_app: Callable[..., TestClient], shared_redis: redis.Redis, prefix: str
) -> None:
    client = redis_app()
    user = create_user(client, name="Tagged")
    item = f"/users/{user['id']}"
    variants = ["/users", "/users?view=compact", item, f"{item}?fields=all"]
    for path in variants:
        client.get(path)
        assert client.get(path).headers["X-Cache"] == "HIT", path
    tag_key = f"{prefix}tag:users:item:{user['id']}"
    assert len(shared_redis.smembers(tag_key)) == 2
    client.put(item, json={"email": user["email"], "name": "Retagged"})
    assert not shared_redis.exists(tag_key)
    for path in variants:
        response = client.get(path)
        assert response.headers["X-Cache"] == "MISS", path
        body = response.json()
        names = [u["name"] for u in body] if isinstance(body, list) else [body["name"]]
        assert "Retagged" in names and "Tagged" not in names, path


def test_auth_me_is_partitioned_in_redis_too(redis_app: Callable[..., TestClient]) -> None:
    client = redis_app()
    user = create_user(client)
    token = login(client, user["email"])
    assert client.get("/auth/me", headers=bearer(token)).headers["X-Cache"] == "MISS"
    assert client.get("/auth/me", headers=bearer(token)).headers["X-Cache"] == "HIT"
    client.post("/auth/logout", headers=bearer(token))
    assert client.get("/auth/me", headers=bearer(token)).status_code == 401


# --- what Redis holds ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_entries_are_serialised_with_a_redis_ttl_and_tag_sets_outlive_them(
    prefix: str, shared_redis: redis.Redis
) -> None:
    cache = RedisCache.from_url(SHARED_REDIS, prefix=prefix, compression_min_bytes=100, timeout=1)
    try:
        body = b'{"name": "Ada Lovelace"}' * 20
        entry = CachedResponse(200, [(b"content-type", b"application/json")], body, time.time(), 60)
        small = CachedResponse(200, [], b"{}", time.time(), 30)
        tag_key = f"{prefix}tag:users:list"
        await cache.set("GET /small", small, ["users:list"])
        assert 29_000 < shared_redis.pttl(tag_key) <= 30_000  # a new set: the entry's TTL
        await cache.set("GET /big", entry, ["users:list"])
        assert shared_redis.pttl(tag_key) > 59_000  # extended to the longer-lived entry
        await cache.set("GET /small", small, ["users:list"])
        assert shared_redis.pttl(tag_key) > 59_000  # and never shortened
        assert await cache.get("GET /big") == entry
        blob = shared_redis.get(f"{prefix}entry:GET /big")
        assert blob is not None and is_compressed(blob) and decode_entry(blob) == entry
        assert 59_000 < shared_redis.pttl(f"{prefix}entry:GET /big") <= 60_000
        usage = await cache.usage()
        assert usage is not None and (usage.entries, usage.compressed_entries) == (2, 1)
        assert usage.bytes == len(blob) + shared_redis.strlen(f"{prefix}entry:GET /small")
        assert await cache.invalidate("users:list") == 2
        assert await cache.get("GET /big") is None
        assert not list(shared_redis.scan_iter(match=f"{prefix}*"))
    finally:
        await cache.aclose()


@pytest.mark.anyio
async def test_redis_expires_entries_on_their_ttl(prefix: str) -> None:
    cache = RedisCache.from_url(SHARED_REDIS, prefix=prefix, compression_min_bytes=100, timeout=1)
    try:
        await cache.set("GET /brief", CachedResponse(200, [], b"{}", time.time(), 0.2), [])
        assert await cache.get("GET /brief") is not None
        await asyncio.sleep(0.3)
        assert await cache.get("GET /brief") is None
    finally:
        await cache.aclose()


@pytest.mark.anyio
async def test_an_unreadable_entry_is_a_miss(prefix: str, shared_redis: redis.Redis) -> None:
    shared_redis.set(f"{prefix}entry:GET /odd", b"written by someone else")
    cache = RedisCache.from_url(SHARED_REDIS, prefix=prefix, compression_min_bytes=100, timeout=1)
    try:
        assert await cache.get("GET /odd") is None
    finally:
        await cache.aclose()


def test_a_prefix_with_glob_characters_counts_only_its_own_entries(
    redis_app: Callable[..., TestClient], prefix: str
) -> None:
    # The fixture's prefix is plain; this app's adds glob characters to it.
    client = redis_app(cache_key_prefix=f"{prefix}[*]?:", cache_warm_paths="")
    redis_app(cache_warm_paths="/users")  # an entry under the plain prefix
    client.get("/users")
    stats = client.get("/admin/cache/stats", headers=ADMIN).json()
    assert (stats["backend"], stats["backend_up"], stats["entries"]) == ("redis", True, 1)


# --- stampede --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_misses_reach_the_store_once_with_redis(prefix: str) -> None:
    settings = reference_settings(
        cache_backend="redis", redis_url=SHARED_REDIS, cache_key_prefix=prefix, store_latency_ms=100
    )
    async with async_client(create_app(settings)) as client:
        user = await async_create_user(client)
        before = await store_total(client, "get")
        responses = await asyncio.gather(*(client.get(f"/users/{user['id']}") for _ in range(20)))
        assert await store_total(client, "get") - before == 1
        assert [r.headers["X-Cache"] for r in responses].count("MISS") == 1


# --- without Redis ---------------------------------------------------------------------------


def test_an_unreachable_redis_means_answers_from_the_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.INFO, logger="solutions.app"):
        app = create_app(reference_settings(cache_backend="redis", redis_url=nowhere))
        with TestClient(app) as client:
            user = create_user(client)
            path = f"/users/{user['id']}"
            started = time.perf_counter()
            for _ in range(3):
                response = client.get(path)
                assert (response.status_code, response.headers["X-Cache"]) == (200, "MISS")
            assert client.put(path, json={"email": user["email"], "name": "X"}).status_code == 200
            assert time.perf_counter() - started < 2
            health = client.get("/health").json()
            assert health.items() >= {"status": "degraded", "cache": "down"}.items()
            stats = client.get("/admin/cache/stats", headers=ADMIN).json()
            assert stats["backend_up"] is False and stats["entries"] is None
            assert stats["misses"] == 1 + 3  # warming's GET /users, then ours
            assert client.get("/admin/cache", headers=ADMIN).status_code == 200
    messages = [record.getMessage() for record in caplog.records]
    assert sum("redis cache unreachable" in m for m in messages) == 1, messages
    assert any("cache warming: GET /users (200) was not cached" in m for m in messages)


class OwnRedis:
    """A redis-server of the test's own, on a free port, that it can stop and start again.

    It keeps its data in a temporary directory and writes it there on ``stop()`` (SHUTDOWN
    SAVE), like a Redis with persistence: entries survive a restart.
    """

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable, self.directory = executable, directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.directory)]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        deadline = time.monotonic() + 5
        while not self._answers():
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        # No retries: the server closing the connection is how SHUTDOWN succeeds.
        client = redis.Redis(port=self.port, retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown(save=True)
        finally:
            client.close()
        self.processes[-1].wait(timeout=5)

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=5)

    def _answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    executable = shutil.which("redis-server")
    if executable is None:
        redis_missing("redis-server is not on the PATH")
    server = OwnRedis(executable or "redis-server", tmp_path)
    try:
        yield server
    finally:
        server.kill_all()


def test_caching_resumes_after_a_restart_without_serving_what_changed_meanwhile(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    own_redis.start()
    with caplog.at_level(logging.INFO, logger="solutions.app"):
        app = create_app(reference_settings(cache_backend="redis", redis_url=own_redis.url))
        with TestClient(app) as client:
            user = create_user(client, name="Before Outage")
            path = f"/users/{user['id']}"
            client.get(path)
            assert client.get(path).headers["X-Cache"] == "HIT"
            assert client.get("/health").json().items() >= {"status": "ok", "cache": "up"}.items()

            own_redis.stop()  # the cached user is now on disk
            health = client.get("/health").json()
            assert health.items() >= {"status": "degraded", "cache": "down"}.items()
            assert client.get(path).headers["X-Cache"] == "MISS"
            changed = client.put(path, json={"email": user["email"], "name": "During Outage"})
            assert changed.status_code == 200
            create_user(client)

            own_redis.start()  # back, with the entry cached before the PUT
            assert client.get("/health").json().items() >= {"status": "ok", "cache": "up"}.items()
            fresh = client.get(path)
            assert (fresh.headers["X-Cache"], fresh.json()["name"]) == ("MISS", "During Outage")
            again = client.get(path)
            assert (again.headers["X-Cache"], again.json()["name"]) == ("HIT", "During Outage")
    messages = [record.getMessage() for record in caplog.records]
    assert sum("redis cache unreachable" in m for m in messages) == 1, messages
    assert sum("redis cache reachable again" in m for m in messages) == 1, messages

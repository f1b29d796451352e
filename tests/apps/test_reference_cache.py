"""The reference cache's own details, beyond what the graded 10.1 suite asks of learners.

This file covers the memory backend and everything that does not need a Redis server;
`test_reference_cache_redis.py` covers the Redis backend.
"""

import asyncio
import logging
import os
import re
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from solutions.app import Settings, create_app
from solutions.app.cache import RequestCacheControl
from solutions.app.cache_backends import (
    CachedResponse,
    MemoryCache,
    decode_entry,
    encode_entry,
    is_compressed,
)

from .helpers import (
    ADMIN_TOKEN,
    bearer,
    create_user,
    http_requests,
    login,
    metric_samples,
    store_operations,
    unique_email,
)

ADMIN = bearer(ADMIN_TOKEN)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def reference_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"admin_token": ADMIN_TOKEN, "store_latency_ms": 0}
    return Settings(_env_file=None, **(values | overrides))


@pytest.fixture
def reference() -> Iterator[Any]:
    """Build a reference app with settings overrides and enter its TestClient."""

    def make(**overrides: Any) -> TestClient:
        app = create_app(reference_settings(**overrides))
        clients.append(TestClient(app).__enter__())
        return clients[-1]

    clients: list[TestClient] = []
    yield make
    for client in clients:
        client.__exit__(None, None, None)


@asynccontextmanager
async def async_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and talk to it with an async client, for concurrent requests."""
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://testserver"
        ) as client,
    ):
        yield client


async def store_total(client: httpx.AsyncClient, operation: str) -> float:
    """``store_operations_total{operation=...}`` of the app behind ``client``."""
    response = await client.get("/metrics")
    return next(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "store_operations_total" and sample.labels["operation"] == operation
    )


async def async_create_user(client: httpx.AsyncClient, name: str = "Async User") -> dict[str, Any]:
    body = {"email": unique_email(), "name": name, "password": "correct-horse-battery"}
    response = await client.post("/users", json=body)
    assert response.status_code == 201, response.text
    return response.json()


# --- HTTP details of the middleware --------------------------------------------------------


def test_a_404_is_neither_cached_nor_advertised_as_cacheable(reference: Any) -> None:
    client = reference()
    first = client.get("/users/987654321")
    assert first.status_code == 404
    assert first.headers["X-Cache"] == "MISS"
    assert "Cache-Control" not in first.headers
    assert client.get("/users/987654321").headers["X-Cache"] == "MISS"


def test_leading_zeros_share_the_users_tag(reference: Any) -> None:
    client = reference()
    user = create_user(client, name="Zero")
    padded = f"/users/{user['id']:05d}"
    assert client.get(padded).headers["X-Cache"] == "MISS"
    assert client.get(padded).headers["X-Cache"] == "HIT"
    client.put(f"/users/{user['id']}", json={"email": user["email"], "name": "Renamed"})
    refreshed = client.get(padded)
    assert (refreshed.headers["X-Cache"], refreshed.json()["name"]) == ("MISS", "Renamed")


def test_a_hit_keeps_its_route_label_in_request_metrics(reference: Any) -> None:
    client = reference()
    user = create_user(client)
    for _ in range(2):
        client.get(f"/users/{user['id']}")
    assert http_requests(client, method="GET", route="/users/{user_id}", status=200) == 2
    assert metric_samples(client, "cache_lookups_total")[(("result", "hit"),)] == 1


def test_no_store_neither_reads_nor_writes_the_cache(reference: Any) -> None:
    client = reference()
    user = create_user(client)
    path = f"/users/{user['id']}"
    no_store = {"Cache-Control": "no-store"}
    assert client.get(path, headers=no_store).headers["X-Cache"] == "MISS"
    assert client.get(path).headers["X-Cache"] == "MISS", "no-store must not have stored it"
    assert client.get(path, headers=no_store).headers["X-Cache"] == "MISS"
    assert client.get(path).headers["X-Cache"] == "HIT"


def test_no_cache_refreshes_the_stored_copy(reference: Any) -> None:
    client = reference()
    user = create_user(client)
    path = f"/users/{user['id']}"
    client.get(path)
    assert client.get(path, headers={"Cache-Control": "no-cache"}).headers["X-Cache"] == "MISS"
    hit = client.get(path)
    assert hit.headers["X-Cache"] == "HIT" and int(hit.headers["Age"]) == 0


@pytest.mark.parametrize(
    ("header", "no_cache", "no_store", "max_age"),
    [
        ("", False, False, None),
        ("no-cache", True, False, None),
        ("No-Store, max-age=5", False, True, 5),
        ('max-age="30"', False, False, 30),
        ("max-age=soon", False, False, None),
    ],
)
def test_request_cache_control_parsing(
    header: str, no_cache: bool, no_store: bool, max_age: float | None
) -> None:
    assert RequestCacheControl.parse(header) == RequestCacheControl(no_cache, no_store, max_age)


# --- the memory backend and the entry format ------------------------------------------------


def entry(stored_at: float = 100.0, ttl: float = 10, body: bytes = b"{}") -> CachedResponse:
    return CachedResponse(200, [(b"content-type", b"application/json")], body, stored_at, ttl)


@pytest.mark.anyio
async def test_memory_cache_expires_evicts_least_recently_used_and_invalidates_by_tag() -> None:
    now = [100.0]
    cache = MemoryCache(max_entries=2, clock=lambda: now[0])
    await cache.set("a", entry(), ["t1"])
    await cache.set("b", entry(), ["t2"])
    assert await cache.get("a") is not None  # a is now the most recently used
    await cache.set("c", entry(), ["t1"])
    assert (await cache.get("b"), len(cache)) == (None, 2)  # b was evicted
    assert await cache.invalidate("t1") == 2 and len(cache) == 0
    await cache.set("d", entry(ttl=5), [])
    now[0] = 105.0
    assert await cache.get("d") is None  # expired at exactly its TTL


def test_an_entry_reads_like_the_http_response_it_is() -> None:
    stored = entry(body=b'{"id": 1}')
    blob = encode_entry(stored, compression_min_bytes=1024)
    assert blob.startswith(b"r200 ") and blob.endswith(b"\r\n\r\n" + b'{"id": 1}')
    assert decode_entry(blob) == stored


def test_entries_at_the_threshold_are_compressed_and_read_back_identical() -> None:
    body = b'{"name": "Ada Lovelace", "email": "ada@example.com"}' * 40
    small, large = entry(body=body[:99]), entry(body=body)
    assert not is_compressed(encode_entry(small, compression_min_bytes=100))
    blob = encode_entry(large, compression_min_bytes=len(body))  # exactly at the threshold
    assert is_compressed(blob) and len(blob) < len(body) / 4
    assert decode_entry(blob) == large


def test_a_body_that_does_not_shrink_is_stored_as_is() -> None:
    noise = zlib.compress(os.urandom(2000))  # compressed data does not compress again
    blob = encode_entry(entry(body=noise), compression_min_bytes=10)
    assert not is_compressed(blob) and decode_entry(blob).body == noise


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"x200 1.0 60.0\r\n\r\n{}",  # unknown flag
        b'r{"status": 200}',  # no head
        b"r200 1.0\r\n\r\n{}",  # a field missing
        b"r200 1.0 sixty\r\n\r\n{}",  # not a number
        b"r200 1.0 60.0\r\ncontent-type application/json\r\n\r\n{}",  # not a header
        b"z200 1.0 60.0\r\n\r\nnot zlib",
    ],
)
def test_anything_but_an_encoded_entry_is_rejected(blob: bytes) -> None:
    with pytest.raises(ValueError):
        decode_entry(blob)


def test_the_app_compresses_a_large_list_but_not_a_user(reference: Any) -> None:
    client = reference(cache_compression_min_bytes=1000)
    for index in range(8):
        create_user(client, name=f"Compressed {index}")
    user = create_user(client)
    first = client.get("/users")
    assert len(first.content) >= 1000
    stats = client.get("/admin/cache/stats", headers=ADMIN).json()
    assert (stats["entries"], stats["compressed_entries"]) == (1, 1)
    assert stats["bytes"] < len(first.content) / 2
    client.get(f"/users/{user['id']}")
    assert client.get("/admin/cache/stats", headers=ADMIN).json()["compressed_entries"] == 1
    hit = client.get("/users")
    assert hit.headers["X-Cache"] == "HIT" and hit.content == first.content


# --- statistics, dashboard, health ----------------------------------------------------------


def test_stats_count_this_instances_hits_and_misses(reference: Any) -> None:
    client = reference(cache_warm_paths="")
    assert client.get("/admin/cache/stats").status_code == 401
    assert client.get("/admin/cache/stats", headers=bearer("wrong")).status_code == 401
    assert client.get("/admin/cache/stats", headers=ADMIN).json()["hit_ratio"] == 0.0
    path = f"/users/{create_user(client)['id']}"
    for _ in range(3):
        client.get(path)
    client.get(path, headers={"Cache-Control": "no-cache"})
    stats = client.get("/admin/cache/stats", headers=ADMIN).json()
    assert stats == stats | {"hits": 2, "misses": 1, "bypasses": 1, "hit_ratio": 2 / 3}
    assert stats["entries"] == 1 and stats["bytes"] > 0 and stats["compressed_entries"] == 0
    assert (stats["backend"], stats["backend_up"], stats["enabled"]) == ("memory", True, True)


def test_stats_answer_with_zeros_when_caching_is_disabled(reference: Any) -> None:
    client = reference(cache_enabled=False)
    client.get("/users")
    stats = client.get("/admin/cache/stats", headers=ADMIN).json()
    assert stats["enabled"] is False
    assert [stats[name] for name in ("hits", "misses", "entries", "bytes")] == [0, 0, 0, 0]
    assert client.get("/health").json().items() >= {"status": "ok", "cache": "up"}.items()


def test_dashboard_shows_the_statistics_as_plain_text(reference: Any) -> None:
    client = reference(cache_warm_paths="")
    assert client.get("/admin/cache").status_code == 401
    path = f"/users/{create_user(client)['id']}"
    for _ in range(4):
        client.get(path)
    page = client.get("/admin/cache", headers=ADMIN)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    rows = dict(re.findall(r"<th>(.+?)</th><td>(.+?)</td>", page.text))
    expected = {"hits": "3", "misses": "1", "hit ratio": "75.0%", "entries": "1"}
    assert rows == rows | expected, rows
    assert int(rows["bytes"]) > 0 and rows["compressed entries"] == "0"
    assert "<script" not in page.text and "src=" not in page.text  # self-contained


def test_health_reports_the_memory_cache_up_without_touching_the_store(reference: Any) -> None:
    client = reference()
    before = store_operations(client)
    assert client.get("/health").json().items() >= {"status": "ok", "cache": "up"}.items()
    assert store_operations(client) == before


# --- partition by user: GET /auth/me ---------------------------------------------------------


def test_auth_me_is_cached_per_user_and_never_after_logout(reference: Any) -> None:
    client = reference()
    users = [create_user(client, name=name) for name in ("Ada", "Grace")]
    tokens = [login(client, user["email"]) for user in users]
    for token in tokens:
        assert client.get("/auth/me", headers=bearer(token)).headers["X-Cache"] == "MISS"
    before = store_operations(client)
    for user, token in zip(users, tokens, strict=True):
        hit = client.get("/auth/me", headers=bearer(token))
        assert (hit.headers["X-Cache"], hit.json()["id"]) == ("HIT", user["id"])
        assert hit.headers["Cache-Control"].startswith("private, ")
    assert store_operations(client) == before
    assert client.post("/auth/logout", headers=bearer(tokens[0])).status_code == 204
    after_logout = client.get("/auth/me", headers=bearer(tokens[0]))
    assert after_logout.status_code == 401 and "X-Cache" not in after_logout.headers
    assert client.get("/auth/me", headers=bearer(tokens[1])).headers["X-Cache"] == "HIT"


def test_auth_me_is_dropped_when_its_user_changes(reference: Any) -> None:
    client = reference()
    user = create_user(client, name="Before")
    token = login(client, user["email"])
    client.get("/auth/me", headers=bearer(token))
    client.put(f"/users/{user['id']}", json={"email": user["email"], "name": "After"})
    fresh = client.get("/auth/me", headers=bearer(token))
    assert (fresh.headers["X-Cache"], fresh.json()["name"]) == ("MISS", "After")
    client.delete(f"/users/{user['id']}")
    assert client.get("/auth/me", headers=bearer(token)).status_code == 401


def test_auth_me_without_a_valid_token_is_not_a_cache_lookup(reference: Any) -> None:
    client = reference()
    for headers in ({}, bearer("no-such-token"), {"Authorization": "Basic abc"}):
        response = client.get("/auth/me", headers=headers)
        assert response.status_code == 401 and "X-Cache" not in response.headers


# --- warming ---------------------------------------------------------------------------------


def test_warming_fills_the_cache_before_the_first_request(
    reference: Any, caplog: pytest.LogCaptureFixture
) -> None:
    user = create_user(reference(), name="Warm")
    with caplog.at_level(logging.INFO, logger="solutions.app"):
        client = reference(cache_warm_paths=" /users , /users/987654321")
    first = client.get("/users")
    assert first.headers["X-Cache"] == "HIT" and user["id"] in [u["id"] for u in first.json()]
    messages = [record.getMessage() for record in caplog.records]
    assert "cache warmed paths=['/users', '/users/987654321'] entries=1" in messages
    assert any("GET /users/987654321 (404) was not cached" in m for m in messages), messages


def test_no_warming_with_an_empty_list(reference: Any) -> None:
    client = reference(cache_warm_paths="")
    assert client.get("/users").headers["X-Cache"] == "MISS"


def test_a_warm_path_must_be_absolute() -> None:
    with pytest.raises(ValidationError, match="must start with '/'"):
        reference_settings(cache_warm_paths="/users,users")


# --- stampede: single flight -----------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_misses_reach_the_store_once() -> None:
    async with async_client(create_app(reference_settings(store_latency_ms=100))) as client:
        user = await async_create_user(client)
        before = await store_total(client, "get")
        responses = await asyncio.gather(*(client.get(f"/users/{user['id']}") for _ in range(20)))
        assert await store_total(client, "get") - before == 1
        assert sorted(r.headers["X-Cache"] for r in responses) == ["HIT"] * 19 + ["MISS"]
        assert len({r.content for r in responses}) == 1

        await async_create_user(client)  # drops the cached list
        before = await store_total(client, "list")
        await asyncio.gather(*(client.get("/users") for _ in range(20)))
        assert await store_total(client, "list") - before == 1


@pytest.mark.anyio
async def test_concurrent_misses_of_an_error_each_get_their_own_answer() -> None:
    async with async_client(create_app(reference_settings(store_latency_ms=50))) as client:
        responses = await asyncio.gather(*(client.get("/users/987654321") for _ in range(3)))
        assert [r.status_code for r in responses] == [404] * 3
        assert [r.headers["X-Cache"] for r in responses] == ["MISS"] * 3


def gate_first_read(store: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the store's first ``get_user`` read, then wait until released.

    Returns (reading, release): ``reading`` is set once that read has happened.
    """
    original_get, reading, release = store.get_user, asyncio.Event(), asyncio.Event()

    async def read_then_wait(user_id: int) -> Any:
        record = await original_get(user_id)
        if not reading.is_set():
            reading.set()
            await release.wait()
        return record

    store.get_user = read_then_wait
    return reading, release


@pytest.mark.anyio
async def test_a_follower_that_goes_away_leaves_the_flight_to_the_others() -> None:
    app = create_app(reference_settings())
    async with async_client(app) as client:
        path = f"/users/{(await async_create_user(client))['id']}"
        reading, release = gate_first_read(app.state.store)
        leader = asyncio.create_task(client.get(path))
        await reading.wait()
        quitter, follower = (asyncio.create_task(client.get(path)) for _ in range(2))
        await asyncio.sleep(0.05)  # both are waiting for the leader's answer
        quitter.cancel()
        release.set()
        responses = await asyncio.wait_for(asyncio.gather(leader, follower), timeout=2)
        assert [(r.status_code, r.headers["X-Cache"]) for r in responses] == [
            (200, "MISS"),
            (200, "HIT"),
        ]


@pytest.mark.anyio
async def test_a_read_that_began_before_a_change_is_neither_joined_nor_stored() -> None:
    app = create_app(reference_settings())
    async with async_client(app) as client:
        user = await async_create_user(client, name="Old")
        path = f"/users/{user['id']}"
        reading, release = gate_first_read(app.state.store)
        slow = asyncio.create_task(client.get(path))
        await reading.wait()  # the first GET has read "Old" and is still in flight
        await client.put(path, json={"email": user["email"], "name": "New"})
        # Joining the flight under way would wait for (and serve) the read from before.
        after = await asyncio.wait_for(client.get(path), timeout=2)
        assert (after.headers["X-Cache"], after.json()["name"]) == ("MISS", "New")
        release.set()
        assert (await slow).json()["name"] == "Old"  # right for a request concurrent with the PUT
        cached = await client.get(path)
        assert (cached.headers["X-Cache"], cached.json()["name"]) == ("HIT", "New")

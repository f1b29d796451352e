"""The reference cache's own details, beyond what the graded 10.1 suite asks of learners."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from solutions.app import Settings, create_app
from solutions.app.cache import CachedResponse, MemoryCache, RequestCacheControl

from .helpers import create_user, http_requests, metric_samples


@pytest.fixture
def reference() -> Iterator[Any]:
    def make(**overrides: Any) -> TestClient:
        app = create_app(Settings(_env_file=None, **overrides))
        clients.append(TestClient(app).__enter__())
        return clients[-1]

    clients: list[TestClient] = []
    yield make
    for client in clients:
        client.__exit__(None, None, None)


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


def entry(stored_at: float, ttl: float = 10) -> CachedResponse:
    return CachedResponse(200, [], b"{}", stored_at, ttl)


def test_memory_cache_expires_evicts_least_recently_used_and_invalidates_by_tag() -> None:
    now = [100.0]
    cache = MemoryCache(max_entries=2, clock=lambda: now[0])
    cache.set("a", entry(100.0), ["t1"])
    cache.set("b", entry(100.0), ["t2"])
    assert cache.get("a") is not None  # a is now the most recently used
    cache.set("c", entry(100.0), ["t1"])
    assert (cache.get("b"), len(cache)) == (None, 2)  # b was evicted
    assert cache.invalidate("t1") == 2 and len(cache) == 0
    cache.set("d", entry(100.0, ttl=5), [])
    now[0] = 105.0
    assert cache.get("d") is None  # expired at exactly its TTL


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

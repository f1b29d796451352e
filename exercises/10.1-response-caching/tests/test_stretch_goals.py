"""Graded checks for the stretch goals of exercise 10.1 (bonus points).

Redis checks use real servers: the shared one at GRADE_REDIS_URL, with a key prefix of
their own, and a redis-server the check starts and stops itself to cut Redis off.
"""

from __future__ import annotations

import re
import time
from html import unescape

import pytest

from grader.testing import Api, fail, observed

LIST = "/users"


def item(user: dict) -> str:
    return f"/users/{user['id']}"


def served_from_cache(api: Api, path: str, headers: dict[str, str] | None = None) -> bool:
    with api.watch_store() as store:
        api.get(path, headers=headers)
    return store.operations == 0


# --- redis: instances share one cache ---------------------------------------------------


@pytest.mark.criterion("redis")
def test_two_instances_share_entries_through_redis(make_api, shared_redis) -> None:
    settings = {
        "CACHE_BACKEND": "redis",
        "REDIS_URL": shared_redis.url,
        "CACHE_KEY_PREFIX": shared_redis.prefix,
        "CACHE_WARM_PATHS": "",
    }
    first, second = make_api(**settings), make_api(**settings)
    user = first.create_user(name="Shared Cache")
    path = item(user)
    first.get(path)
    if not served_from_cache(second, path):
        fail(
            f"GET {path} through instance 1, then through instance 2 (CACHE_BACKEND=redis)",
            expected="instance 2 to answer from the shared Redis cache, without the store",
            observed="instance 2 reached its store: the entry is not shared",
        )
    if not shared_redis.keys():
        fail(
            f"GET {path} with CACHE_BACKEND=redis, CACHE_KEY_PREFIX={shared_redis.prefix}",
            expected=f"keys starting with {shared_redis.prefix} in Redis at {shared_redis.url}",
            observed="no such key: is the cache really in Redis, and is the prefix used?",
        )
    second.put(path, {"email": user["email"], "name": "Changed Via Two"}, expect=200)
    name = first.get(path).json().get("name")
    if name != "Changed Via Two":
        fail(
            f"PUT {path} through instance 2, then GET {path} through instance 1",
            expected="name: Changed Via Two",
            observed=f"name: {name} (instance 1 served a stale entry)",
        )


# --- redis-fallback: a Redis outage costs speed, never answers --------------------------


def bounded(api: Api, method: str, path: str, json: object = None, expect: int = 200) -> dict:
    started = time.monotonic()
    response = api.request(method, path, json=json, expect=expect)
    took = time.monotonic() - started
    if took > 2.0:
        fail(
            f"{method} {path} while Redis is down",
            expected="an answer from the store within 2 s",
            observed=f"{took:.1f} s: are the Redis client's timeouts short?",
        )
    return response.json() if response.content else {}


@pytest.mark.criterion("redis-fallback")
def test_requests_succeed_while_redis_is_down_and_caching_resumes(make_api, redis_server) -> None:
    api = make_api(CACHE_BACKEND="redis", REDIS_URL=redis_server.url, CACHE_WARM_PATHS="")
    user = api.create_user(name="Before Outage")
    path = item(user)
    api.expect_cached(path, needed_for="this Redis fallback check")
    redis_server.stop()
    if bounded(api, "GET", path).get("id") != user["id"]:
        fail(f"GET {path} while Redis is down", expected=f"user {user['id']}", observed="another")
    bounded(api, "PUT", path, {"email": user["email"], "name": "During Outage"})
    if bounded(api, "GET", path).get("name") != "During Outage":
        fail(
            f"PUT {path}, then GET {path}, while Redis is down",
            expected="name: During Outage, from the store",
            observed="the old name",
        )
    bounded(api, "POST", LIST, {"email": f"x{user['id']}-{time.time_ns()}@example.com",
                                "name": "Outage", "password": "correct-horse-1"}, 201)  # fmt: skip
    bounded(api, "GET", LIST)
    redis_server.start()
    deadline = time.monotonic() + 5
    while True:
        api.get(path)
        if served_from_cache(api, path):
            break
        if time.monotonic() > deadline:
            fail(
                f"GET {path}, twice, after Redis came back",
                expected="the second response from the cache within 5 s of the restart",
                observed="every request still reached the store: caching did not resume",
            )
        time.sleep(0.2)


# --- redis-health: /health tells whether the cache is reachable -------------------------


def cache_state(api: Api) -> tuple[int, str | None]:
    response = api.get("/health", expect=None)
    try:
        state = response.json().get("cache")
    except (ValueError, AttributeError):
        state = None
    return response.status_code, state


@pytest.mark.criterion("redis-health")
def test_health_reports_the_cache_backend_state(make_api, redis_server) -> None:
    api = make_api(CACHE_BACKEND="redis", REDIS_URL=redis_server.url, CACHE_WARM_PATHS="")
    for step, expected in (("while Redis runs", "up"), ("after Redis stopped", "down"),
                           ("after Redis came back", "up")):  # fmt: skip
        if step == "after Redis stopped":
            redis_server.stop()
        elif step == "after Redis came back":
            redis_server.start()
        deadline = time.monotonic() + 5
        status, state = cache_state(api)
        while (status, state) != (200, expected) and time.monotonic() < deadline:
            time.sleep(0.2)
            status, state = cache_state(api)
        if (status, state) != (200, expected):
            fail(
                f"GET /health {step}",
                expected=f'200 with "cache": "{expected}"',
                observed=f"{status} with " + (f'"cache": "{state}"' if state else "no cache field"),
            )


# --- cache-tags: one change drops every variant -----------------------------------------


@pytest.mark.criterion("cache-tags")
def test_one_change_invalidates_every_tagged_variant(api: Api) -> None:
    user = api.create_user(name="Tagged Before")
    variants = [LIST, f"{LIST}?view=compact", item(user), f"{item(user)}?fields=all"]
    for path in variants:
        api.expect_cached(path, needed_for="this tagging check")
    api.put(item(user), {"email": user["email"], "name": "Tagged After"}, expect=200)
    for path in variants:
        body = api.get(path).json()
        users = body if isinstance(body, list) else [body]
        names = {u.get("name") for u in users if u.get("id") == user["id"]}
        if names != {"Tagged After"}:
            fail(
                f"PUT {item(user)} (name: Tagged After), then GET {path}",
                expected="the new name in every cached variant of the user and the list",
                observed=f"name: {', '.join(map(str, names)) or 'missing'} (a stale variant)",
            )


# --- partition-by-user: /auth/me is cached per user, never shared -----------------------


@pytest.mark.criterion("partition-by-user")
def test_auth_me_is_cached_per_user_and_never_shared(api: Api) -> None:
    ada, bob = api.create_user(name="Ada Partition"), api.create_user(name="Bob Partition")
    as_ada, as_bob = api.login(ada["email"]), api.login(bob["email"])
    api.get("/auth/me", headers=as_ada)
    if not served_from_cache(api, "/auth/me", as_ada):
        fail(
            "GET /auth/me as the same user, twice",
            expected="the second response from that user's cache partition",
            observed="it reached the store: /auth/me is not cached",
        )
    for who, headers, user in (("Bob", as_bob, bob), ("Ada", as_ada, ada)):
        email = api.get("/auth/me", headers=headers).json().get("email")
        if email != user["email"]:
            fail(
                f"GET /auth/me as {who}, after Ada's response was cached",
                expected=f"{who}'s own email {user['email']}",
                observed=f"{email}: another user's cached response",
            )
    api.post("/auth/logout", headers=as_ada)
    after = api.get("/auth/me", headers=as_ada, expect=None)
    if after.status_code != 401:
        fail(
            "POST /auth/logout as Ada, then GET /auth/me with her old token",
            expected="401",
            observed=f"{after.status_code}: a cached response outlived the session",
        )


# --- compression and statistics ---------------------------------------------------------

STATS = "/admin/cache/stats"
STAT_FIELDS = ("hits", "misses", "hit_ratio", "entries", "bytes", "compressed_entries")


def stats(api: Api) -> dict[str, float]:
    response = api.get(STATS, headers=api.admin)
    try:
        body = response.json()
        values = {name: float(body[name]) for name in STAT_FIELDS}
    except (ValueError, KeyError, TypeError, AttributeError):
        fail(
            f"GET {STATS} (admin token)",
            expected=f"JSON with numbers {', '.join(STAT_FIELDS)}",
            observed=response.text[:160],
        )
    return values


@pytest.mark.criterion("compression")
def test_large_entries_are_stored_compressed(make_api) -> None:
    api = make_api(CACHE_COMPRESSION_MIN_BYTES=1000, CACHE_WARM_PATHS="")
    for n in range(30):
        api.create_user(name=f"Compressible User Number {n:02d}")
    user = api.create_user(name="Small Entry")
    before = stats(api)
    api.get(item(user))
    small = stats(api)
    if small["compressed_entries"] != before["compressed_entries"]:
        fail(
            f"GET {item(user)} (a small response), CACHE_COMPRESSION_MIN_BYTES=1000",
            expected="compressed_entries unchanged: small entries are stored as they are",
            observed=f"{before['compressed_entries']:g} -> {small['compressed_entries']:g}",
        )
    first = api.get(LIST)
    after = stats(api)
    size = len(first.content)
    added = after["bytes"] - small["bytes"]
    if after["compressed_entries"] <= small["compressed_entries"] or not 0 < added < size / 2:
        fail(
            f"GET {LIST} ({size} bytes of JSON), CACHE_COMPRESSION_MIN_BYTES=1000",
            expected=f"one more compressed entry, adding fewer than {size // 2} bytes",
            observed=f"compressed_entries {small['compressed_entries']:g} -> "
            f"{after['compressed_entries']:g}, bytes +{added:g}",
        )
    if api.get(LIST).content != first.content:
        fail(f"GET {LIST} again", expected="the cached list, identical", observed="another body")


@pytest.mark.criterion("stats-endpoint")
def test_statistics_count_hits_and_misses(make_api) -> None:
    api = make_api(CACHE_WARM_PATHS="")
    denied = api.get(STATS, expect=None)
    if denied.status_code != 401:
        fail(f"GET {STATS} without a token", expected="401", observed=observed(denied))
    path = item(api.create_user())
    before = stats(api)
    api.get(path)
    api.get(path)
    after = stats(api)
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    if hits != 1 or misses < 1:
        fail(
            f"GET {path}, twice (a miss, then a hit), between two GET {STATS}",
            expected="hits +1 and misses +1",
            observed=f"hits +{hits:g}, misses +{misses:g}",
        )
    total = after["hits"] + after["misses"]
    ratio = after["hits"] / total if total else 0.0
    if abs(after["hit_ratio"] - ratio) > 0.01 or after["entries"] < 1 or after["bytes"] <= 0:
        fail(
            f"GET {STATS}",
            expected=f"hit_ratio = hits / (hits + misses) = {ratio:.2f}, entries >= 1, bytes > 0",
            observed=", ".join(f"{k}: {after[k]:g}" for k in ("hit_ratio", "entries", "bytes")),
        )


@pytest.mark.criterion("dashboard")
def test_dashboard_is_an_admin_html_page_with_the_statistics(make_api) -> None:
    api = make_api(CACHE_WARM_PATHS="")
    denied = api.get("/admin/cache", expect=None)
    if denied.status_code != 401:
        fail("GET /admin/cache without a token", expected="401", observed=observed(denied))
    path = item(api.create_user())
    for _ in range(8):
        api.get(path)
    hits = int(stats(api)["hits"])
    page = api.get("/admin/cache", headers=api.admin)
    if "text/html" not in page.headers.get("content-type", ""):
        fail(
            "GET /admin/cache (admin token)",
            expected="an HTML page",
            observed=observed(page, "Content-Type"),
        )
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).lower().split())
    missing = [w for w in ("hits", "misses", "hit ratio", "entries", "bytes") if w not in text]
    if missing or not re.search(rf"\b{hits}\b", text):
        fail(
            "GET /admin/cache (admin token)",
            expected=f"hits, misses, hit ratio, entries and bytes, with the current hits ({hits})",
            observed=f"missing: {', '.join(missing) or f'the number {hits}'}",
        )


# --- warming and stampede ---------------------------------------------------------------


@pytest.mark.criterion("warming")
def test_warmed_paths_are_cached_before_the_first_request(make_api) -> None:
    user = make_api().create_user(name="Warm Me")
    api = make_api(CACHE_WARM_PATHS=LIST)
    with api.watch_store() as store:
        listed = api.get(LIST).json()
    if store.operations:
        fail(
            f"start an app with CACHE_WARM_PATHS={LIST}, then GET {LIST}",
            expected="the very first request answered from the warmed cache",
            observed=f"{store!r}: nothing was warmed at startup",
        )
    if user["id"] not in [u.get("id") for u in listed]:
        fail(
            f"start an app with CACHE_WARM_PATHS={LIST} after creating user {user['id']}",
            expected="a warmed list that includes that user",
            observed="a list without it (warmed from stale data?)",
        )


@pytest.mark.criterion("stampede")
def test_concurrent_misses_reach_the_store_once(make_api) -> None:
    api = make_api(STORE_LATENCY_MS=200, CACHE_WARM_PATHS="")
    path = item(api.create_user(name="Stampede"))
    for target in (path, LIST):
        with api.watch_store() as store:
            responses = api.gather_get(target, 20)
        bodies = {r.text for r in responses}
        if {r.status_code for r in responses} != {200} or len(bodies) != 1:
            fail(
                f"20 concurrent GET {target}",
                expected="20 identical 200 responses",
                observed=f"statuses {sorted({r.status_code for r in responses})}, "
                f"{len(bodies)} different bodies",
            )
        if store.operations != 1:
            fail(
                f"20 concurrent GET {target}, nobody having asked for it before",
                expected="one request rebuilds the entry, the others wait: 1 store operation",
                observed=repr(store),
            )

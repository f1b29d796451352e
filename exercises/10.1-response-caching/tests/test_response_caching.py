"""Graded checks for exercise 10.1, response caching: one section per acceptance criterion.

The checks see the app only through its contract (README, "What the grader checks"):
whether a request reached the store is read from `store_operations_total` in /metrics,
never from timing, so the verdicts do not depend on how busy the machine is.
"""

from __future__ import annotations

import re
import time

import pytest

from grader.testing import Api, fail, observed

LIST = "/users"


def item(user: dict) -> str:
    return f"/users/{user['id']}"


def max_age(header: str | None) -> int | None:
    match = re.search(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", header or "", re.IGNORECASE)
    return int(match.group(1)) if match else None


# --- caching-middleware: a repeated GET is answered without the store -------------------


@pytest.mark.criterion("caching-middleware")
def test_repeated_get_of_a_user_is_served_from_the_cache(api: Api) -> None:
    path = item(api.create_user())
    first = api.get(path)
    with api.watch_store() as store:
        second = api.get(path)
    if store.operations:
        fail(
            f"GET {path}, twice",
            expected="the second response from the cache: no store operation",
            observed=f"{store!r} for the second request",
        )
    if second.json() != first.json():
        fail(
            f"GET {path}, twice",
            expected="the cached response to have the same body as the first",
            observed=f"{first.text[:80]} then {second.text[:80]}",
        )


@pytest.mark.criterion("caching-middleware")
def test_repeated_get_of_the_user_list_is_served_from_the_cache(api: Api) -> None:
    api.create_user()
    first = api.get(LIST)
    with api.watch_store() as store:
        second = api.get(LIST)
    if store.operations:
        fail(
            f"GET {LIST}, twice",
            expected="the second response from the cache: no store operation",
            observed=f"{store!r} for the second request",
        )
    if second.json() != first.json():
        fail(
            f"GET {LIST}, twice",
            expected="the cached list to equal the first one",
            observed="a different list",
        )


# --- ttl: 5 minutes for the list, 15 for a user; entries expire ------------------------


@pytest.mark.criterion("ttl")
def test_default_ttls_are_five_minutes_for_the_list_and_fifteen_for_a_user(api: Api) -> None:
    path = item(api.create_user())
    for target, ttl in ((LIST, 300), (path, 900)):
        response = api.get(target)
        seconds = max_age(response.headers.get("Cache-Control"))
        # A just-filled entry advertises its whole TTL; allow a few seconds for a HIT.
        if seconds is None or not ttl - 5 <= seconds <= ttl:
            fail(
                f"GET {target} (default settings)",
                expected=f"a TTL of {ttl} s, advertised as Cache-Control: max-age={ttl}",
                observed=observed(response, "Cache-Control"),
            )


@pytest.mark.criterion("ttl")
def test_cached_entries_expire_after_their_ttl(make_api) -> None:
    api = make_api(CACHE_LIST_TTL_SECONDS=1, CACHE_ITEM_TTL_SECONDS=1)
    path = item(api.create_user())
    for target in (LIST, path):
        api.expect_cached(target, needed_for="this TTL check")
    time.sleep(1.3)
    for target in (LIST, path):
        with api.watch_store() as store:
            api.get(target)
        if not store.operations:
            fail(
                f"GET {target} 1.3 s after caching it, with a TTL of 1 s",
                expected="the expired entry to be rebuilt from the store",
                observed="served from the cache (no store operation): the entry never expires",
            )


# --- invalidation: POST, PUT and DELETE drop the entries they make stale -----------------


@pytest.mark.criterion("invalidation")
def test_creating_a_user_refreshes_the_cached_list(api: Api) -> None:
    api.create_user()
    api.expect_cached(LIST, needed_for="this invalidation check")
    created = api.create_user()
    ids = [user.get("id") for user in api.get(LIST).json()]
    if created["id"] not in ids:
        fail(
            f"POST /users, then GET {LIST}",
            expected=f"the list to include the new user {created['id']}",
            observed="the cached list from before the POST",
        )


@pytest.mark.criterion("invalidation")
def test_updating_a_user_refreshes_the_user_and_the_list(api: Api) -> None:
    user = api.create_user(name="Before Update")
    path = item(user)
    for target in (path, LIST):
        api.expect_cached(target, needed_for="this invalidation check")
    api.put(path, {"email": user["email"], "name": "After Update"}, expect=200)
    fresh = api.get(path).json()
    if fresh.get("name") != "After Update":
        fail(
            f"PUT {path} (name: After Update), then GET {path}",
            expected="name: After Update",
            observed=f"name: {fresh.get('name')} (a stale cached copy)",
        )
    listed = {u.get("id"): u.get("name") for u in api.get(LIST).json()}
    if listed.get(user["id"]) != "After Update":
        fail(
            f"PUT {path} (name: After Update), then GET {LIST}",
            expected=f"user {user['id']} listed with name: After Update",
            observed=f"name: {listed.get(user['id'])} (a stale cached list)",
        )


@pytest.mark.criterion("invalidation")
def test_deleting_a_user_removes_it_from_the_cache(api: Api) -> None:
    user = api.create_user()
    path = item(user)
    for target in (path, LIST):
        api.expect_cached(target, needed_for="this invalidation check")
    api.delete(path, expect=204)
    after = api.get(path, expect=None)
    if after.status_code != 404:
        fail(
            f"DELETE {path}, then GET {path}",
            expected="404: the user is gone",
            observed=f"{after.status_code} (the deleted user served from the cache)",
        )
    if user["id"] in [u.get("id") for u in api.get(LIST).json()]:
        fail(
            f"DELETE {path}, then GET {LIST}",
            expected=f"a list without user {user['id']}",
            observed="the deleted user still listed (a stale cached list)",
        )


# --- cache-headers: X-Cache tells a HIT from a MISS ---------------------------------------


@pytest.mark.criterion("cache-headers")
def test_x_cache_is_miss_then_hit_for_a_user(api: Api) -> None:
    path = item(api.create_user())
    for expected in ("MISS", "HIT"):
        response = api.get(path)
        if response.headers.get("X-Cache", "").upper() != expected:
            fail(
                f"GET {path} ({'first' if expected == 'MISS' else 'second'} time)",
                expected=f"X-Cache: {expected}",
                observed=observed(response, "X-Cache"),
            )


@pytest.mark.criterion("cache-headers")
def test_x_cache_is_hit_on_a_repeated_list(api: Api) -> None:
    first = api.get(LIST)
    if first.headers.get("X-Cache", "").upper() not in ("HIT", "MISS"):
        fail(f"GET {LIST}", expected="X-Cache: MISS or HIT", observed=observed(first, "X-Cache"))
    second = api.get(LIST)
    if second.headers.get("X-Cache", "").upper() != "HIT":
        fail(
            f"GET {LIST} (second time)",
            expected="X-Cache: HIT",
            observed=observed(second, "X-Cache"),
        )


# --- cache-control: the request's Cache-Control is respected ---------------------------------


@pytest.mark.criterion("cache-control")
def test_no_cache_request_skips_the_cached_copy(api: Api) -> None:
    path = item(api.create_user())
    for target in (path, LIST):
        api.expect_cached(target, needed_for="this Cache-Control check")
        with api.watch_store() as store:
            api.get(target, headers={"Cache-Control": "no-cache"})
        if not store.operations:
            fail(
                f"GET {target} [Cache-Control: no-cache] after caching it",
                expected="a fresh response from the store",
                observed="served from the cache (no store operation)",
            )


@pytest.mark.criterion("cache-control")
def test_max_age_request_limits_the_age_of_a_cached_copy(api: Api) -> None:
    path = item(api.create_user())
    api.expect_cached(path, needed_for="this Cache-Control check")
    with api.watch_store() as store:
        api.get(path, headers={"Cache-Control": "max-age=60"})
    if store.operations:
        fail(
            f"GET {path} [Cache-Control: max-age=60] right after caching it",
            expected="the cached copy (it is younger than 60 s)",
            observed=f"{store!r}: max-age must not bypass a fresh enough copy",
        )
    time.sleep(2.2)
    with api.watch_store() as store:
        api.get(path, headers={"Cache-Control": "max-age=1"})
    if not store.operations:
        fail(
            f"GET {path} [Cache-Control: max-age=1], 2.2 s after caching it",
            expected="a fresh response from the store (the cached copy is older than 1 s)",
            observed="served from the cache (no store operation)",
        )


# --- configuration: cache settings come from the environment ----------------------------


@pytest.mark.criterion("configuration")
def test_cache_enabled_false_turns_caching_off(make_api) -> None:
    make_api().expect_cached(LIST, needed_for="this configuration check")
    api = make_api(CACHE_ENABLED="false")
    path = item(api.create_user())
    for target in (path, LIST):
        api.get(target)
        with api.watch_store() as store:
            api.get(target)
        if not store.operations:
            fail(
                f"GET {target}, twice, with CACHE_ENABLED=false",
                expected="both requests to reach the store",
                observed="the second one served from the cache",
            )


@pytest.mark.criterion("configuration")
def test_list_and_user_ttls_are_configured_separately(make_api) -> None:
    api = make_api(CACHE_LIST_TTL_SECONDS=1, CACHE_ITEM_TTL_SECONDS=60)
    path = item(api.create_user())
    for target in (LIST, path):
        api.expect_cached(target, needed_for="this configuration check")
    time.sleep(1.3)
    with api.watch_store() as store:
        api.get(LIST)
    if not store.operations:
        fail(
            f"GET {LIST} 1.3 s after caching it, with CACHE_LIST_TTL_SECONDS=1",
            expected="the expired list to be rebuilt from the store",
            observed="served from the cache: is CACHE_LIST_TTL_SECONDS read?",
        )
    with api.watch_store() as store:
        api.get(path)
    if store.operations:
        fail(
            f"GET {path} 1.3 s after caching it, with CACHE_ITEM_TTL_SECONDS=60",
            expected="still served from the cache",
            observed=f"{store!r}: is CACHE_ITEM_TTL_SECONDS read separately from the list TTL?",
        )

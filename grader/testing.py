"""The vocabulary of the graded suites: talk to the learner's app, explain a failure.

A graded test reads like the criterion it checks::

    @pytest.mark.criterion("caching-middleware")
    def test_repeated_get_is_served_from_the_cache(api):
        user = api.create_user()
        api.get(f"/users/{user['id']}")
        with api.watch_store() as store:
            api.get(f"/users/{user['id']}")
        if store.operations:
            fail(...)

and every failure goes through `fail(request, expected=..., observed=...)`, so the learner
reads what was sent, what was expected and what came back, never a bare assert.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ._client import AppClient, short_body

T = TypeVar("T")

STORE_COUNTER = "store_operations_total"
PASSWORD = "correct-horse-1"


def fail(request: str, *, expected: str, observed: str) -> NoReturn:
    """Fail the current check with a message written for the learner."""
    pytest.fail(f"{request}\nexpected: {expected}\nobserved: {observed}", pytrace=False)


def unique_email(label: str = "learner") -> str:
    """An email no other check uses: the app's store may outlive a single check."""
    return f"{label}-{uuid.uuid4().hex[:12]}@example.com"


def observed(response: httpx.Response, *headers: str) -> str:
    """`200, X-Cache: HIT`: the status and the named headers as they came back."""
    shown = [f"{name}: {response.headers.get(name, '(missing)')}" for name in headers]
    return ", ".join([str(response.status_code), *shown])


def eventually(probe: Callable[[], T], *, until: Callable[[T], bool], timeout: float) -> T:
    """Call `probe` every 0.1 s until `until(value)` holds or `timeout` passes; return the
    last value either way, so the check can say what it saw."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = probe()
    return value


class StoreWatch:
    """How many store operations happened inside a `with api.watch_store()` block."""

    operations: int = 0

    def __repr__(self) -> str:
        return f"{self.operations} store operation{'s' if self.operations != 1 else ''}"


class Api:
    """The learner's app, reached only through its HTTP contract."""

    def __init__(self, client: AppClient, *, admin_token: str) -> None:
        self._client = client
        self.admin = {"Authorization": f"Bearer {admin_token}"}

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        expect: int | None = None,
    ) -> httpx.Response:
        response = self._client.request(method, path, json_body=json, headers=headers)
        if expect is not None and response.status_code != expect:
            described = self._client.exchanges[-1].describe()
            fail(
                described,
                expected=f"status {expect}",
                observed=f"{response.status_code} {short_body(response)}",
            )
        return response

    def get(
        self, path: str, *, headers: dict[str, str] | None = None, expect: int | None = 200
    ) -> httpx.Response:
        return self.request("GET", path, headers=headers, expect=expect)

    def post(
        self,
        path: str,
        json: Any = None,
        *,
        headers: dict[str, str] | None = None,
        expect: int | None = None,
    ) -> httpx.Response:
        return self.request("POST", path, json=json, headers=headers, expect=expect)

    def put(self, path: str, json: Any, *, expect: int | None = None) -> httpx.Response:
        return self.request("PUT", path, json=json, expect=expect)

    def delete(self, path: str, *, expect: int | None = None) -> httpx.Response:
        return self.request("DELETE", path, expect=expect)

    def login(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        """POST /auth/login; returns the `Authorization` header for the session."""
        body = self.post("/auth/login", {"email": email, "password": password}, expect=200)
        return {"Authorization": f"Bearer {body.json()['access_token']}"}

    def gather_get(self, path: str, count: int) -> list[httpx.Response]:
        """`count` concurrent GETs of `path`."""
        return self._client.gather([("GET", path, None)] * count)

    def create_user(self, **fields: Any) -> dict[str, Any]:
        """POST /users with valid, unique data (overridable); returns the created user."""
        body = {"email": unique_email(), "name": "Ada Lovelace", "password": PASSWORD}
        body.update(fields)
        return self.post("/users", body, expect=201).json()

    def store_operations(self) -> int:
        """The app's running total of store operations, read from GET /metrics."""
        response = self._client.request("GET", "/metrics")
        if response.status_code != 200:
            fail(
                "GET /metrics",
                expected=f"200 with Prometheus text that includes {STORE_COUNTER}",
                observed=f"{response.status_code} {short_body(response)}",
            )
        total: float | None = None
        try:
            for family in text_string_to_metric_families(response.text):
                for sample in family.samples:
                    if sample.name == STORE_COUNTER:
                        total = (total or 0.0) + sample.value
        except ValueError as exc:
            fail("GET /metrics", expected="Prometheus text format", observed=f"unparsable: {exc}")
        if total is None:
            fail(
                "GET /metrics",
                expected=f"a counter {STORE_COUNTER} (the starter app has one: keep it)",
                observed="no such counter",
            )
        return int(total)

    @contextmanager
    def watch_store(self) -> Iterator[StoreWatch]:
        """Count the store operations caused by the requests inside the block."""
        watch = StoreWatch()
        before = self.store_operations()
        yield watch
        watch.operations = self.store_operations() - before

    def expect_cached(self, path: str, *, needed_for: str) -> None:
        """Fill the cache for `path`, then check a repeat is served without the store.

        Checks of TTLs, invalidation and Cache-Control only mean something once responses
        are cached; this precondition keeps an app without a cache from passing them.
        """
        self.get(path)
        with self.watch_store() as store:
            self.get(path)
        if store.operations:
            fail(
                f"GET {path}, twice",
                expected=f"the second response from the cache, which {needed_for} needs first",
                observed=f"{store!r} for the second request: nothing is cached yet",
            )

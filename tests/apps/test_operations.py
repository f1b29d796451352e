"""Operational behaviour: health, metrics, simulated latency, seeding, lifespan, errors."""

import logging
import os
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from .helpers import ClientFactory, create_user, http_requests, login, store_operations

MISSING_ID = 10**9
DEMO_EMAILS = {"alice@example.com", "bob@example.com", "carol@example.com"}
STORE_OPERATIONS = {"list", "get", "get_by_email", "create", "update", "delete", "list_all"}


def test_health(client: TestClient) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    # The reference adds the cache's state (exercise 10.1, stretch goal redis-health) and
    # the pid of the process that answered (10.3, graceful-restart).
    body = response.json()
    assert body.pop("pid", os.getpid()) == os.getpid()
    assert body in ({"status": "ok"}, {"status": "ok", "cache": "up"})


def test_metrics_exposes_all_store_operations(client: TestClient) -> None:
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert set(store_operations(client)) >= STORE_OPERATIONS


def test_get_user_counts_exactly_one_store_get(client: TestClient) -> None:
    user = create_user(client)
    before = store_operations(client)

    assert client.get(f"/users/{user['id']}").status_code == 200

    after = store_operations(client)
    assert after["get"] - before["get"] == 1, (
        f"GET /users/{{id}} counted {after['get'] - before['get']} gets"
    )
    others = {op: after[op] - before[op] for op in after if op != "get"}
    assert not any(others.values()), f"GET /users/{{id}} touched other operations: {others}"


def test_health_and_metrics_do_not_touch_the_store(client: TestClient) -> None:
    before = store_operations(client)

    for _ in range(3):
        client.get("/health")
        client.get("/metrics")

    assert store_operations(client) == before


def test_http_requests_are_labelled_by_route_template(client: TestClient) -> None:
    labels = {"method": "GET", "route": "/users/{user_id}", "status": 404}
    before = http_requests(client, **labels)

    client.get(f"/users/{MISSING_ID}")
    client.get(f"/users/{MISSING_ID + 1}")

    assert http_requests(client, **labels) - before == 2


def test_store_latency_is_applied(make_client: ClientFactory) -> None:
    client = make_client(store_latency_ms=50)

    started = time.perf_counter()
    client.get(f"/users/{MISSING_ID}")
    elapsed = time.perf_counter() - started

    assert elapsed >= 0.05, f"GET took {elapsed:.3f}s with STORE_LATENCY_MS=50"


def test_seed_demo_users_is_idempotent(make_client: ClientFactory) -> None:
    first = make_client(seed_demo_users=True)
    second = make_client(seed_demo_users=True)

    emails = [user["email"] for user in second.get("/users").json()]
    assert set(emails) >= DEMO_EMAILS, f"demo users missing from {emails}"
    duplicates = [email for email in DEMO_EMAILS if emails.count(email) > 1]
    assert not duplicates, f"demo users seeded twice: {duplicates}"
    assert login(first, "alice@example.com", "demo-password")


def test_each_app_has_its_own_metrics(
    app_package: ModuleType, make_settings: Callable[..., Any]
) -> None:
    app_one = app_package.create_app(make_settings())
    app_two = app_package.create_app(make_settings())

    with TestClient(app_one) as one, TestClient(app_two) as two:
        before = store_operations(two)["get"]
        one.get(f"/users/{MISSING_ID}")
        one.get(f"/users/{MISSING_ID}")
        after = store_operations(two)["get"]

    assert after == before, "a request to one app was counted by another"
    assert isinstance(app_one.state.registry, CollectorRegistry)
    assert app_one.state.registry is not app_two.state.registry, "apps share a registry"


def test_lifespan_logs_startup_and_shutdown(
    app_package: ModuleType, make_settings: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    root_handlers = list(logging.getLogger().handlers)
    app = app_package.create_app(make_settings())
    app_package.create_app(make_settings())

    with caplog.at_level(logging.INFO), TestClient(app):
        pass

    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("startup") for message in messages), messages
    assert any(message.startswith("shutdown") for message in messages), messages
    assert logging.getLogger().handlers == root_handlers, "create_app added root handlers"
    assert not logging.getLogger(app_package.__name__).handlers, "create_app added handlers"


def test_unknown_route_returns_json_404(client: TestClient) -> None:
    response = client.get("/no-such-route")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_unhandled_error_returns_json_500_without_traceback(
    app_package: ModuleType, make_settings: Callable[..., Any]
) -> None:
    app = app_package.create_app(make_settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")

    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
    assert "secret internals" not in response.text

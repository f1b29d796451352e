"""The reference app's sessions in Redis (exercise 10.4, ``SESSION_BACKEND=redis``).

The tests use the Redis at GRADE_REDIS_URL (default 127.0.0.1:6379) through the grader's
`shared_redis` fixture (conftest.py): a key prefix of each test's own, whose keys it
deletes afterwards.
The outage tests point the app at a port where no Redis answers, or at a `redis-server` of
their own that they stop. Without Redis they are skipped with a how-to; under `CI=true`
they fail instead.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from grader._process import AppProcess
from grader._services import RedisServer, SharedRedis, free_port
from solutions.app import Settings, create_app
from solutions.app.sessions import SessionStore
from solutions.app.sessions_redis import RedisSessionStore

from .helpers import ADMIN_TOKEN, PASSWORD, bearer, create_user, login

REPO_ROOT = Path(__file__).resolve().parents[2]
UNAVAILABLE = {"detail": "session store unavailable"}


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Reference apps with Redis sessions, TestClient entered; each its own job queue."""
    numbers = itertools.count(1)
    with ExitStack() as stack:

        def make(**overrides: Any) -> TestClient:
            values: dict[str, Any] = {
                "admin_token": ADMIN_TOKEN,
                "cache_warm_paths": "",
                "session_backend": "redis",
                "jobs_db_path": str(tmp_path / f"jobs-{next(numbers)}.sqlite3"),
            }
            settings = Settings(_env_file=None, **(values | overrides))
            return stack.enter_context(TestClient(create_app(settings)))

        yield make


def on_shared_redis(redis: SharedRedis) -> dict[str, str]:
    return {"redis_url": redis.url, "redis_key_prefix": redis.prefix}


def test_a_login_on_one_app_is_honoured_and_ended_on_another(
    make_app: Callable[..., TestClient], shared_redis: SharedRedis, tmp_path: Path
) -> None:
    # Two apps with nothing in common but the database and Redis: two instances.
    shared = on_shared_redis(shared_redis) | {
        "database_url": f"sqlite:///{tmp_path / 'users.sqlite3'}"
    }
    first, second = make_app(**shared), make_app(**shared)
    user = create_user(first)
    session = bearer(login(first, user["email"]))

    assert first.get("/auth/me", headers=session).json()["id"] == user["id"]  # now cached
    me = second.get("/auth/me", headers=session)
    assert (me.status_code, me.json()["id"]) == (200, user["id"])
    assert second.post("/auth/logout", headers=session).status_code == 204

    # The first app's cached answer must not outlive the session either.
    assert first.get("/auth/me", headers=session).status_code == 401
    assert second.get("/auth/me", headers=session).status_code == 401
    assert first.post("/auth/logout", headers=session).status_code == 401


def test_a_session_is_one_key_with_the_session_ttl(
    make_app: Callable[..., TestClient], shared_redis: SharedRedis
) -> None:
    client = make_app(**on_shared_redis(shared_redis), session_ttl_seconds=120)
    user = create_user(client)
    token = login(client, user["email"])

    key = f"{shared_redis.prefix}session:{token}"
    assert shared_redis.keys() == [key.encode()]
    assert shared_redis.client.get(key) == str(user["id"]).encode()
    assert 118_000 < shared_redis.client.pttl(key) <= 120_000
    assert client.post("/auth/logout", headers=bearer(token)).status_code == 204
    assert shared_redis.keys() == []


def test_redis_expires_a_session_by_itself(
    make_app: Callable[..., TestClient], shared_redis: SharedRedis
) -> None:
    client = make_app(**on_shared_redis(shared_redis), session_ttl_seconds=1)
    user = create_user(client)
    session = bearer(login(client, user["email"]))
    assert client.get("/auth/me", headers=session).status_code == 200

    time.sleep(1.2)

    assert client.get("/auth/me", headers=session).status_code == 401
    assert shared_redis.keys() == []


def assert_unavailable(response: Any, request: str) -> None:
    assert (response.status_code, response.json()) == (503, UNAVAILABLE), (
        f"{request}: {response.status_code} {response.text}"
    )
    assert response.headers["content-type"] == "application/json"


def test_an_unreachable_redis_is_a_503_not_a_500(
    make_app: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    # A port nobody listens on: every connection is refused at once.
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    client = make_app(redis_url=nowhere)
    user = create_user(client)  # the users do not live in Redis
    credentials = {"email": user["email"], "password": PASSWORD}

    with caplog.at_level(logging.WARNING, logger="solutions.app"):
        assert_unavailable(client.post("/auth/login", json=credentials), "POST /auth/login")
        for _ in range(2):  # through the response cache's token check, then the route's
            assert_unavailable(client.get("/auth/me", headers=bearer("t")), "GET /auth/me")
        assert_unavailable(client.post("/auth/logout", headers=bearer("t")), "POST /auth/logout")
    assert client.get("/users").status_code == 200

    warnings = [r.getMessage() for r in caplog.records if "session store" in r.getMessage()]
    assert len(warnings) == 1 and "unreachable" in warnings[0], warnings  # once per outage


def test_a_redis_that_never_answers_costs_a_request_a_fraction_of_a_second(
    make_app: Callable[..., TestClient],
) -> None:
    # A socket that listens but never accepts: connecting succeeds, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        client = make_app(redis_url=f"redis://127.0.0.1:{port}/0", redis_socket_timeout_seconds=0.2)
        user = create_user(client)
        started = time.monotonic()
        response = client.post("/auth/login", json={"email": user["email"], "password": PASSWORD})
        elapsed = time.monotonic() - started

    assert_unavailable(response, "POST /auth/login")
    assert elapsed < 2, f"took {elapsed:.2f} s"


def test_sessions_work_again_once_redis_is_back(
    make_app: Callable[..., TestClient], redis_server: RedisServer
) -> None:
    client = make_app(redis_url=redis_server.url)
    user = create_user(client)
    session = bearer(login(client, user["email"]))

    redis_server.stop()
    assert_unavailable(client.get("/auth/me", headers=session), "GET /auth/me, Redis stopped")
    redis_server.start()

    # This redis-server keeps nothing on disk: the old session is gone, a new one works.
    assert client.get("/auth/me", headers=session).status_code == 401
    again = bearer(login(client, user["email"]))
    assert client.get("/auth/me", headers=again).status_code == 200


def test_memory_sessions_stay_the_default(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, jobs_db_path=str(tmp_path / "jobs.sqlite3"))
    assert (settings.session_backend, settings.redis_key_prefix) == ("memory", "users-api:")
    assert isinstance(create_app(settings).state.sessions, SessionStore)
    redis_settings = Settings(
        _env_file=None, session_backend="redis", jobs_db_path=str(tmp_path / "jobs.sqlite3")
    )
    assert isinstance(create_app(redis_settings).state.sessions, RedisSessionStore)


def test_server_processes_share_sessions(tmp_path: Path, shared_redis: SharedRedis) -> None:
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "CACHE_WARM_PATHS": "",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'users.sqlite3'}",
        "SESSION_BACKEND": "redis",
        "REDIS_URL": shared_redis.url,
        "REDIS_KEY_PREFIX": shared_redis.prefix,
    }
    apps = [AppProcess("solutions.app", cwd=tmp_path / f"i{n}", env=env) for n in range(2)]
    try:
        first, second = (app.start(ready_timeout=30) for app in apps)
        body = {"email": "shared-session@example.com", "name": "S", "password": PASSWORD}
        assert first.request("POST", "/users", json=body).status == 201
        logged_in = first.request("POST", "/auth/login", json=body)
        session = bearer(json.loads(logged_in.body)["access_token"])

        assert second.request("GET", "/auth/me", headers=session).status == 200
        assert second.request("POST", "/auth/logout", headers=session).status == 204
        assert first.request("GET", "/auth/me", headers=session).status == 401
        assert "session_backend=redis" in first.output()
    finally:
        for app in apps:
            app.kill()

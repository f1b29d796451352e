"""The 10.4 stretch features wired into the reference app: rate limit, request ids, the
cleanup lock and the autoscaler's gauges, as ``create_app`` and the job worker use them.

``test_reference_distributed.py`` tries each module on a small app of its own; these tests
try the whole reference app, built from settings, through its HTTP surface.
Redis comes from the grader's ``shared_redis`` fixture (see that file).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from grader._services import SharedRedis
from solutions.app import Settings, create_app
from solutions.app.job_registry import utcnow
from solutions.app.job_worker import RecurringJob, build_cleanup_gate
from solutions.app.jobs import JobQueue, build_job_queue
from solutions.app.logs import configure_logging
from solutions.app.metrics import Metrics
from solutions.app.ratelimit import MemoryRateLimiter, RedisRateLimiter
from solutions.app.tracing import RequestIdFilter

from .helpers import ADMIN_TOKEN, create_user, metric_samples, unique_email

CLEANUP = "purge_deleted_users"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    numbers = iter(range(1, 1000))

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "admin_token": ADMIN_TOKEN,
            "cache_warm_paths": "",
            "jobs_db_path": str(tmp_path / f"jobs-{next(numbers)}.sqlite3"),
            "log_level": "INFO",
        }
        return Settings(_env_file=None, **(values | overrides))

    return make


@pytest.fixture
def make_app(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """Reference apps, TestClient entered (lifespan run); all closed after the test."""
    with ExitStack() as stack:

        def make(**overrides: Any) -> TestClient:
            return stack.enter_context(TestClient(create_app(make_settings(**overrides))))

        yield make


def on_shared_redis(redis: SharedRedis) -> dict[str, str]:
    return {"redis_url": redis.url, "redis_key_prefix": redis.prefix}


# --- settings ------------------------------------------------------------------------------


def test_the_stretch_features_are_off_by_default() -> None:
    settings = Settings(_env_file=None)
    assert (settings.rate_limit_backend, settings.cleanup_lock) == ("none", "none")
    assert (settings.rate_limit_requests, settings.rate_limit_window_seconds) == (100, 60)
    assert settings.rate_limit_trust_forwarded_for is False


@pytest.mark.parametrize(
    "bad",
    [{"rate_limit_requests": 0}, {"rate_limit_window_seconds": 0}, {"rate_limit_backend": "x"}],
)
def test_nonsense_rate_limits_are_refused_at_startup(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Settings(_env_file=None, **bad)


# --- rate limiting -------------------------------------------------------------------------


def test_without_a_backend_nothing_is_limited_or_announced(
    make_app: Callable[..., TestClient],
) -> None:
    client = make_app()
    response = client.get("/users")
    assert response.status_code == 200 and "ratelimit-limit" not in response.headers
    assert client.app.state.rate_limiter is None  # type: ignore[attr-defined]


def test_over_the_limit_a_429_is_counted_and_names_its_request_and_instance(
    make_app: Callable[..., TestClient],
) -> None:
    client = make_app(rate_limit_backend="memory", rate_limit_requests=2, instance_id="inst-7")
    assert isinstance(client.app.state.rate_limiter, MemoryRateLimiter)  # type: ignore[attr-defined]
    assert [client.get("/users").status_code for _ in range(2)] == [200, 200]
    refused = client.get("/users", headers={"X-Request-Id": "over-the-top"})
    assert refused.status_code == 429
    assert refused.json() == {"detail": "rate limit exceeded"}
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-request-id"] == "over-the-top"
    assert refused.headers["x-instance-id"] == "inst-7"
    # Never limited: load balancers and Prometheus poll these.
    assert {client.get(p).status_code for p in ["/health", "/metrics"] * 3} == {200}
    counted = metric_samples(client, "http_requests_total")
    assert sum(v for labels, v in counted.items() if ("status", "429") in labels) == 1


def test_two_apps_on_one_redis_share_one_budget(
    make_app: Callable[..., TestClient], shared_redis: SharedRedis
) -> None:
    shared = on_shared_redis(shared_redis) | {"rate_limit_backend": "redis"}
    first, second = (make_app(**shared, rate_limit_requests=4) for _ in range(2))
    assert isinstance(first.app.state.rate_limiter, RedisRateLimiter)  # type: ignore[attr-defined]
    statuses = [app.get("/users").status_code for app in (first, second) * 3]
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert shared_redis.keys(), "the counts live under REDIS_KEY_PREFIX"


def test_the_limiter_is_closed_with_the_app(
    make_settings: Callable[..., Settings], shared_redis: SharedRedis
) -> None:
    app = create_app(make_settings(**on_shared_redis(shared_redis), rate_limit_backend="redis"))
    closed: list[bool] = []
    limiter = app.state.rate_limiter

    async def aclose() -> None:
        closed.append(True)

    limiter.aclose = aclose
    with TestClient(app) as client:
        assert client.get("/users").status_code == 200
        assert closed == []
    assert closed == [True]


# --- request ids ---------------------------------------------------------------------------


def test_every_response_carries_a_request_id_and_a_500_keeps_the_callers(
    make_settings: Callable[..., Settings],
) -> None:
    app: FastAPI = create_app(make_settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as client:
        plain = [client.get("/users").headers["x-request-id"] for _ in range(2)]
        failed = client.get("/boom", headers={"X-Request-Id": "doomed-1"})
    assert all(plain) and plain[0] != plain[1]
    assert failed.status_code == 500
    assert failed.headers["x-request-id"] == "doomed-1"
    assert "x-instance-id" in failed.headers


def test_the_welcome_job_runs_under_the_id_of_the_request_that_enqueued_it(
    make_app: Callable[..., TestClient], log_lines: io.StringIO
) -> None:
    client = make_app(jobs_worker="inprocess")
    email = unique_email("traced")
    created = client.post(
        "/users",
        json={"email": email, "name": "Ada", "password": "correct-horse-1"},
        headers={"X-Request-Id": "signup-42"},
    )
    assert created.headers["x-request-id"] == "signup-42"
    queue: JobQueue = client.app.state.jobs  # type: ignore[attr-defined]
    for _ in range(100):
        if f"welcome email sent to={email}" in log_lines.getvalue():
            break
        time.sleep(0.05)
    lines = log_lines.getvalue().splitlines()
    ours = [line for line in lines if line.endswith(" request_id=signup-42")]
    for event in ("job enqueued", "job started", f"welcome email sent to={email}", "job succeeded"):
        assert any(event in line for line in ours), (event, lines)
    job = queue.registry.recent(name="send_welcome_email", limit=1)[0]
    assert job.status == "succeeded"


def test_configure_logging_puts_one_filter_on_each_root_handler() -> None:
    root = logging.getLogger()
    extra = logging.StreamHandler(io.StringIO())
    root.addHandler(extra)
    try:
        configure_logging("INFO")
        configure_logging("INFO")  # every create_app calls it
        for handler in root.handlers:
            filters = [f for f in handler.filters if isinstance(f, RequestIdFilter)]
            assert len(filters) == 1, handler
    finally:
        root.removeHandler(extra)


# --- the cleanup lock ----------------------------------------------------------------------


class Gate:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked = 0

    def should_run(self) -> bool:
        self.asked += 1
        return self.answer


def cleanup_queue(make_settings: Callable[..., Settings], **overrides: Any) -> JobQueue:
    return build_job_queue(make_settings(jobs_worker="none", **overrides), Metrics())


def test_a_closed_gate_skips_the_interval_and_an_open_one_enqueues(
    make_settings: Callable[..., Settings],
) -> None:
    now = utcnow()
    for answer, enqueued in ((False, 0), (True, 1)):
        queue = cleanup_queue(make_settings)
        gate = Gate(answer)
        job = RecurringJob(queue, CLEANUP, 1, gate=gate)  # type: ignore[arg-type]
        job.tick(now)  # the first due time: one interval from now
        job.tick(now + timedelta(seconds=0.5))
        assert gate.asked == 0, "the gate is asked only when the job is due"
        job.tick(now + timedelta(seconds=1))
        assert gate.asked == 1
        assert len(queue.registry.recent(name=CLEANUP)) == enqueued
        if not answer:
            job.tick(now + timedelta(seconds=1.5))
            assert gate.asked == 1, "a skipped interval is skipped, not asked at each tick"
        queue.close()


def test_three_workers_with_the_redis_gate_enqueue_each_cleanup_once(
    make_settings: Callable[..., Settings], shared_redis: SharedRedis
) -> None:
    shared = on_shared_redis(shared_redis) | {"cleanup_lock": "redis"}
    queues = [cleanup_queue(make_settings, **shared) for _ in range(3)]
    gates = [build_cleanup_gate(q.settings) for q in queues]
    assert all(gate is not None for gate in gates)
    jobs = [RecurringJob(q, CLEANUP, 1, gate=g) for q, g in zip(queues, gates, strict=True)]
    now = utcnow()
    for job in jobs:
        job.tick(now)
    for job in jobs:
        job.tick(now + timedelta(seconds=1))
    assert [len(q.registry.recent(name=CLEANUP)) for q in queues] == [1, 0, 0]
    for queue, gate in zip(queues, gates, strict=True):
        assert gate is not None
        gate.close()
        queue.close()


def test_without_cleanup_lock_there_is_no_gate(make_settings: Callable[..., Settings]) -> None:
    assert build_cleanup_gate(make_settings()) is None


# --- the autoscaler's gauges ---------------------------------------------------------------


def gauge(response: httpx.Response, name: str) -> float:
    for line in response.text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in {response.text}")


@pytest.mark.anyio
async def test_the_in_flight_gauge_counts_the_requests_being_served(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(store_latency_ms=300, cache_enabled=False))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert gauge(await client.get("/metrics"), "http_requests_in_flight") == 1
        slow = [asyncio.create_task(client.get("/users")) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert gauge(await client.get("/metrics"), "http_requests_in_flight") == 4
        assert {r.status_code for r in await asyncio.gather(*slow)} == {200}
        assert gauge(await client.get("/metrics"), "http_requests_in_flight") == 1


def test_the_queue_depth_gauge_counts_the_jobs_not_started(
    make_app: Callable[..., TestClient],
) -> None:
    client = make_app(jobs_worker="none")
    assert gauge(client.get("/metrics"), "jobs_queue_depth") == 0
    for _ in range(3):
        create_user(client)
    assert gauge(client.get("/metrics"), "jobs_queue_depth") == 3
    queue: JobQueue = client.app.state.jobs  # type: ignore[attr-defined]
    queue.cancel(queue.registry.recent(limit=1)[0].id)
    assert gauge(client.get("/metrics"), "jobs_queue_depth") == 2, "a cancelled job waits no more"

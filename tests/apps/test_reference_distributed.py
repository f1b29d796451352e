"""The reference's tools for many instances (10.4 stretch): rate limits, request ids, locks.

Each middleware is tried on a small FastAPI app built here, reached through httpx's ASGI
transport, so that these tests say what the module does whatever the app around it looks
like. Two limiters or gates on one Redis stand for two instances of the API.

Redis comes from the grader's ``shared_redis`` fixture (the server at GRADE_REDIS_URL,
default 127.0.0.1:6379, under a key prefix of the test's own, whose keys it deletes after);
the restart test starts a ``redis-server`` of its own (``redis_server``). Without Redis
they are skipped, and fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import re
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from grader._services import RedisServer, SharedRedis, free_port
from grader.plugin import redis_server, shared_redis
from solutions.app.locks import (
    RecurringRunGate,
    RedisLock,
    SyncRecurringRunGate,
    gate_ttl_ms,
)
from solutions.app.logs import LOG_FORMAT
from solutions.app.ratelimit import (
    MemoryRateLimiter,
    RateLimiter,
    RateLimitMiddleware,
    RedisRateLimiter,
)
from solutions.app.tracing import (
    LOG_FORMAT_WITH_ID,
    RequestIdFilter,
    RequestIdMiddleware,
    bound_request_id,
    current_request_id,
)

__all__ = ["redis_server", "shared_redis"]  # the grader's fixtures, used by name below

HEX32 = re.compile(r"[0-9a-f]{32}")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

handler_logger = logging.getLogger("solutions.app.test_handler")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def closed_port_url() -> str:
    """A Redis URL where nothing listens: every command is refused at once."""
    return f"redis://127.0.0.1:{free_port()}/0"


@asynccontextmanager
async def client_of(
    app: FastAPI, *, address: str = "203.0.113.7"
) -> AsyncIterator[httpx.AsyncClient]:
    """An async client whose requests reach ``app`` from the client ``address``."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


# --- rate limiting -------------------------------------------------------------------------


def limited_app(limiter: RateLimiter, *, trust_forwarded_for: bool = False) -> FastAPI:
    """An app with a limited route, and the routes a limiter must leave alone."""
    app = FastAPI()

    @app.get("/users")
    async def users() -> list[str]:
        return []

    @app.get("/health")
    @app.get("/health/ready")
    @app.get("/healthy")
    @app.get("/metrics")
    async def unlimited() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(
        RateLimitMiddleware, limiter=limiter, trust_forwarded_for=trust_forwarded_for
    )
    return app


@pytest.mark.anyio
async def test_two_instances_sharing_redis_share_one_count(shared_redis: SharedRedis) -> None:
    window = 30
    limiters = [
        RedisRateLimiter.from_url(
            shared_redis.url, prefix=shared_redis.prefix, limit=6, window_seconds=window, timeout=1
        )
        for _ in range(2)
    ]
    try:
        decisions = [await limiters[i % 2].hit("198.51.100.1") for i in range(6)]
        assert all(d.allowed for d in decisions), (
            f"6 requests spread over two instances with a shared limit of 6 should all be "
            f"allowed; got {decisions}"
        )
        assert [d.remaining for d in decisions] == [5, 4, 3, 2, 1, 0]
        for limiter in limiters:
            seventh = await limiter.hit("198.51.100.1")
            assert not seventh.allowed, f"a 7th request should be denied on either: {seventh}"
            assert 1 <= seventh.retry_after <= window, seventh
            assert seventh.remaining == 0
        # Another client has a budget of its own.
        assert (await limiters[0].hit("198.51.100.2")).remaining == 5
        ttl = shared_redis.client.pttl(f"{shared_redis.prefix}ratelimit:198.51.100.1")
        assert 0 < ttl <= window * 1000, f"the counter must expire with its window, pttl={ttl}"
    finally:
        for limiter in limiters:
            await limiter.aclose()


@pytest.mark.anyio
async def test_the_window_starts_at_the_first_request_and_ends_after_it(
    shared_redis: SharedRedis,
) -> None:
    limiter = RedisRateLimiter.from_url(
        shared_redis.url, prefix=shared_redis.prefix, limit=2, window_seconds=0.8, timeout=1
    )
    try:
        await limiter.hit("client")
        # A full window from the first request, wherever it falls on the clock.
        assert 600 < shared_redis.client.pttl(limiter.key("client")) <= 800
        assert (await limiter.hit("client")).allowed
        await asyncio.sleep(0.3)
        # Denied requests do not stretch the window: a client that keeps knocking is not
        # locked out for ever.
        assert not (await limiter.hit("client")).allowed
        await asyncio.sleep(0.6)  # 0.9 s after the first request: its window is over
        fresh = await limiter.hit("client")
        assert (fresh.allowed, fresh.remaining) == (True, 1), fresh
    finally:
        await limiter.aclose()


@pytest.mark.anyio
async def test_memory_limiters_count_alone_so_n_instances_allow_n_times_the_limit() -> None:
    instances = [MemoryRateLimiter(limit=6, window_seconds=30) for _ in range(2)]
    decisions = [await instances[i % 2].hit("198.51.100.1") for i in range(12)]
    assert all(d.allowed for d in decisions), (
        "each memory limiter counts only its own requests: 12 requests spread over two "
        "instances pass a limit of 6"
    )
    assert not (await instances[0].hit("198.51.100.1")).allowed


@pytest.mark.anyio
async def test_a_memory_window_ends_and_forgets_its_client() -> None:
    now = 100.0
    limiter = MemoryRateLimiter(limit=1, window_seconds=10, clock=lambda: now)
    assert (await limiter.hit("a")).allowed
    denied = await limiter.hit("a")
    assert (denied.allowed, denied.retry_after) == (False, 10)
    now = 105.5
    assert (await limiter.hit("a")).retry_after == 5  # 4.5 s left, rounded up
    now = 110.0
    assert (await limiter.hit("a")).allowed
    now = 125.0
    await limiter.hit("b")
    assert list(limiter._windows) == ["b"], "expired windows must not pile up in memory"


@pytest.mark.anyio
async def test_over_the_limit_the_middleware_answers_429_on_every_instance(
    shared_redis: SharedRedis,
) -> None:
    limiters = [
        RedisRateLimiter.from_url(
            shared_redis.url, prefix=shared_redis.prefix, limit=3, window_seconds=30, timeout=1
        )
        for _ in range(2)
    ]
    try:
        async with (
            client_of(limited_app(limiters[0])) as first,
            client_of(limited_app(limiters[1])) as second,
        ):
            responses = [await (first, second)[i % 2].get("/users") for i in range(3)]
            assert [r.status_code for r in responses] == [200, 200, 200]
            assert [r.headers["RateLimit-Remaining"] for r in responses] == ["2", "1", "0"]
            assert {r.headers["RateLimit-Limit"] for r in responses} == {"3"}
            for client in (first, second):
                denied = await client.get("/users")
                assert denied.status_code == 429, (
                    f"GET /users, the 4th request of a client allowed 3: expected 429, "
                    f"got {denied.status_code} {denied.text}"
                )
                assert denied.json() == {"detail": "rate limit exceeded"}
                assert denied.headers["content-type"] == "application/json"
                assert 1 <= int(denied.headers["Retry-After"]) <= 30
                assert denied.headers["RateLimit-Limit"] == "3"
                assert denied.headers["RateLimit-Remaining"] == "0"
    finally:
        for limiter in limiters:
            await limiter.aclose()


@pytest.mark.anyio
async def test_health_and_metrics_are_never_limited() -> None:
    async with client_of(limited_app(MemoryRateLimiter(limit=1, window_seconds=30))) as client:
        for _ in range(3):
            for path in ("/health", "/health/ready", "/metrics"):
                response = await client.get(path)
                assert response.status_code == 200, path
                assert "RateLimit-Limit" not in response.headers, path
        assert (await client.get("/users")).status_code == 200, "exempt requests used the budget"
        assert (await client.get("/healthy")).status_code == 429, "only /health and below"


@pytest.mark.anyio
async def test_the_client_is_its_address_and_x_forwarded_for_is_not_trusted_by_default() -> None:
    app = limited_app(MemoryRateLimiter(limit=1, window_seconds=30))
    async with client_of(app) as client, client_of(app, address="203.0.113.8") as other:
        assert (await client.get("/users")).status_code == 200
        assert (await other.get("/users")).status_code == 200, "another address, another budget"
        spoofed = await client.get("/users", headers={"X-Forwarded-For": "192.0.2.99"})
        assert spoofed.status_code == 429, "a made-up X-Forwarded-For must not buy a new budget"


@pytest.mark.anyio
async def test_trust_forwarded_for_counts_the_first_forwarded_address() -> None:
    app = limited_app(MemoryRateLimiter(limit=1, window_seconds=30), trust_forwarded_for=True)
    async with client_of(app, address="10.0.0.2") as balancer:
        first = {"X-Forwarded-For": "192.0.2.1, 10.0.0.1"}
        assert (await balancer.get("/users", headers=first)).status_code == 200
        second = {"X-Forwarded-For": "192.0.2.2"}
        assert (await balancer.get("/users", headers=second)).status_code == 200
        assert (await balancer.get("/users", headers=first)).status_code == 429
        assert (await balancer.get("/users")).status_code == 200, "no header: the peer's address"


@pytest.mark.anyio
async def test_without_redis_the_limiter_fails_open_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="solutions.app.ratelimit")
    limiter = RedisRateLimiter.from_url(
        closed_port_url(), prefix="unused:", limit=1, window_seconds=30, timeout=0.2
    )
    try:
        async with client_of(limited_app(limiter)) as client:
            responses = [await client.get("/users") for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 200], (
            "with Redis down the limiter must let requests through, not answer 429 or 500"
        )
        assert all("RateLimit-Remaining" not in r.headers for r in responses), (
            "an uncounted response must not claim a budget"
        )
        warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1, f"one warning per outage, got {warnings}"
    finally:
        await limiter.aclose()


@pytest.mark.anyio
async def test_limiting_resumes_when_redis_is_back_and_each_change_is_logged_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="solutions.app.ratelimit")
    limiter = RedisRateLimiter.from_url(
        redis_server.url, prefix="restart:", limit=5, window_seconds=30, timeout=0.5
    )
    try:
        assert (await limiter.hit("c")).remaining == 4
        redis_server.stop()
        outage = [await limiter.hit("c") for _ in range(3)]
        assert all(d.allowed and not d.counted for d in outage), outage
        redis_server.start()
        back = await limiter.hit("c")
        assert back.counted and back.remaining == 4, f"counting resumes on the new server: {back}"
        messages = [r.getMessage() for r in caplog.records]
        assert sum("unreachable" in m for m in messages) == 1, messages
        assert sum("reachable again" in m for m in messages) == 1, messages
    finally:
        await limiter.aclose()


# --- request ids ---------------------------------------------------------------------------


def traced_app() -> FastAPI:
    """An app whose handlers log a line and report the request id they see."""
    app = FastAPI()

    @app.get("/work")
    async def work(tag: str = "") -> dict[str, str | None]:
        seen = current_request_id()
        # Give the other requests of a concurrent batch a chance to run in between.
        await asyncio.sleep(random.uniform(0, 0.02))
        handler_logger.info("handling tag=%s", tag)
        return {"tag": tag, "seen_before": seen, "seen_after": current_request_id()}

    @app.get("/blocking")
    def blocking() -> dict[str, str | None]:
        # A plain def endpoint runs in a worker thread of Starlette's.
        return {"seen": current_request_id()}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_middleware(RequestIdMiddleware)
    return app


@pytest.mark.anyio
async def test_a_given_request_id_is_echoed_and_current_in_the_handler() -> None:
    async with client_of(traced_app()) as client:
        response = await client.get("/work", headers={"X-Request-Id": "order-42.retry:1"})
    assert response.headers["X-Request-Id"] == "order-42.retry:1"
    assert response.json()["seen_before"] == "order-42.retry:1"
    assert "traceparent" not in response.headers, "no traceparent came in: none goes out"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "given",
    [b"", b"has space", b"x" * 129, b"caf\xe9", b'quote"d', b"a/b"],
    ids=["empty", "space", "too-long", "non-ascii", "quote", "slash"],
)
async def test_an_invalid_request_id_is_replaced_by_a_new_one(given: bytes) -> None:
    async with client_of(traced_app()) as client:
        response = await client.get("/work", headers={"X-Request-Id": given})
    new_id = response.headers["X-Request-Id"]
    assert HEX32.fullmatch(new_id), f"sent X-Request-Id {given!r}: expected a new id, got {new_id}"
    assert response.json()["seen_before"] == new_id


@pytest.mark.anyio
async def test_a_traceparent_gives_the_id_and_comes_back_with_a_new_span() -> None:
    async with client_of(traced_app()) as client:
        response = await client.get("/work", headers={"traceparent": TRACEPARENT})
        other = await client.get("/work", headers={"traceparent": TRACEPARENT})
    assert response.headers["X-Request-Id"] == TRACE_ID
    assert response.json()["seen_before"] == TRACE_ID
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert re.fullmatch(r"[0-9a-f]{16}", span_id) and span_id not in (PARENT_ID, "0" * 16)
    assert other.headers["traceparent"].split("-")[2] != span_id, "a new span per request"


@pytest.mark.anyio
async def test_an_x_request_id_wins_over_the_trace_id_but_the_trace_goes_on() -> None:
    headers = {"X-Request-Id": "mine", "traceparent": TRACEPARENT}
    async with client_of(traced_app()) as client:
        response = await client.get("/work", headers=headers)
    assert response.headers["X-Request-Id"] == "mine"
    assert response.headers["traceparent"].startswith(f"00-{TRACE_ID}-")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # the spec says lowercase
        f"01-{TRACE_ID}-{PARENT_ID}-01",  # a version this module does not know
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # too short
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",
        "garbage",
    ],
)
async def test_an_invalid_traceparent_is_ignored(traceparent: str) -> None:
    async with client_of(traced_app()) as client:
        response = await client.get("/work", headers={"traceparent": traceparent})
    assert HEX32.fullmatch(response.headers["X-Request-Id"])
    assert response.headers["X-Request-Id"] != TRACE_ID
    assert "traceparent" not in response.headers


@pytest.mark.anyio
async def test_log_lines_of_the_request_end_with_its_id(log_lines: io.StringIO) -> None:
    handler_logger.info("before any request")
    async with client_of(traced_app()) as client:
        await client.get("/work?tag=logged", headers={"X-Request-Id": "req-1"})
    lines = log_lines.getvalue().splitlines()
    assert lines[0].endswith("before any request request_id=-"), lines[0]
    handled = [line for line in lines if "handling tag=logged" in line]
    assert len(handled) == 1 and handled[0].endswith(" request_id=req-1"), lines
    access = [line for line in lines if "solutions.app.access" in line]
    assert len(access) == 1, lines
    assert re.search(
        r" request method=GET path=/work status=200 duration_ms=\d+\.\d request_id=req-1$",
        access[0],
    ), access[0]


@pytest.mark.anyio
async def test_concurrent_requests_never_see_each_others_id(log_lines: io.StringIO) -> None:
    async with client_of(traced_app()) as client:
        responses = await asyncio.gather(
            *(client.get(f"/work?tag=t{i}", headers={"X-Request-Id": f"id-{i}"}) for i in range(20))
        )
    for i, response in enumerate(responses):
        body = response.json()
        assert response.headers["X-Request-Id"] == f"id-{i}"
        assert (body["seen_before"], body["seen_after"]) == (f"id-{i}", f"id-{i}"), body
    for line in log_lines.getvalue().splitlines():
        if match := re.search(r"handling tag=t(\d+) ", line):
            assert line.endswith(f" request_id=id-{match[1]}"), line
    assert current_request_id() is None, "the id must not outlive its request"


@pytest.mark.anyio
async def test_a_plain_def_endpoint_sees_the_id_too() -> None:
    async with client_of(traced_app()) as client:
        response = await client.get("/blocking", headers={"X-Request-Id": "threaded"})
    assert response.json() == {"seen": "threaded"}


@pytest.mark.anyio
async def test_a_failing_request_is_logged_as_500_and_its_id_reset(log_lines: io.StringIO) -> None:
    transport = httpx.ASGITransport(app=traced_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/boom", headers={"X-Request-Id": "doomed"})
    assert response.status_code == 500
    assert "path=/boom status=500" in log_lines.getvalue()
    assert "request_id=doomed" in log_lines.getvalue()
    assert current_request_id() is None


def test_a_job_runs_under_the_id_of_the_request_that_enqueued_it(log_lines: io.StringIO) -> None:
    enqueued_with = "req-that-enqueued"
    seen: list[str | None] = []

    def worker_thread() -> None:
        # As a job worker does: the id travelled with the job, and is bound while it runs.
        with bound_request_id(enqueued_with):
            seen.append(current_request_id())
            handler_logger.info("job ran")
            with bound_request_id(None):
                handler_logger.info("nested job without a request")
        seen.append(current_request_id())

    thread = threading.Thread(target=worker_thread)
    thread.start()
    thread.join(5)
    assert seen == [enqueued_with, None]
    lines = log_lines.getvalue().splitlines()
    assert lines[0].endswith("job ran request_id=req-that-enqueued"), lines
    assert lines[1].endswith("nested job without a request request_id=-"), lines


def test_the_format_with_ids_is_the_apps_format_plus_the_id() -> None:
    assert f"{LOG_FORMAT} request_id=%(request_id)s" == LOG_FORMAT_WITH_ID


def test_an_id_given_in_extra_is_kept() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.request_id = "explicit"
    with bound_request_id("ambient"):
        RequestIdFilter().filter(record)
    assert record.request_id == "explicit"


# --- locks -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_only_the_owner_releases_or_extends_a_lock(shared_redis: SharedRedis) -> None:
    key = f"{shared_redis.prefix}lock:report"
    async with Redis.from_url(shared_redis.url) as redis:
        mine, theirs = (RedisLock(redis, key, ttl_seconds=10) for _ in range(2))
        assert await mine.acquire()
        assert not await theirs.acquire(), "a held lock must not be taken"
        assert not await theirs.release(), "a non-owner's release must not delete the lock"
        assert not await theirs.extend()
        assert shared_redis.client.get(key) == mine.token.encode()
        shared_redis.client.pexpire(key, 1000)
        assert await mine.extend()
        assert shared_redis.client.pttl(key) > 9000, "extend restarts the full ttl"
        assert await mine.release()
        assert not shared_redis.client.exists(key)
        assert not await mine.release(), "releasing twice says it was not held"
        assert await theirs.acquire()


@pytest.mark.anyio
async def test_an_expired_lock_is_taken_and_its_old_owner_cannot_release_it(
    shared_redis: SharedRedis,
) -> None:
    key = f"{shared_redis.prefix}lock:expiring"
    async with Redis.from_url(shared_redis.url) as redis:
        crashed = RedisLock(redis, key, ttl_seconds=0.2)
        assert await crashed.acquire()  # ...and its process is killed: no release
        successor = RedisLock(redis, key, ttl_seconds=10)
        assert not await successor.acquire()
        await asyncio.sleep(0.3)
        assert await successor.acquire(), "the ttl must free a lock whose holder died"
        assert not await crashed.release(), "a late release must not free the successor's lock"
        assert shared_redis.client.get(key) == successor.token.encode()


@pytest.mark.anyio
async def test_the_context_manager_releases_only_what_it_took(shared_redis: SharedRedis) -> None:
    key = f"{shared_redis.prefix}lock:block"
    async with Redis.from_url(shared_redis.url) as redis:
        async with RedisLock(redis, key, ttl_seconds=10) as held:
            assert held
            async with RedisLock(redis, key, ttl_seconds=10) as also_held:
                assert not also_held
            assert shared_redis.client.exists(key), "the loser's exit must not release"
        assert not shared_redis.client.exists(key)


@pytest.mark.anyio
async def test_one_gate_of_many_opens_per_interval(shared_redis: SharedRedis) -> None:
    interval = 0.5
    async with Redis.from_url(shared_redis.url) as redis:
        gates = [
            RecurringRunGate(
                redis, prefix=shared_redis.prefix, name="purge", interval_seconds=interval
            )
            for _ in range(3)
        ]
        first = await asyncio.gather(*(gate.should_run() for gate in gates))
        assert sum(first) == 1, f"three instances in one interval: one runs, got {first}"
        ttl = shared_redis.client.pttl(f"{shared_redis.prefix}lock:purge")
        assert 0 < ttl <= interval * 900, "the key must be gone before the next interval"
        assert not await gates[first.index(True)].should_run(), "not twice in one interval"
        other = RecurringRunGate(
            redis, prefix=shared_redis.prefix, name="other-job", interval_seconds=interval
        )
        assert await other.should_run(), "each job has a gate of its own"
        await asyncio.sleep(interval)
        # The first holder may be dead by now: nothing waits for it.
        second = await asyncio.gather(*(gate.should_run() for gate in reversed(gates)))
        assert sum(second) == 1, f"next interval, again exactly one: {second}"


def test_a_gate_lives_a_bit_less_than_an_interval_and_at_least_100_ms() -> None:
    assert gate_ttl_ms(3600) == 3_240_000
    assert gate_ttl_ms(1) == 900
    assert gate_ttl_ms(0.05) == 100


@pytest.mark.anyio
async def test_the_sync_gate_for_the_scheduler_thread_shares_the_async_gates_key(
    shared_redis: SharedRedis,
) -> None:
    gates = [
        SyncRecurringRunGate.from_url(
            shared_redis.url,
            prefix=shared_redis.prefix,
            name="purge",
            interval_seconds=30,
            timeout=1,
        )
        for _ in range(4)
    ]
    try:
        with ThreadPoolExecutor(len(gates)) as pool:
            answers = list(pool.map(lambda gate: gate.should_run(), gates))
        assert sum(answers) == 1, f"four scheduler threads, one run: {answers}"
        async with Redis.from_url(shared_redis.url) as redis:
            gate = RecurringRunGate(
                redis, prefix=shared_redis.prefix, name="purge", interval_seconds=30
            )
            assert not await gate.should_run()
    finally:
        for gate in gates:
            gate.close()


@pytest.mark.anyio
async def test_without_redis_every_gate_opens_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="solutions.app.locks")
    url = closed_port_url()
    gate = RecurringRunGate.from_url(
        url, prefix="unused:", name="purge", interval_seconds=1, timeout=0.2
    )
    sync_gate = SyncRecurringRunGate.from_url(
        url, prefix="unused:", name="purge", interval_seconds=1, timeout=0.2
    )
    try:
        assert [await gate.should_run() for _ in range(3)] == [True, True, True], (
            "with Redis down the cleanup must run locally rather than nowhere"
        )
        assert [sync_gate.should_run() for _ in range(3)] == [True, True, True]
        warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 2, f"one warning per gate and outage, got {warnings}"
    finally:
        await gate.aclose()
        sync_gate.close()

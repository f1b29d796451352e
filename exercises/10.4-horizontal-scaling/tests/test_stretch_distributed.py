"""Graded checks for the stretch goals of exercise 10.4 that coordinate running instances:
a lock around the recurring cleanup, a rate limit every instance shares, request ids that
follow a request into its jobs, and the gauges an autoscaler acts on (bonus points).

Each check runs the app as real processes (a cluster, or one instance where one is
enough) and reads their HTTP answers, their /metrics and their output.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from conftest import own_job_queue
from prometheus_client.parser import text_string_to_metric_families
from scalecheck import json_of, shown, where

from grader._process import AppProcess, Outcome
from grader.testing import PASSWORD, eventually, fail, unique_email

POLL_SECONDS = 0.1

# --- distributed-locking: one cleanup per interval, whichever instance runs it ------------

# The line the cleanup job prints each time it runs (README: "Per criterion").
PURGE_LINE = re.compile(r"\bpurged \d+ users?\b")
CLEANUP_INTERVAL = 1.0
LOCK_WINDOW = 5.0
# One run per interval, give or take a scheduler's drift, and one at each end of the window.
MOST_RUNS = int(LOCK_WINDOW / CLEANUP_INTERVAL) + 2
LEAST_RUNS = 2
TAKEOVER_SECONDS = 4.0


def purge_runs(app: AppProcess, after: int) -> int:
    """How many cleanup runs `app` printed from position `after` of its output on."""
    return len(PURGE_LINE.findall(app.output()[after:]))


def per_instance(counts: dict[str, int]) -> str:
    """`instance-1: 5, instance-2: 0, instance-3: 0`: for messages."""
    return ", ".join(f"{name}: {count}" for name, count in counts.items())


def tail_of(app: AppProcess) -> str:
    return app.output_tail(8) or "  (nothing)"


@pytest.mark.criterion("distributed-locking")
def test_one_instance_runs_each_cleanup_and_a_dead_holder_blocks_nobody(
    launch_cluster: Callable[..., Any], cluster_settings: dict[str, str]
) -> None:
    settings = {
        **cluster_settings,
        "JOBS_WORKER": "inprocess",
        "CLEANUP_INTERVAL_SECONDS": CLEANUP_INTERVAL,
        "USER_RETENTION_DAYS": 0,
        "CLEANUP_LOCK": "redis",
    }
    cluster = launch_cluster(n=3, instance_env=own_job_queue, **settings)
    apps: list[AppProcess] = cluster.instances
    setup = (
        "three instances, each with its own job queue, JOBS_WORKER=inprocess, "
        f"CLEANUP_INTERVAL_SECONDS={CLEANUP_INTERVAL:g}, USER_RETENTION_DAYS=0, "
        "CLEANUP_LOCK=redis"
    )
    marks = {where(app): len(app.output()) for app in apps}
    counts = dict.fromkeys(marks, 0)
    latest: AppProcess | None = None  # the instance seen printing the latest purge line
    deadline = time.monotonic() + LOCK_WINDOW
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        for app in apps:
            count = purge_runs(app, marks[where(app)])
            if count > counts[where(app)]:
                counts[where(app)], latest = count, app
    action = f"{setup}: count the `purged <n> users` lines of every instance for {LOCK_WINDOW:g} s"
    total = sum(counts.values())
    if total < LEAST_RUNS or latest is None:
        fail(
            action,
            expected=f"the cleanup running about once a second across the cluster: at least "
            f"{LEAST_RUNS} lines `purged <n> users`, one per run of purge_deleted_users",
            observed=f"{total} ({per_instance(counts)})"
            + (
                " (no cleanup ran: 10.2's recurring-cleanup comes first, its job printing "
                "one such line per run)"
                if total == 0
                else ""
            )
            + f"; {where(apps[0])} printed:\n"
            + tail_of(apps[0]),
        )
    if total > MOST_RUNS:
        fail(
            action,
            expected=f"one run per interval for the whole cluster: at most {MOST_RUNS} "
            f"(each instance asks a lock in Redis, REDIS_KEY_PREFIX={settings['REDIS_KEY_PREFIX']}"
            ", and skips the run when another holds it)",
            observed=f"{total} runs ({per_instance(counts)}): the instances run it each on "
            "their own schedule",
        )
    # The holder dies without a word: its lock must expire, not block the cleanup for good.
    holder = where(latest)
    latest.kill()  # SIGKILL, its whole process group: no shutdown, no unlock
    survivors = [app for app in apps if app is not latest]
    marks = {where(app): len(app.output()) for app in survivors}

    def runs_since() -> dict[str, int]:
        return {where(app): purge_runs(app, marks[where(app)]) for app in survivors}

    after = eventually(
        runs_since, until=lambda runs: sum(runs.values()) > 0, timeout=TAKEOVER_SECONDS
    )
    if sum(after.values()) == 0:
        fail(
            f"{setup}: kill -9 {holder}, the instance that ran the latest cleanup, then "
            f"watch the others for {TAKEOVER_SECONDS:g} s",
            expected="another instance runs the cleanup (a `purged <n> users` line): a lock "
            "must expire by itself (a TTL shorter than the interval), never outlive its holder",
            observed=f"no run ({per_instance(after)})",
        )


# --- rate-limiting: one budget per client, whichever instance it reaches ------------------

RATE_LIMIT = 6
RATE_WINDOW = 30


@pytest.mark.criterion("rate-limiting")
def test_the_rate_limit_is_shared_by_every_instance(
    launch_cluster: Callable[..., Any], cluster_settings: dict[str, str]
) -> None:
    cluster = launch_cluster(
        n=3,
        instance_env=own_job_queue,
        **cluster_settings,
        RATE_LIMIT_BACKEND="redis",
        RATE_LIMIT_REQUESTS=RATE_LIMIT,
        RATE_LIMIT_WINDOW_SECONDS=RATE_WINDOW,
    )
    apps: list[AppProcess] = cluster.instances
    setup = (
        f"three instances with RATE_LIMIT_BACKEND=redis, RATE_LIMIT_REQUESTS={RATE_LIMIT}, "
        f"RATE_LIMIT_WINDOW_SECONDS={RATE_WINDOW}"
    )
    first = [(app, app.request("GET", "/users")) for app in apps + apps]
    if any(outcome.status != 200 for _, outcome in first):
        fail(
            f"{setup}: GET /users {RATE_LIMIT} times, 2 to each instance in turn",
            expected=f"200 every time: {RATE_LIMIT} requests are within the limit (and the "
            "grader's GET /health polls must not count: leave /health unlimited)",
            observed=", ".join(f"{where(app)}: {shown(o)}" for app, o in first),
        )
    over = [(app, app.request("GET", "/users")) for app in apps]
    for app, outcome in over:
        if outcome.status != 429:
            fail(
                f"{setup}: GET /users {RATE_LIMIT} times, 2 to each instance, then once more "
                "to each",
                expected=f"429 from every instance: the client has used its {RATE_LIMIT} "
                "requests, wherever they went (count them in Redis, not in each instance)",
                observed=", ".join(f"{where(a)}: {shown(o)}" for a, o in over),
            )
        problem = too_many_requests_problem(outcome)
        if problem:
            fail(
                f"{setup}: the request over the limit, on {where(app)}",
                expected=f"429 with a Retry-After header of whole seconds (1 to {RATE_WINDOW}) "
                "and a JSON body",
                observed=problem,
            )


def too_many_requests_problem(outcome: Outcome) -> str | None:
    """What is wrong with a 429, or None."""
    retry_after = outcome.headers.get("retry-after")
    if retry_after is None:
        return f"no Retry-After header: {shown(outcome)}"
    if not retry_after.strip().isdigit() or not 1 <= int(retry_after) <= RATE_WINDOW:
        return f"Retry-After: {retry_after}"
    if json_of(outcome) is None:
        return f"a body that is not JSON: {shown(outcome)}"
    return None


# --- tracing: one id through the request, its response, its log lines and its jobs -------

REQUEST_ID_HEADER = "x-request-id"
REQUEST_LINE_SECONDS = 5.0
JOB_LINE_SECONDS = 10.0
_TRACEPARENT = re.compile(r"00-(?P<trace>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def lines_with(app: AppProcess, text: str) -> list[str]:
    return [line.strip() for line in app.output().splitlines() if text in line]


@pytest.mark.criterion("tracing")
def test_a_request_id_follows_the_request_into_its_logs_and_its_job(
    launch_app: Callable[..., AppProcess],
) -> None:
    app = launch_app(JOBS_WORKER="inprocess", CACHE_WARM_PATHS="")
    request_id = f"grade-{uuid.uuid4().hex}"
    email = unique_email("trace")
    body = {"email": email, "name": "Ada Lovelace", "password": PASSWORD}
    action = f"POST /users with X-Request-Id: {request_id}"
    created = app.request("POST", "/users", json=body, headers={"X-Request-Id": request_id})
    if created.status != 201:
        fail(action, expected="201 with the created user", observed=shown(created))
    echoed = created.headers.get(REQUEST_ID_HEADER)
    if echoed != request_id:
        fail(
            action,
            expected=f"the response carries X-Request-Id: {request_id} (the caller's id, kept)",
            observed=f"X-Request-Id: {echoed}" if echoed else "no X-Request-Id header",
        )
    welcome = f"welcome email sent to={email}"
    own = eventually(
        lambda: [line for line in lines_with(app, request_id) if welcome not in line],
        until=bool,
        timeout=REQUEST_LINE_SECONDS,
    )
    if not own:
        fail(
            action,
            expected=f"the id {request_id} in the log lines written while handling the "
            "request (an access line, the line that says the job was enqueued): a "
            "contextvar set per request, and a logging filter that puts it in every line",
            observed=f"no line with it within {REQUEST_LINE_SECONDS:g} s; the app printed:\n"
            + tail_of(app),
        )
    sent = eventually(
        lambda: lines_with(app, welcome),
        until=lambda lines: any(request_id in line for line in lines),
        timeout=JOB_LINE_SECONDS,
    )
    if not any(request_id in line for line in sent):
        fail(
            f"{action}, then wait {JOB_LINE_SECONDS:g} s for its welcome email job",
            expected=f"the line `{welcome}` carries the id of the request that enqueued the "
            f"job, {request_id}: pass the id with the job, and run the job under it",
            observed=f"the line without it: {sent[-1]}"
            if sent
            else "no welcome email line (10.2's job-processing first); the app printed:\n"
            + tail_of(app),
        )


@pytest.mark.criterion("tracing")
def test_a_traceparent_gives_the_id_and_every_request_gets_one(
    launch_app: Callable[..., AppProcess],
) -> None:
    app = launch_app(CACHE_WARM_PATHS="")
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    traced = app.request("GET", "/users", headers={"traceparent": traceparent})
    given = traced.headers.get(REQUEST_ID_HEADER)
    back = _TRACEPARENT.fullmatch(traced.headers.get("traceparent", "").strip())
    if traced.status != 200 or (given != trace_id and (back is None or back["trace"] != trace_id)):
        fail(
            f"GET /users with traceparent: {traceparent} and no X-Request-Id",
            expected=f"200 with X-Request-Id: {trace_id} (the trace id), or a traceparent "
            f"header of the same trace (00-{trace_id}-<your span id>-01)",
            observed=f"{traced.status}, X-Request-Id: {given or '(none)'}, traceparent: "
            f"{traced.headers.get('traceparent', '(none)')}",
        )
    plain = [app.request("GET", "/users") for _ in range(2)]
    ids = [outcome.headers.get(REQUEST_ID_HEADER, "") for outcome in plain]
    if not all(i.strip() for i in ids) or ids[0] == ids[1]:
        fail(
            "GET /users twice, with neither X-Request-Id nor traceparent",
            expected="an X-Request-Id on each response, a new one per request (make one "
            "when the caller sends none)",
            observed=", ".join(f"X-Request-Id: {i or '(none)'}" for i in ids)
            + (" (the same id twice)" if ids[0] and ids[0] == ids[1] else ""),
        )


# --- autoscaling-triggers: the gauges an autoscaler reads ---------------------------------

IN_FLIGHT = "http_requests_in_flight"
QUEUE_DEPTH = "jobs_queue_depth"
SLOW_MS = 1500
SLOW_REQUESTS = 4
QUEUED_JOBS = 3


def gauge(app: AppProcess, name: str) -> float | str:
    """The value of `name` in the app's /metrics (its series summed), or what came back
    instead, in words."""
    outcome = app.request("GET", "/metrics")
    if outcome.status != 200:
        return f"GET /metrics answered {shown(outcome)}"
    try:
        samples = [
            sample.value
            for family in text_string_to_metric_families(outcome.body)
            for sample in family.samples
            if sample.name == name
        ]
    except ValueError as exc:
        return f"GET /metrics is not Prometheus text ({exc})"
    return sum(samples) if samples else f"no {name} in GET /metrics"


def at_least(floor: float) -> Callable[[float | str], bool]:
    return lambda value: not isinstance(value, str) and value >= floor


def at_most(ceiling: float) -> Callable[[float | str], bool]:
    return lambda value: not isinstance(value, str) and value <= ceiling


@pytest.mark.criterion("autoscaling-triggers")
def test_the_in_flight_gauge_counts_the_requests_being_served(
    launch_app: Callable[..., AppProcess],
) -> None:
    app = launch_app(STORE_LATENCY_MS=SLOW_MS, CACHE_WARM_PATHS="")
    action = (
        f"{SLOW_REQUESTS} x GET /users (Cache-Control: no-store) in flight at once, "
        f"STORE_LATENCY_MS={SLOW_MS}, then GET /metrics"
    )
    slow = [
        app.in_background("GET", "/users", headers={"Cache-Control": "no-store"}, timeout=30)
        for _ in range(SLOW_REQUESTS)
    ]
    for request in slow:
        request.wait_sent(5)
    during = eventually(
        lambda: gauge(app, IN_FLIGHT), until=at_least(SLOW_REQUESTS), timeout=SLOW_MS / 1500
    )
    outcomes = [request.result(timeout=30) for request in slow]
    if not at_least(SLOW_REQUESTS)(during):
        fail(
            action,
            expected=f"a gauge {IN_FLIGHT} of at least {SLOW_REQUESTS}: the requests being "
            "served now (one more when a request arrives, one less when it is done)",
            observed=str(during)
            + ("" if isinstance(during, str) else f" (the requests: {outcomes[0].describe()})"),
        )
    after = eventually(lambda: gauge(app, IN_FLIGHT), until=at_most(1), timeout=2)
    if not at_most(1)(after):
        fail(
            f"{action}; once the {SLOW_REQUESTS} requests are answered, GET /metrics again",
            expected=f"{IN_FLIGHT} back to 1 at most (the scrape itself): a request is counted "
            "out when it is done, whatever its outcome",
            observed=f"{IN_FLIGHT} {after}",
        )


@pytest.mark.criterion("autoscaling-triggers")
def test_the_queue_depth_gauge_counts_the_jobs_waiting(
    launch_app: Callable[..., AppProcess],
) -> None:
    app = launch_app(JOBS_WORKER="none", CACHE_WARM_PATHS="")
    for _ in range(QUEUED_JOBS):
        body = {"email": unique_email("depth"), "name": "Ada Lovelace", "password": PASSWORD}
        created = app.request("POST", "/users", json=body)
        if created.status != 201:
            fail(f"POST /users {body}", expected="201", observed=shown(created))
    depth = eventually(lambda: gauge(app, QUEUE_DEPTH), until=at_least(QUEUED_JOBS), timeout=3)
    if not at_least(QUEUED_JOBS)(depth):
        fail(
            f"JOBS_WORKER=none (no worker takes the jobs), {QUEUED_JOBS} x POST /users (a "
            "welcome email job each), then GET /metrics",
            expected=f"a gauge {QUEUE_DEPTH} of at least {QUEUED_JOBS}: the jobs queued and "
            "not started yet",
            observed=str(depth) if isinstance(depth, str) else f"{QUEUE_DEPTH} {depth:g}",
        )
